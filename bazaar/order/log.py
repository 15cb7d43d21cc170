"""The order log `orders-<id>.csv` and the replica's small state file.

Owns the bytes on disk of one order replica: the CSV log (one record per line,
numbers 0..N-1, gapless), its in-memory index (records by number, numbers by
key) and `state-<id>.json` (the highest accepted epoch and its leader).

Rules:
- A record is visible through this module only once it is durable: a batch is
  written with one `write` and made durable with one `fsync` (group commit is
  the caller's batching); a failed write is cut back off the file, so memory
  and disk never disagree.
- A torn tail (crash mid-write: a last line without its newline, or trailing
  lines that do not parse) is truncated on load; a bad line *followed* by good
  ones is corruption and a clear error naming the file and line.
- The state file is replaced atomically (tmp, fsync, os.replace, fsync dir).
- This module never decides what to write: that is `replication`'s job.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from bazaar.errors import BazaarError

log = logging.getLogger(__name__)

HEADER = ("number", "name", "type", "quantity", "key", "trade_seq", "epoch")
HEADER_LINE = (",".join(HEADER) + "\n").encode()
ORDER_TYPES = ("buy", "sell")


@dataclass(frozen=True, slots=True)
class Record:
    number: int
    name: str
    type: str
    quantity: int
    key: str
    trade_seq: int | None
    epoch: int

    def to_wire(self) -> dict:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict) -> Record:
        """Strictly typed from a msgpack map; raises ValueError on anything odd."""
        if not isinstance(data, dict) or set(data) != set(HEADER):
            raise ValueError(f"record must have exactly the keys {HEADER}")
        ints = ("number", "quantity", "epoch")
        if any(type(data[k]) is not int for k in ints):
            raise ValueError("number, quantity and epoch must be integers")
        if data["trade_seq"] is not None and type(data["trade_seq"]) is not int:
            raise ValueError("trade_seq must be an integer or null")
        if not all(isinstance(data[k], str) for k in ("name", "type", "key")):
            raise ValueError("name, type and key must be strings")
        return cls(**data)

    def public(self) -> dict:
        return {
            "number": self.number,
            "name": self.name,
            "type": self.type,
            "quantity": self.quantity,
        }


class LogCorrupt(BazaarError):
    def __init__(self, message: str):
        super().__init__("DATA_LOSS", message)


def encode_records(records: list[Record]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for r in records:
        seq = "" if r.trade_seq is None else r.trade_seq
        writer.writerow((r.number, r.name, r.type, r.quantity, r.key, seq, r.epoch))
    return buf.getvalue().encode()


def parse_line(line: bytes, expected_number: int) -> Record:
    """One CSV line (without its newline) -> Record; ValueError when it is not one."""
    rows = list(csv.reader([line.decode("utf-8")]))
    if len(rows) != 1 or len(rows[0]) != len(HEADER):
        raise ValueError(f"expected {len(HEADER)} columns")
    number, name, kind, quantity, key, seq, epoch = rows[0]
    record = Record(
        int(number), name, kind, int(quantity), key, int(seq) if seq else None, int(epoch)
    )
    if record.number != expected_number:
        raise ValueError(f"number {record.number} where {expected_number} was expected")
    if record.type not in ORDER_TYPES or record.quantity <= 0 or not record.key:
        raise ValueError("bad type, quantity or key")
    return record


def disk_error(action: str, exc: OSError) -> BazaarError:
    return BazaarError("UNAVAILABLE", f"order log: cannot {action}: {exc.strerror or exc}")


class OrderLog:
    """The durable records of one replica, in memory and in `orders-<id>.csv`."""

    def __init__(self, data_dir: Path, replica_id: int):
        self.path = Path(data_dir) / f"orders-{replica_id}.csv"
        self.records: list[Record] = []
        self.by_key: dict[str, int] = {}
        self._fd: int | None = None
        self._size = 0
        self.repaired = False  # a torn tail was cut off at load

    # ---- loading --------------------------------------------------------
    def load(self) -> OrderLog:
        """Read the file (creating it if missing), cut a torn tail, build the index."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = self.path.read_bytes() if self.path.exists() else b""
        except OSError as exc:
            raise disk_error(f"read {self.path}", exc) from None
        records, good_size = self._parse(data)
        if good_size != len(data):
            self.repaired = True
            log.warning("%s: cutting a torn tail of %d bytes", self.path, len(data) - good_size)
        self.records = records
        self.by_key = {r.key: r.number for r in records}
        try:
            self._open(good_size)
        except OSError as exc:
            raise disk_error(f"open {self.path} for writing", exc) from None
        return self

    def _parse(self, data: bytes) -> tuple[list[Record], int]:
        if not data.startswith(HEADER_LINE):
            if HEADER_LINE.startswith(data):  # empty file or torn header
                return [], 0
            raise LogCorrupt(f"{self.path}:1: header is not {','.join(HEADER)}")
        records: list[Record] = []
        offset = len(HEADER_LINE)
        lines = data[offset:].split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline
        for index, line in enumerate(complete):
            try:
                records.append(parse_line(line, len(records)))
            except (ValueError, UnicodeDecodeError) as exc:
                if all(not _parses(rest) for rest in complete[index + 1 :]):
                    return records, offset  # torn tail: everything from here is garbage
                raise LogCorrupt(f"{self.path}:{index + 2}: {exc}") from None
            offset += len(line) + 1
        del tail  # an unterminated last line is never a whole record
        return records, offset

    def _open(self, good_size: int) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if good_size == 0:
                os.ftruncate(fd, 0)
                os.write(fd, HEADER_LINE)
                good_size = len(HEADER_LINE)
            elif os.fstat(fd).st_size != good_size:
                os.ftruncate(fd, good_size)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._size = fd, good_size

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ---- reading --------------------------------------------------------
    @property
    def last_number(self) -> int:
        return len(self.records) - 1

    def get(self, number: int) -> Record | None:
        return self.records[number] if 0 <= number < len(self.records) else None

    def number_of(self, key: str) -> int | None:
        return self.by_key.get(key)

    def records_after(self, number: int, limit: int | None = None) -> list[Record]:
        start = max(number + 1, 0)
        end = len(self.records) if limit is None else start + limit
        return self.records[start:end]

    # ---- writing --------------------------------------------------------
    def append_durable(self, records: list[Record]) -> None:
        """Write a batch of consecutive records, then one fsync. All or nothing."""
        if not records:
            return
        if records[0].number != len(self.records):
            raise BazaarError("INTERNAL", f"append of {records[0].number} after {self.last_number}")
        data = encode_records(records)
        self._write_at_end(data)
        self.records.extend(records)
        for r in records:
            self.by_key[r.key] = r.number

    def _write_at_end(self, data: bytes) -> None:
        if self._fd is None:
            raise BazaarError("UNAVAILABLE", "order log is closed")
        try:
            written = os.pwrite(self._fd, data, self._size)
            while written < len(data):
                written += os.pwrite(self._fd, data[written:], self._size + written)
            os.fdatasync(self._fd)  # data and the new size; no other metadata needed
        except OSError as exc:
            self._cut_back()
            raise disk_error("append", exc) from None
        self._size += len(data)

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            log.exception("%s: could not cut back a failed write", self.path)

    def truncate_from(self, number: int) -> None:
        """Drop records >= number (a divergent, never acknowledged tail)."""
        if number >= len(self.records):
            return
        keep = self.records[:number]
        size = len(HEADER_LINE) + len(encode_records(keep))
        try:
            os.ftruncate(self._fd, size)
            os.fsync(self._fd)
        except OSError as exc:
            raise disk_error("truncate", exc) from None
        for r in self.records[number:]:
            self.by_key.pop(r.key, None)
        self.records = keep
        self._size = size


def _parses(line: bytes) -> bool:
    try:
        rows = list(csv.reader([line.decode("utf-8")]))
        return len(rows) == 1 and len(rows[0]) == len(HEADER) and rows[0][0].isdigit()
    except (ValueError, UnicodeDecodeError):
        return False


# ---- the state file -------------------------------------------------------
class ReplicaState:
    """`state-<id>.json`: {"epoch": int, "leader": int|null}, replaced atomically."""

    def __init__(self, data_dir: Path, replica_id: int):
        self.path = Path(data_dir) / f"state-{replica_id}.json"

    def load(self) -> tuple[int, int | None]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0, None
        except OSError as exc:
            raise disk_error(f"read {self.path}", exc) from None
        except ValueError as exc:
            raise LogCorrupt(f"{self.path}: not JSON: {exc}") from None
        epoch, leader = data.get("epoch"), data.get("leader")
        if type(epoch) is not int or not (leader is None or type(leader) is int):
            raise LogCorrupt(f"{self.path}: bad epoch/leader {data!r}")
        return epoch, leader

    def save(self, epoch: int, leader: int | None) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        payload = json.dumps({"epoch": epoch, "leader": leader}).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise disk_error("save the epoch", exc) from None
