#!/usr/bin/env bash
# A sigstore-capable skopeo for the signing tests, from Debian trixie's own packages.
#
# Bookworm's skopeo cannot verify cosign/sigstore signatures (Debian disables it),
# so the tests run trixie's skopeo 1.18 without installing it system-wide: its
# packages are downloaded with a private apt state and unpacked with `dpkg -x`
# into $TOOLS (default /var/cache/cargohold-test-tools/skopeo-trixie), and run
# through trixie's own dynamic loader. Idempotent: nothing happens when the
# unpacked skopeo already answers --version. tests/helpers/sigstore.py finds it.
set -euo pipefail

TOOLS=${CARGOHOLD_TEST_TOOLS:-/var/cache/cargohold-test-tools}
DEST=$TOOLS/skopeo-trixie
LIB=$DEST/usr/lib/x86_64-linux-gnu
log() { printf 'install-sigstore-skopeo: %s\n' "$*" >&2; }

if [ -x "$DEST/usr/bin/skopeo" ] && \
    "$LIB/ld-linux-x86-64.so.2" --library-path "$LIB" "$DEST/usr/bin/skopeo" --version >/dev/null 2>&1; then
    exit 0
fi

# The mirror the system's own Debian sources use.
mirror=$(grep -rhoE '^URIs:[[:space:]]*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '{print $2}' | grep -v security | head -n1 || true)
if [ -z "$mirror" ]; then
    mirror=$(grep -hoE '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?\S+' /etc/apt/sources.list 2>/dev/null \
        | awk '{print $NF}' | head -n1 || true)
fi
if [ -z "$mirror" ]; then
    log "no Debian mirror found in the system's apt sources"
    exit 1
fi

state=$TOOLS/apt-trixie
mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$DEST"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
    > "$state/sources.list"
apt_opts=(
    -o "Dir::Etc::sourcelist=$state/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$state/lists"
    -o "Dir::Cache=$state/cache"
    -o "APT::Get::List-Cleanup=0"
)
log "downloading skopeo from trixie ($mirror)"
apt-get "${apt_opts[@]}" -q update >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(
    cd "$work"
    apt-get "${apt_opts[@]}" -q download skopeo/trixie libc6/trixie libgpgme11t64/trixie \
        libassuan9/trixie libgpg-error0/trixie libsqlite3-0/trixie >/dev/null
)
for deb in "$work"/*.deb; do
    dpkg -x "$deb" "$DEST"
done
"$LIB/ld-linux-x86-64.so.2" --library-path "$LIB" "$DEST/usr/bin/skopeo" --version
log "done: $DEST/usr/bin/skopeo"
