"""Dataset folders -> time-ordered interactions, item texts and an account of every row.

Three folder shapes are read (see EVALUATION.md, "Interactions per dataset"):

``online-retail``  ``by-day/*.csv`` (or ``*.csv.gz``) with the UCI Online Retail header:
                   valid purchase lines
``taobao``         ``UserBehavior.csv`` (no header): pv, cart, fav and buy events
``generic``        ``interactions.csv`` (user_id,item_id,ts[,type]) + ``items.csv``
                   (item_id,title[,category])

Every source row ends up in exactly one place: an interaction, a :class:`BadRecord`
(it could not become an event: malformed, truncated, unknown type), or a count in
``Dataset.skipped`` (well-formed but deliberately not an interaction, such as a
cancellation). Nothing is dropped silently. This module needs numpy and the standard
library only, so the dataflow process can use it.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import math
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from streams.contracts import EVENT_TYPES, Event

__all__ = ["Item", "BadRecord", "Interactions", "Dataset", "DatasetError", "load_dataset"]

_ONLINE_RETAIL_HEADER = [
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
]
#: StockCodes that are postage, fees, discounts or vouchers, not products (README).
_NON_PRODUCT_CODES = frozenset(
    {"POST", "DOT", "M", "m", "C2", "D", "S", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS", "B"}
)
_TAOBAO_TYPES = {"pv": "click", "cart": "add_to_cart", "fav": "favorite", "buy": "purchase"}
_SHAPES = (
    "a dataset folder must hold one of: by-day/*.csv or *.csv.gz with the Online Retail "
    "header (online-retail), UserBehavior.csv (taobao), or interactions.csv "
    "(user_id,item_id,ts[,type]) + items.csv (item_id,title[,category]) (generic)"
)


@dataclass(frozen=True)
class Item:
    """One catalog entry: the text the language model reads, and a category if known."""

    item_id: str
    title: str
    category: str | None


@dataclass(frozen=True)
class BadRecord:
    """A source row that could not become an event, kept so it can be dead-lettered."""

    raw: str
    reason: str
    source: str


@dataclass
class Interactions:
    """Columnar, time-ordered (stable: ties keep source order) interactions.

    Columns are parallel: row ``i`` of every list and of ``ts`` is one event.
    """

    event_id: list[str]
    user_id: list[str]
    item_id: list[str]
    type: list[str]
    ts: np.ndarray
    price: list[float | None]
    quantity: list[int | None]
    basket: list[str | None]

    def __len__(self) -> int:
        return len(self.event_id)

    def event(self, i: int) -> Event:
        """Row ``i`` as a validated :class:`~streams.contracts.Event`.

        The basket (online-retail invoice) travels as ``session_id``: an invoice is one
        checkout, the closest thing to a session this data has.
        """
        return Event(
            event_id=self.event_id[i],
            type=self.type[i],
            user_id=self.user_id[i],
            item_id=self.item_id[i],
            ts=float(self.ts[i]),
            price=self.price[i],
            quantity=self.quantity[i],
            session_id=self.basket[i],
        )

    def before(self, ts: float) -> Interactions:
        """The interactions strictly before ``ts`` (a prefix: rows are in time order)."""
        n = int(np.searchsorted(self.ts, ts, side="left"))
        return Interactions(
            *(getattr(self, f.name)[:n] for f in dataclasses.fields(self))  # type: ignore[arg-type]
        )

    def events(self, start: int = 0, stop: int | None = None) -> Iterator[Event]:
        """Events ``start`` to ``stop`` (exclusive; None = the end), in time order."""
        for i in range(*slice(start, stop).indices(len(self))):
            yield self.event(i)


@dataclass
class Dataset:
    """A loaded dataset folder: interactions, items and what was not turned into events."""

    name: str
    interactions: Interactions
    items: dict[str, Item]
    bad_records: list[BadRecord]
    skipped: dict[str, int]
    fingerprint: str


class DatasetError(ValueError):
    """The folder is not a dataset this module can read, or a file in it is unreadable."""


def load_dataset(path: Path | str, limit: int | None = None) -> Dataset:
    """Load a dataset folder, detecting its kind from the files in it.

    ``limit`` keeps only the first ``limit`` interactions in time order. ``items``,
    ``bad_records`` and ``skipped`` always describe the whole source, so the catalog
    does not depend on ``limit``. ``fingerprint`` is a sha256 (16 hex characters) over
    each source file's name and bytes, plus ``limit`` when one is given.

    Timestamps without a timezone (all of online-retail, naive ISO-8601 in a generic
    pair) are read as UTC, like :class:`~streams.contracts.Event` does.

    Raises :class:`DatasetError` when the folder has none of the accepted shapes.
    """
    folder = Path(path)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder; {_SHAPES}")
    reader = _Reader()
    by_day = sorted([*(folder / "by-day").glob("*.csv"), *(folder / "by-day").glob("*.csv.gz")])
    if by_day:
        name, items = "online-retail", _read_online_retail(reader, by_day)
    elif (folder / "UserBehavior.csv").is_file():
        name, items = "taobao", _read_taobao(reader, folder / "UserBehavior.csv")
    elif (folder / "interactions.csv").is_file() and (folder / "items.csv").is_file():
        name = f"generic:{folder.resolve().name}"
        items = _read_generic(reader, folder / "interactions.csv", folder / "items.csv")
    else:
        raise DatasetError(f"{folder} has no dataset files; {_SHAPES}")
    if limit is not None:
        reader.hasher.update(f"limit={limit}".encode())
    return Dataset(
        name=name,
        interactions=reader.interactions(limit),
        items=items,
        bad_records=reader.bad,
        skipped=dict(reader.skipped),
        fingerprint=reader.hasher.hexdigest()[:16],
    )


class _Reader:
    """Reads CSV files row by row and collects events, bad records, skips and the hash.

    Files are read one after another; :meth:`reject` quotes the row :meth:`rows` last
    yielded, and :attr:`line` is that row's 1-based line number in its file.
    """

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.bad: list[BadRecord] = []
        self.skipped: Counter[str] = Counter()
        self._columns: tuple[list, ...] = ([], [], [], [], [], [], [], [])
        self._name = ""
        self._lines: list[str] = []
        self._start = self._end = 0

    @property
    def line(self) -> int:
        return self._start + 1

    def rows(self, path: Path) -> Iterator[list[str]]:
        """Yield the fields of every non-blank row (header included) of a UTF-8 CSV file.

        A ``.gz`` file is decompressed first; the hash covers the decompressed bytes.
        """
        data = path.read_bytes()
        if path.suffix == ".gz":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError, zlib.error) as exc:
                raise DatasetError(f"{path}: not a readable gzip file ({exc})") from None
        self.hasher.update(path.name.encode() + b"\0" + data)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path}: not UTF-8 (byte {exc.start}); save it as UTF-8") from None
        # newline="" splits on \n, \r and \r\n only, exactly as the csv module does.
        self._name, self._lines = path.name, io.StringIO(text, newline="").readlines()
        reader = csv.reader(self._lines)
        self._end = 0
        while True:
            self._start = self._end
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                self._end = reader.line_num
                self.reject(f"unreadable CSV: {exc}")
                continue
            self._end = reader.line_num
            if fields:
                yield fields
            else:
                self.skipped["blank_line"] += 1

    def reject(self, reason: str) -> None:
        """Record the current row as a :class:`BadRecord`."""
        raw = "".join(self._lines[self._start : self._end]).rstrip("\r\n")
        self.bad.append(BadRecord(raw=raw, reason=reason, source=f"{self._name}:{self.line}"))

    def add(
        self,
        event_id: str,
        user_id: str,
        item_id: str,
        type_: str,
        ts: float,
        price: float | None = None,
        quantity: int | None = None,
        basket: str | None = None,
    ) -> None:
        ids, users, items, types, times, prices, quantities, baskets = self._columns
        ids.append(event_id)
        users.append(user_id)
        items.append(item_id)
        types.append(type_)
        times.append(ts)
        prices.append(price)
        quantities.append(quantity)
        baskets.append(basket)

    def interactions(self, limit: int | None) -> Interactions:
        """The collected events, stably sorted by time, cut to the first ``limit``."""
        ts = np.asarray(self._columns[4], dtype=np.float64)
        if bool(np.all(ts[1:] >= ts[:-1])):
            columns = [column[:limit] for column in self._columns]
        else:
            order = np.argsort(ts, kind="stable")[:limit].tolist()
            columns = [[column[i] for i in order] for column in self._columns]
        event_id, user_id, item_id, type_, _, price, quantity, basket = columns
        return Interactions(
            event_id=event_id,
            user_id=user_id,
            item_id=item_id,
            type=type_,
            ts=np.asarray(columns[4], dtype=np.float64),
            price=price,
            quantity=quantity,
            basket=basket,
        )


def _parse_ts(text: str) -> float:
    """Epoch seconds or ISO-8601 (naive = UTC) -> finite epoch float; ValueError otherwise."""
    try:
        value = float(text)
    except ValueError:
        try:
            dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"timestamp is neither epoch seconds nor ISO-8601: {text!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        value = dt.timestamp()
    if not math.isfinite(value):
        raise ValueError(f"timestamp is not finite: {text!r}")
    return value


def _column_count(got: int, want: int) -> str:
    if got < want:
        return f"truncated row: {got} of {want} columns"
    return f"too many columns: {got} instead of {want}"


def _mode(counts: dict[str, int]) -> str:
    """The most frequent key; ties go to the first seen (dicts keep insertion order)."""
    return max(counts, key=counts.__getitem__)


def _read_online_retail(reader: _Reader, files: list[Path]) -> dict[str, Item]:
    """Valid purchase lines of the by-day files, read in name order.

    Each row is counted once, by the first check it fails, in this order:
    unreadable or wrong column count (bad), ``cancellation`` (InvoiceNo starts with C),
    ``bad_debt_adjustment`` (A), ``no_customer``, ``non_product`` (postage, fees,
    vouchers), then a non-integer Quantity or non-numeric UnitPrice (bad),
    ``non_positive_quantity_or_price``, then an unparsable InvoiceDate (bad).
    """
    ts_cache: dict[str, float] = {}
    descriptions: dict[str, dict[str, int]] = {}
    skip = reader.skipped
    width = len(_ONLINE_RETAIL_HEADER)
    for path in files:
        rows = reader.rows(path)
        header = next(rows, None)
        if header != _ONLINE_RETAIL_HEADER:
            raise DatasetError(
                f"{path}: header is {header}, expected {','.join(_ONLINE_RETAIL_HEADER)}; {_SHAPES}"
            )
        for n, fields in enumerate(rows):
            if len(fields) != width:
                reader.reject(_column_count(len(fields), width))
                continue
            invoice, code, description, quantity_s, date, price_s, customer, _country = fields
            if invoice.startswith("C"):
                skip["cancellation"] += 1
                continue
            if invoice.startswith("A"):
                skip["bad_debt_adjustment"] += 1
                continue
            if not customer:
                skip["no_customer"] += 1
                continue
            if code in _NON_PRODUCT_CODES or code.startswith("gift_0001_"):
                skip["non_product"] += 1
                continue
            try:
                quantity, price = int(quantity_s), float(price_s)
            except ValueError:
                reader.reject(f"Quantity {quantity_s!r} or UnitPrice {price_s!r} is not a number")
                continue
            if quantity <= 0 or not price > 0:
                skip["non_positive_quantity_or_price"] += 1
                continue
            ts = ts_cache.get(date)
            if ts is None:
                try:
                    ts = ts_cache[date] = _parse_ts(date)
                except ValueError as exc:
                    reader.reject(f"InvoiceDate: {exc}")
                    continue
            user = customer[:-2] if customer.endswith(".0") else customer
            reader.add(f"or-{invoice}-{n}", user, code, "purchase", ts, price, quantity, invoice)
            counts = descriptions.setdefault(code, {})
            if description:
                counts[description] = counts.get(description, 0) + 1
    return {
        code: Item(code, _mode(counts) if counts else code, None)
        for code, counts in descriptions.items()
    }


def _read_taobao(reader: _Reader, path: Path) -> dict[str, Item]:
    """Every pv/cart/fav/buy row of ``UserBehavior.csv``; title = "category <id>".

    An item listed under several categories gets its most frequent one.
    """
    categories: dict[str, dict[str, int]] = {}
    for fields in reader.rows(path):
        if len(fields) != 5:
            reader.reject(_column_count(len(fields), 5))
            continue
        user, item, category, behavior, ts_s = fields
        type_ = _TAOBAO_TYPES.get(behavior)
        if type_ is None:
            reader.reject(f"unknown behavior {behavior!r} (expected one of pv, cart, fav, buy)")
            continue
        if not (user and item and category):
            reader.reject("empty user_id, item_id or category_id")
            continue
        try:
            ts = float(int(ts_s))
        except ValueError:
            reader.reject(f"timestamp is not an integer: {ts_s!r}")
            continue
        reader.add(f"tb-{reader.line}", user, item, type_, ts)
        counts = categories.setdefault(item, {})
        counts[category] = counts.get(category, 0) + 1
    return {
        item: Item(item, f"category {category}", category)
        for item, category in ((item, _mode(counts)) for item, counts in categories.items())
    }


def _header(
    rows: Iterator[list[str]], path: Path, required: tuple[str, ...], optional: tuple[str, ...]
) -> tuple[dict[str, int], int]:
    """A generic file's column positions by name, and its width; other columns are ignored."""
    header = [name.strip() for name in next(rows, [])]
    missing = [name for name in required if name not in header]
    if missing:
        raise DatasetError(
            f"{path}: header {','.join(header) or '(empty file)'} lacks {', '.join(missing)}; "
            f"{_SHAPES}"
        )
    return {name: header.index(name) for name in required + optional if name in header}, len(header)


def _optional(fields: list[str], col: dict[str, int], name: str, cast: type) -> Any:
    """An optional column's value cast to ``cast``, or None when absent or empty."""
    return cast(fields[col[name]]) if name in col and fields[col[name]] else None


def _read_generic(reader: _Reader, interactions: Path, items_csv: Path) -> dict[str, Item]:
    """A generic ``interactions.csv`` + ``items.csv`` pair.

    Rows with the wrong column count, an empty id, a bad timestamp or an unknown type
    become bad records. A missing or empty ``type`` means "click"; an empty title falls
    back to the item id and an empty category to None. Items that appear only in
    interactions.csv are kept with title = item id; a repeated item_id row in items.csv
    is a bad record (the first one wins). Optional ``price`` and ``quantity`` columns
    of interactions.csv travel with the events (revenue of attributed purchases).
    """
    items: dict[str, Item] = {}
    rows = reader.rows(items_csv)
    col, width = _header(rows, items_csv, ("item_id", "title"), ("category",))
    for fields in rows:
        if len(fields) != width:
            reader.reject(_column_count(len(fields), width))
            continue
        item = fields[col["item_id"]]
        if not item:
            reader.reject("empty item_id")
        elif item in items:
            reader.reject(f"duplicate item_id {item!r} (the first row is kept)")
        else:
            category = fields[col["category"]] if "category" in col else ""
            items[item] = Item(item, fields[col["title"]] or item, category or None)

    rows = reader.rows(interactions)
    col, width = _header(
        rows, interactions, ("user_id", "item_id", "ts"), ("type", "price", "quantity")
    )
    for fields in rows:
        if len(fields) != width:
            reader.reject(_column_count(len(fields), width))
            continue
        user, item = fields[col["user_id"]], fields[col["item_id"]]
        type_ = (fields[col["type"]] if "type" in col else "") or "click"
        if not (user and item):
            reader.reject("empty user_id or item_id")
            continue
        if type_ not in EVENT_TYPES:
            reader.reject(f"unknown type {type_!r} (expected one of {', '.join(EVENT_TYPES)})")
            continue
        try:
            ts = _parse_ts(fields[col["ts"]])
            price = _optional(fields, col, "price", float)
            quantity = _optional(fields, col, "quantity", int)
        except ValueError as exc:
            reader.reject(f"bad ts, price or quantity: {exc}")
            continue
        reader.add(f"g-{reader.line}", user, item, type_, ts, price, quantity)
        if item not in items:
            items[item] = Item(item, item, None)
    return items
