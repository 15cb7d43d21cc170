"""The one-time upgrade of a replica's data dir from the release before SQLite.

That release (commit 40bb7ee and earlier) kept `orders-<id>.csv` (a header,
then `number,name,type,quantity,key,trade_seq,epoch` per record, appended
with one write per batch) and `state-<id>.json` (`{"epoch", "leader"}`).
On the first start of this release `import_once` copies both into the empty
`orders-<id>.db` in one transaction, then renames the old files aside
(`*.imported`; never deleted). A crash in between is harmless: the next
start finds the database filled and only renames.

A crash of the old release mid-write could leave an unterminated last line;
it was never acknowledged (the old release cut it on load), so it is skipped
here too. Any other bad line is corruption: a clear error naming file and line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bazaar.order.log import FIELDS, LogCorrupt, Record, disk_error
from bazaar.rules import ORDER_TYPES

if TYPE_CHECKING:
    from bazaar.order.log import OrderLog

log = logging.getLogger(__name__)

HEADER_LINE = ",".join(FIELDS) + "\n"
ASIDE = ".imported"


def old_files(data_dir: Path, replica_id: int) -> tuple[Path, Path]:
    return Path(data_dir) / f"orders-{replica_id}.csv", Path(data_dir) / f"state-{replica_id}.json"


def import_once(order_log: OrderLog) -> bool:
    """Import the old files into an empty log and rename them aside; True if it imported."""
    csv_path, state_path = old_files(order_log.data_dir, order_log.replica_id)
    present = [p for p in (csv_path, state_path) if p.exists()]
    if not present:
        return False
    imported = False
    if order_log.last_number == -1 and order_log.load_state() == (0, None):
        records = parse_csv(csv_path) if csv_path.exists() else []
        state = parse_state(state_path) if state_path.exists() else None
        order_log.import_rows(records, state)
        log.warning(
            "%s: imported %d records and state %s from %s",
            order_log.path,
            len(records),
            state,
            ", ".join(p.name for p in present),
        )
        imported = True
    for path in present:
        try:
            os.replace(path, path.with_name(path.name + ASIDE))
        except OSError as exc:
            raise disk_error(f"rename {path} aside", exc) from None
    _fsync_dir(Path(order_log.data_dir))
    return imported


def parse_csv(path: Path) -> list[Record]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise disk_error(f"read {path}", exc) from None
    except UnicodeDecodeError as exc:
        raise LogCorrupt(f"{path}: not UTF-8: {exc}") from None
    if not text.startswith(HEADER_LINE):
        if HEADER_LINE.startswith(text):  # empty, or a torn header
            return []
        raise LogCorrupt(f"{path}:1: header is not {HEADER_LINE.strip()}")
    body = text[len(HEADER_LINE) :]
    complete = body[: body.rfind("\n") + 1]  # an unterminated tail was never acknowledged
    if len(complete) != len(body):
        log.warning("%s: skipping a torn last line of %d bytes", path, len(body) - len(complete))
    records: list[Record] = []
    for line_no, row in enumerate(csv.reader(io.StringIO(complete)), start=2):
        try:
            records.append(_record(row, len(records)))
        except ValueError as exc:
            raise LogCorrupt(f"{path}:{line_no}: {exc}") from None
    return records


def _record(row: list[str], expected: int) -> Record:
    if len(row) != len(FIELDS):
        raise ValueError(f"expected {len(FIELDS)} columns")
    number, name, kind, quantity, key, seq, epoch = row
    record = Record(
        int(number), name, kind, int(quantity), key, int(seq) if seq else None, int(epoch)
    )
    if record.number != expected:
        raise ValueError(f"number {record.number} where {expected} was expected")
    if record.type not in ORDER_TYPES or record.quantity <= 0 or not record.key:
        raise ValueError("bad type, quantity or key")
    return record


def parse_state(path: Path) -> tuple[int, int | None]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise disk_error(f"read {path}", exc) from None
    except ValueError as exc:
        raise LogCorrupt(f"{path}: not JSON: {exc}") from None
    epoch = data.get("epoch") if isinstance(data, dict) else None
    leader = data.get("leader") if isinstance(data, dict) else None
    if type(epoch) is not int or not (leader is None or type(leader) is int):
        raise LogCorrupt(f"{path}: bad epoch/leader {data!r}")
    return epoch, leader


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise disk_error(f"sync {path}", exc) from None
