"""Thin launcher: `python frontend.py [--port N]` runs the HTTP front end (same as `bazaar frontend`)."""

import sys

from bazaar.cli import main

if __name__ == "__main__":
    main(["frontend", *sys.argv[1:]])
