"""An order record: its fields, its wire form and its checks (no I/O).

Owns `Record` (number, name, type, quantity, key, trade_seq, epoch), the
strict parse of a record received from a peer (`from_wire`), its public form
(`public`) and a bound on its size on the wire (`wire_size`, for paging).
"""

from __future__ import annotations

from dataclasses import dataclass

FIELDS = ("number", "name", "type", "quantity", "key", "trade_seq", "epoch")


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
        # Spelled out: dataclasses.asdict copies recursively, ~5x slower, and
        # runs for every record streamed to every follower.
        return {
            "number": self.number,
            "name": self.name,
            "type": self.type,
            "quantity": self.quantity,
            "key": self.key,
            "trade_seq": self.trade_seq,
            "epoch": self.epoch,
        }

    @classmethod
    def from_wire(cls, data: dict) -> Record:
        """Strictly typed from a msgpack map; raises ValueError on anything odd."""
        if not isinstance(data, dict) or set(data) != set(FIELDS):
            raise ValueError(f"record must have exactly the keys {FIELDS}")
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

    def wire_size(self) -> int:
        """A bound on its msgpack size (for paging replies under the message limit)."""
        return 64 + len(self.name.encode()) + len(self.key.encode()) + len(self.type)
