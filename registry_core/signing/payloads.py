"""The signed payloads of both formats and reading them back; pure functions, no storage.

Both carry the full reference a client pulls (``HOST/NAME:TAG``) as their
identity, because the default policy (``matchRepoDigestOrExact``) refuses a
repository-only identity for a pull by tag. The bytes made here are exactly
the bytes signed: never re-serialise a payload before verifying it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import attrs

COSIGN_TYPE = "cosign container image signature"
SIMPLE_TYPE = "atomic container signature"
CREATOR = "cargohold"


def _payload(kind: str, reference: str, digest: str, optional: dict[str, Any]) -> bytes:
    body = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": kind,
        },
        "optional": optional,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def cosign_payload(reference: str, digest: str) -> bytes:
    return _payload(COSIGN_TYPE, reference, digest, {"creator": CREATOR})


def simple_payload(reference: str, digest: str, now: float | None = None) -> bytes:
    timestamp = int(time.time() if now is None else now)
    return _payload(SIMPLE_TYPE, reference, digest, {"creator": CREATOR, "timestamp": timestamp})


@attrs.frozen
class Claim:
    """What a payload says: its type, the signed manifest digest and the identity."""

    type: str
    digest: str
    reference: str


def read_claim(payload: bytes) -> Claim | None:
    """The claim of a payload in either format, or None when it is not one."""
    try:
        critical = json.loads(payload)["critical"]
        return Claim(
            type=str(critical["type"]),
            digest=str(critical["image"]["docker-manifest-digest"]),
            reference=str(critical["identity"]["docker-reference"]),
        )
    except (ValueError, KeyError, TypeError):
        return None
