"""Thin launcher: `python order.py --id N` runs one order replica (same as `bazaar order`)."""

import sys

from bazaar.cli import main

if __name__ == "__main__":
    main(["order", *sys.argv[1:]])
