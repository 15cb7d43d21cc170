"""Small disks for disk-failure tests: a data dir on a tmpfs of its own, filled or made read-only.

Root only (mount); where mounting is not permitted the test is skipped with
the reason. Every mount is removed (lazily) when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disks(*paths: Path, size: str = "8m") -> Iterator[tuple[Path, ...]]:
    """Each of `paths` (made if missing) on its own tmpfs of `size`; skips the test if it cannot."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs as a data dir")
    mounted: list[Path] = []
    try:
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)
            cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                pytest.skip("mount is not permitted here")
            mounted.append(path)
        yield paths
    finally:
        for path in mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> None:
    """Fill the file system holding `path` up to the last byte (in `path`/filler)."""
    with open(path / "filler", "wb", buffering=0) as fh:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * chunk)


def remount(path: Path, mode: str) -> None:
    """Remount the tmpfs at `path` `ro` or `rw`; skips the test if that is not permitted."""
    if subprocess.run(["mount", "-o", f"remount,{mode}", str(path)]).returncode != 0:
        pytest.skip(f"remounting {mode} is not permitted here")
