"""What every admin command shares: its configuration from ``--config`` and ``--storage``.

Admin commands work on storage directly (no server); each takes the same two options,
read here once so that they mean the same thing in every command group.
"""

from __future__ import annotations

import argparse
from typing import Any

from registry_core import load_config
from registry_core.config import Config


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration file (if any), with ``--storage`` replacing its storage URL.

    Raises ConfigError (or ValueError) with a message naming the bad key.
    """
    overrides: dict[str, dict[str, Any]] = {}
    if args.storage:
        overrides["storage"] = {"url": args.storage}
    return load_config(args.config, overrides=overrides)
