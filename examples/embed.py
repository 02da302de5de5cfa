"""Embed the registry library: push and read a blob and a manifest, no HTTP.

Run: python examples/embed.py [STORAGE_URL]   (default: memory://)
"""

from __future__ import annotations

import asyncio
import json
import sys

from drivers import open_driver
from registry_core import Digest, Registry


async def main(url: str) -> None:
    registry = Registry(open_driver(url))
    repo = registry.repository("acme/prod/app")

    layer = b"hello, layer"
    async with repo.blobs.upload() as upload:  # streamed and hashed as it goes
        await upload.write(layer)
        layer_info = await upload.commit(Digest.of(layer))  # verified, then visible

    config = b"{}"
    async with repo.blobs.upload() as upload:
        await upload.write(config)
        config_info = await upload.commit(Digest.of(config))

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": str(config_info.digest),
                "size": config_info.size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": str(layer_info.digest),
                    "size": layer_info.size,
                }
            ],
        }
    ).encode()
    await repo.manifests.put(manifest, "application/vnd.oci.image.manifest.v1+json", tag="1.0")

    stored = await repo.manifests.get("1.0")  # by tag or digest
    print("manifest", stored.digest, stored.media_type)
    print("tags", [tag async for tag in repo.tags.list()])
    print("layer", b"".join([chunk async for chunk in repo.blobs.read(layer_info.digest)]))
    print("catalog", await registry.catalog())
    await registry.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))
