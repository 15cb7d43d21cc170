"""Launcher for the catalog service: `python catalog.py` is `bazaar catalog`."""

import sys

from bazaar.cli import main

if __name__ == "__main__":
    sys.argv.insert(1, "catalog")
    main()
