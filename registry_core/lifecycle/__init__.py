"""Lifecycle of stored content: garbage collection, retention rules, immutable tags, quotas, scrub.

One module per capability (``gc``, ``scrub``, ``retention``, ``immutable``,
``quotas``, ``usage``); each works on storage through the library's own
stores and ``registry_core.jobs`` leases, and none of them imports aiohttp
or a driver module.
"""
