#!/usr/bin/env bash
# Install the Debian packages the test suite drives (Debian 12 "bookworm").
#
# Idempotent and fast: every tool is checked first (command -v / dpkg -s) and
# apt-get runs (with a single `apt-get update`) only when something is missing.
# Services the packages would start on install (the docker-registry package
# listens on :5000, the server's default port; nginx on :80; containerd) are
# kept from starting, and a running docker-registry service is stopped.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

log() { printf 'install-test-deps: %s\n' "$*" >&2; }

have_cmd() { command -v "$1" >/dev/null 2>&1; }

have_pkg() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing=()

# need PACKAGE CHECK...  -- CHECK is "cmd:NAME", "exe:PATH", "file:PATH" or "pkg:NAME"
need() {
    local pkg=$1 check ok=1
    shift
    for check in "$@"; do
        case $check in
            cmd:*) have_cmd "${check#cmd:}" || ok=0 ;;
            exe:*) [ -x "${check#exe:}" ] || ok=0 ;;
            file:*) [ -e "${check#file:}" ] || ok=0 ;;
            pkg:*) have_pkg "${check#pkg:}" || ok=0 ;;
            *) log "bad check: $check"; exit 2 ;;
        esac
    done
    if [ "$ok" = 0 ]; then
        missing+=("$pkg")
    fi
}

need skopeo cmd:skopeo
need podman cmd:podman
need containerd cmd:containerd cmd:ctr
need docker-registry exe:/usr/bin/docker-registry
need nginx-light cmd:nginx
need wrk cmd:wrk
need umoci cmd:umoci
need uidmap cmd:newuidmap cmd:newgidmap
# What rootful podman with vfs storage needs besides podman itself (most are
# Depends/Recommends of podman, listed so --no-install-recommends setups work).
need crun cmd:crun
need conmon cmd:conmon
need catatonit pkg:catatonit
need netavark pkg:netavark
need aardvark-dns pkg:aardvark-dns
need slirp4netns cmd:slirp4netns
need golang-github-containers-common file:/usr/share/containers/containers.conf
need iptables cmd:iptables
need ca-certificates exe:/usr/sbin/update-ca-certificates
# The website's browser tests (tests/test_web_browser.py): headless Chromium and its driver.
need chromium exe:/usr/bin/chromium
need chromium-driver exe:/usr/bin/chromedriver
# Simple signing (OpenPGP) is made and checked by GnuPG.
need gnupg cmd:gpg
# Azurite (the Azure Blob emulator of the cloud driver tests) is an npm package.
if ! have_cmd azurite-blob && ! have_cmd npm; then
    missing+=(npm)
fi
# `make venv` on a fresh machine: python3 -m venv needs ensurepip.
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

SUDO=()
if [ "$(id -u)" != 0 ] && [ "${#missing[@]}" -gt 0 ]; then
    if have_cmd sudo; then
        SUDO=(sudo --preserve-env=DEBIAN_FRONTEND)
    else
        log "missing packages (${missing[*]}) and not root; rerun as root"
        exit 1
    fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    # Keep maintainer scripts from starting services (docker-registry would
    # listen on :5000). Only when no policy is in place already.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# installed by cargohold scripts/install-test-deps.sh\nexit 101\n' \
            | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 0755 "$policy"
        created_policy=1
    fi
    cleanup_policy() {
        if [ "$created_policy" = 1 ]; then
            "${SUDO[@]}" rm -f "$policy"
        fi
    }
    trap cleanup_policy EXIT

    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
    cleanup_policy
    created_policy=0
    trap - EXIT
fi

if ! have_cmd azurite-blob; then
    log "installing azurite (npm)"
    "${SUDO[@]}" npm install --global --no-fund --no-audit --loglevel=error azurite@3
    azurite-blob --version >/dev/null
fi

# Never leave the packaged docker-registry service running: it would hold
# port 5000. Tests start their own instances from /usr/bin/docker-registry.
stop_packaged_registry() {
    local running=0
    if [ -d /run/systemd/system ] && have_cmd systemctl; then
        if systemctl is-enabled --quiet docker-registry 2>/dev/null; then
            "${SUDO[@]}" systemctl disable docker-registry >/dev/null 2>&1 || true
        fi
        if systemctl is-active --quiet docker-registry 2>/dev/null; then
            log "stopping docker-registry.service (it listens on :5000)"
            "${SUDO[@]}" systemctl stop docker-registry || true
        fi
    elif have_cmd service && [ -x /etc/init.d/docker-registry ]; then
        if service docker-registry status >/dev/null 2>&1; then
            running=1
            log "stopping the docker-registry service (it listens on :5000)"
            "${SUDO[@]}" service docker-registry stop || true
        fi
    fi
    # Whatever the init system said: a packaged instance (started with the
    # package's config) must not survive.
    local pidfile=/var/run/docker-registry.pid pid
    if [ -r "$pidfile" ]; then
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = docker-registry ]; then
            log "killing docker-registry (pid $pid from $pidfile)"
            "${SUDO[@]}" kill "$pid" 2>/dev/null || true
            running=1
        fi
        "${SUDO[@]}" rm -f "$pidfile" 2>/dev/null || true
    fi
    if have_cmd ss; then
        # A docker-registry still listening on :5000 (e.g. started by the
        # package's maintainer script without a pidfile).
        local p
        for p in $(ss -Hltnp 'sport = :5000' 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
            if [ "$(cat "/proc/$p/comm" 2>/dev/null || true)" = docker-registry ]; then
                log "killing docker-registry (pid $p) listening on :5000"
                "${SUDO[@]}" kill "$p" 2>/dev/null || true
                running=1
            fi
        done
    fi
    if [ "$running" = 1 ]; then
        sleep 0.5
    fi
}
stop_packaged_registry

# The signing tests' sigstore-capable skopeo (trixie's, unpacked into a cache folder).
"$(dirname "$0")/install-sigstore-skopeo.sh"

if [ "${#missing[@]}" -gt 0 ]; then
    # Sanity checks after a fresh install.
    podman --version >/dev/null
    skopeo --version >/dev/null
    ctr --version >/dev/null
    log "done"
fi
