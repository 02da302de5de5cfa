"""Upstream registries: settings, the token flow, network policy, the pull-through cache.

The public surface is re-exported here; the HTTP client comes in through
:class:`UpstreamClient` (the library never speaks HTTP itself).
"""

from .client import FAILURE_KINDS, UpstreamClient, UpstreamFailure, UpstreamResponse
from .network import NetworkPolicy, parse_networks
from .pullthrough import NullObserver, ProxiedBlob, ProxyObserver, PullThrough, TagOrigin
from .remote import UpstreamTimedOut, UpstreamUnavailable
from .settings import Upstream, UpstreamSpec, UpstreamStore, UpstreamView, view
from .tokens import Credentials, TokenFlow, parse_challenge

__all__ = [
    "FAILURE_KINDS",
    "Credentials",
    "NetworkPolicy",
    "NullObserver",
    "ProxiedBlob",
    "ProxyObserver",
    "PullThrough",
    "TagOrigin",
    "TokenFlow",
    "Upstream",
    "UpstreamClient",
    "UpstreamFailure",
    "UpstreamResponse",
    "UpstreamSpec",
    "UpstreamStore",
    "UpstreamTimedOut",
    "UpstreamUnavailable",
    "UpstreamView",
    "parse_challenge",
    "parse_networks",
    "view",
]
