"""The docs' test markers: a ```sh block right after `<!-- test: NAME -->` is run as written.

One definition of the convention, for the native tests (tests/docblocks.py)
and `make container-test` (scripts/container_check.py doc-block).
"""

from __future__ import annotations

import re


def marked_block(text: str, marker: str) -> str | None:
    """The ```sh block right after `<!-- test: marker -->` in `text` (markers may be
    indented), as written; None when there is none."""
    match = re.search(rf"<!-- test: {re.escape(marker)} -->\s*```sh\n(.*?)```", text, re.S)
    return match.group(1) if match else None
