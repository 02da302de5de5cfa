"""Per-request state shared by the middleware, the handlers and the access logger.

One typed object under one key, instead of loose string keys: the access
logger (which runs after the response, outside the middleware) reads what
the middleware and handlers recorded here.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any

import attrs
from aiohttp import web

if TYPE_CHECKING:
    from .observability import Metrics


@attrs.define
class RequestState:
    request_id: str = ""
    route: str = "other"
    repository: str | None = None
    bytes_in: int = 0
    metrics: Metrics | None = None
    log_format: str = "text"
    access: Any = None
    """What the caller may do (``registry_server.http.guard.Access``), set by dispatch."""
    mapper: Any = None
    """Client-visible <-> full names for this request's host (custom domains)."""


_KEY_TYPE = getattr(web, "RequestKey", None)
STATE_KEY: Any = _KEY_TYPE("state", RequestState) if _KEY_TYPE is not None else "cargohold.state"


_ID_PREFIX = ""
_ID_COUNTER = itertools.count(1)


def _new_id_prefix() -> None:
    """A fresh random prefix (and counter) per process: ``--workers`` processes fork from
    a parent that imported this module, and kept its prefix (ids repeated across them)."""
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX = os.urandom(6).hex()
    _ID_COUNTER = itertools.count(1)


_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id() -> str:
    """A request id unique across processes: a per-process random prefix and a counter.

    Cheaper than a UUID per request, and ids of one process sort in arrival order.
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


def state_of(request: web.BaseRequest) -> RequestState:
    """The request's state, created on first use (also for requests no middleware saw)."""
    try:
        return request[STATE_KEY]  # type: ignore[no-any-return]
    except KeyError:  # the first use (several per request: not through Mapping.get)
        state = request[STATE_KEY] = RequestState()
        return state
