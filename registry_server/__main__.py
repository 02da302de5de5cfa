"""Run the command line: ``python -m registry_server``."""

import sys

from .cli import main

sys.exit(main())
