"""The seed's market CSV (`name,price,quantity,volume,max_volume`): parse and format. Text only.

`bazaar export market` writes it, the legacy import and a hand-written
`catalog.csv` in a new data dir are read with it. An empty `max_volume`
means no limit. A file that cannot be used is a `MarketFileError` naming
the file and the line; nothing here opens a file.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Any

from bazaar.catalog.market import Stock
from bazaar.errors import BazaarError
from bazaar.rules import MAX_NAME_LEN, is_stock_name

MARKET_COLUMNS = ("name", "price", "quantity", "volume", "max_volume")

_COUNT = re.compile(r"[0-9]+")


class MarketFileError(BazaarError):
    """A catalog file that cannot be used as it is; the message names the file and line."""

    def __init__(self, path: Path | str, problem: str, line: int | None = None):
        where = f"{path}" if line is None else f"{path}, line {line}"
        details: dict[str, Any] = {"file": str(path)}
        if line is not None:
            details["line"] = line
        super().__init__("DATA_LOSS", f"{where}: {problem}", details)
        self.path = Path(path)
        self.line = line


def parse_count(value: str, column: str, path: Path, line: int) -> int:
    if not _COUNT.fullmatch(value):
        raise MarketFileError(path, f"{column} {value!r} is not a whole number >= 0", line)
    return int(value)


def _parse_stock_row(row: list[str], path: Path, line: int) -> Stock:
    if len(row) != len(MARKET_COLUMNS):
        raise MarketFileError(
            path,
            f"expected {len(MARKET_COLUMNS)} fields ({','.join(MARKET_COLUMNS)}), got {len(row)}",
            line,
        )
    name, price_text, quantity, volume, max_volume = (field.strip() for field in row)
    if not is_stock_name(name):
        raise MarketFileError(
            path, f"name {name!r} must be 1 to {MAX_NAME_LEN} printable characters", line
        )
    try:
        price = float(price_text)
    except ValueError:
        raise MarketFileError(path, f"price {price_text!r} is not a number", line) from None
    if not math.isfinite(price) or price < 0:
        raise MarketFileError(path, f"price {price_text!r} must be a finite number >= 0", line)
    return Stock(
        name=name,
        price=price,
        quantity=parse_count(quantity, "quantity", path, line),
        volume=parse_count(volume, "volume", path, line),
        max_volume=None if max_volume == "" else parse_count(max_volume, "max_volume", path, line),
    )


def parse_market(text: str, path: Path | str = "catalog.csv") -> dict[str, Stock]:
    """Parse market CSV text; raise MarketFileError naming `path` and the line."""
    path = Path(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    market: dict[str, Stock] = {}
    header_seen = False
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise MarketFileError(path, f"malformed CSV: {exc}", reader.line_num) from None
        line = reader.line_num
        if not header_seen:
            if [column.strip() for column in row] != list(MARKET_COLUMNS):
                raise MarketFileError(
                    path, f"header is {','.join(row)!r}, expected {','.join(MARKET_COLUMNS)!r}", 1
                )
            header_seen = True
            continue
        if not any(field.strip() for field in row):
            continue  # blank lines are harmless (hand-edited files often end with some)
        stock = _parse_stock_row(row, path, line)
        if stock.name in market:
            raise MarketFileError(path, f"stock {stock.name!r} appears twice", line)
        market[stock.name] = stock
    if not header_seen:
        raise MarketFileError(
            path, f"file is empty; expected the header {','.join(MARKET_COLUMNS)}", 1
        )
    if not market:
        raise MarketFileError(path, "lists no stocks", reader.line_num or 1)
    return market


def decode_market(data: bytes, path: Path | str = "catalog.csv") -> dict[str, Stock]:
    """Parse the bytes of a market file (UTF-8, a spreadsheet's BOM tolerated)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MarketFileError(path, "is not UTF-8 text", line) from None
    return parse_market(text, path)


def format_market(stocks: list[Stock] | dict[str, Stock]) -> str:
    """The market as CSV text, header first, stocks in the given order."""
    if isinstance(stocks, dict):
        stocks = list(stocks.values())
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MARKET_COLUMNS)
    for stock in stocks:
        max_volume = "" if stock.max_volume is None else stock.max_volume
        writer.writerow([stock.name, repr(stock.price), stock.quantity, stock.volume, max_volume])
    return out.getvalue()
