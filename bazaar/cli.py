"""The `bazaar` command's entry point: service roles start here without loading click.

`bazaar catalog [--data-dir D]`, `bazaar order [--id N] [--data-dir D]` and
`bazaar frontend [--port N]` are what every service process runs (`make
run`, the image's ENTRYPOINT, the tests' clusters, `python -m bazaar.cli`,
the launchers catalog.py / order.py / frontend.py). `parse_role` reads
those flags with a few lines of its own and `main` hands them straight to
`bazaar.role.start`: the click app (`bazaar.commands`) would cost each
service ~2.2 MB of RSS for a parser it uses once, and argparse (with the
gettext, locale and shutil it imports) 1.2-1.4 MB: 5.5 MB over the four
back-end services (`bench/footprint.py`, A/B, docs/performance.md "Footprint").

The click app stays the one definition of the command line. `parse_role`
takes only the plain forms it can read exactly as click would (`--flag
VALUE`, `--flag=VALUE`, a value click would accept); anything else (other
commands, --help, --version, a flag it does not know, a value click would
refuse) goes to `bazaar.commands.main` unchanged, so help texts, error
messages and exit codes are click's in every case.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable


def _replica_id(text: str) -> int | None:  # click.IntRange(min=1)
    number = int(text)
    return number if number >= 1 else None


def _port(text: str) -> int | None:  # click.IntRange(1, 65535)
    number = int(text)
    return number if 1 <= number <= 65535 else None


def _directory(text: str) -> str | None:
    """click.Path(file_okay=False): a path that is not there, or a readable non-file."""
    try:
        mode = os.stat(text).st_mode
    except OSError:
        return text
    return None if stat.S_ISREG(mode) or not os.access(text, os.R_OK) else text


# Per role: flag -> (keyword of bazaar.role.start, parse). As declared in bazaar.commands;
# tests/unit/test_cli_lean.py holds the two to the same flags.
FLAGS: dict[str, dict[str, tuple[str, Callable[[str], object]]]] = {
    "catalog": {"--data-dir": ("data_dir", _directory)},
    "order": {"--id": ("order_id", _replica_id), "--data-dir": ("data_dir", _directory)},
    "frontend": {"--port": ("http_port", _port)},
}


def parse_role(argv: list[str]) -> tuple[str, dict[str, object]] | None:
    """(role, overrides) for a role command in a plain form; None: let click read it."""
    if not argv or argv[0] not in FLAGS:
        return None
    flags = FLAGS[argv[0]]
    overrides: dict[str, object] = {}
    rest = iter(argv[1:])
    for token in rest:
        flag, sep, value = token.partition("=")
        if flag not in flags:
            return None
        if not sep:
            value = next(rest, None)
            if value is None:
                return None
        if value.startswith("-"):  # click may read it as a flag or a value: its call
            return None
        keyword, parse = flags[flag]
        try:
            parsed = parse(value)
        except ValueError:
            return None
        if parsed is None:
            return None
        overrides[keyword] = parsed  # a repeated flag: the last one wins, as in click
    return argv[0], overrides


def main(argv: list[str] | None = None) -> None:
    """`bazaar ARGS...`: a role in a plain form runs here; everything else is click's."""
    args = sys.argv[1:] if argv is None else list(argv)
    parsed = parse_role(args)
    if parsed is None:
        from bazaar.commands import main as click_main

        click_main(args)
        return
    role, overrides = parsed
    from bazaar import role as rolemod

    try:
        rolemod.start(role, **overrides)
    except rolemod.RoleError as exc:
        print(f"Error: {exc}", file=sys.stderr)  # the line click prints for a ClickException
        sys.exit(1)
    except KeyboardInterrupt:  # before the role's own SIGINT handler: as click says it
        print("\nAborted!", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
