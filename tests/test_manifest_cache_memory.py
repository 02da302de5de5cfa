"""The manifest cache's byte cap bounds the memory it really takes (issue 14).

Each entry is counted as its body plus ``ENTRY_OVERHEAD``; if that constant is below what
an entry really costs, a cache full of small manifests (the common case) holds more than
its cap. tracemalloc measures what the entries take, as the server builds them: a digest
parsed from text, a body read as bytes, a media type string.
"""

from __future__ import annotations

import hashlib
import json
import random
import tracemalloc

from registry_core.digest import Digest
from registry_core.storage.cache import ContentCache

CAP = 1024 * 1024


def manifest(rng: random.Random, layers: int) -> bytes:
    def descriptor(media_type: str) -> dict[str, object]:
        digest = "sha256:" + rng.randbytes(32).hex()
        return {"mediaType": media_type, "digest": digest, "size": rng.randint(1, 1 << 30)}

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json"),
            "layers": [
                descriptor("application/vnd.oci.image.layer.v1.tar+gzip") for _ in range(layers)
            ],
        }
    ).encode()


def test_a_full_cache_of_small_manifests_takes_no_more_than_its_cap() -> None:
    rng = random.Random(14)
    cache = ContentCache(max_bytes=CAP)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(4 * CAP // 500):  # several times what the cap holds
            body = manifest(rng, rng.randint(0, 3))  # 230 to 800 bytes, as most manifests
            digest = Digest.parse("sha256:" + hashlib.sha256(body).hexdigest())
            media_type = b"application/vnd.oci.image.manifest.v1+json".decode()
            cache.put(digest, body, media_type)
            del body, digest, media_type
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    entries = len(cache._items)
    assert entries > 800  # full of small entries: their overhead is what is measured
    assert held <= CAP, (held, entries, held / entries)
