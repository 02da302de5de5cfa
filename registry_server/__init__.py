"""The reference aiohttp server that embeds registry_core."""

from .app import build_app

__all__ = ["build_app"]
