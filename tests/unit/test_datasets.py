"""corpus.datasets on the shared data and on small generic pairs (pure, no broker)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from corpus.datasets import Dataset, DatasetError, load_dataset
from streams.contracts import Event, parse

DATA = Path(__file__).parents[3] / "shared" / "data"
ONLINE_RETAIL = DATA / "online-retail"
TAOBAO = DATA / "taobao-userbehavior-sample"


@pytest.fixture(scope="module")
def online_retail() -> Dataset:
    if not ONLINE_RETAIL.is_dir():
        pytest.skip(f"shared data not found at {ONLINE_RETAIL}")
    return load_dataset(ONLINE_RETAIL)


@pytest.fixture(scope="module")
def taobao() -> Dataset:
    if not TAOBAO.is_dir():
        pytest.skip(f"shared data not found at {TAOBAO}")
    return load_dataset(TAOBAO)


def _check_well_formed(ds: Dataset, stride: int = 1) -> None:
    """Time-ordered, unique event ids, every item known, events valid and round-trip."""
    ia = ds.interactions
    assert ia.ts.dtype == np.float64
    assert np.all(np.diff(ia.ts) >= 0)
    assert len(set(ia.event_id)) == len(ia)
    assert set(ia.item_id) <= set(ds.items)
    for i in range(0, len(ia), stride):
        event = ia.event(i)
        assert parse(Event, event.to_bytes()) == event
    assert len(ds.fingerprint) == 16


def test_online_retail_counts(online_retail: Dataset) -> None:
    ia = online_retail.interactions
    assert online_retail.name == "online-retail"
    assert len(ia) == 396_337
    assert len(set(ia.user_id)) == 4_334
    assert len(set(ia.item_id)) == len(online_retail.items) == 3_659
    assert set(ia.type) == {"purchase"}
    skipped = online_retail.skipped
    assert skipped["cancellation"] == 9_288
    assert skipped["bad_debt_adjustment"] == 3
    assert {"no_customer", "non_product", "non_positive_quantity_or_price"} <= set(skipped)
    assert len(ia) + sum(skipped.values()) + len(online_retail.bad_records) == 541_909


def test_online_retail_fields(online_retail: Dataset) -> None:
    ia = online_retail.interactions
    first = ia.event(0)
    assert first.event_id == "or-536365-0"
    assert (first.user_id, first.item_id, first.type) == ("17850", "85123A", "purchase")
    assert first.ts == 1291191960.0  # 2010-12-01 08:26:00 read as UTC
    assert (first.price, first.quantity, first.session_id) == (2.55, 6, "536365")
    assert not any(u.endswith(".0") for u in ia.user_id)
    assert online_retail.items["85123A"].title == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert online_retail.items["85123A"].category is None
    _check_well_formed(online_retail, stride=97)


def test_taobao(taobao: Dataset) -> None:
    ia = taobao.interactions
    assert taobao.name == "taobao"
    assert len(ia) == 84_475
    assert len(set(ia.user_id)) == 815
    assert len(taobao.items) == 55_368
    assert Counter(ia.type) == {
        "click": 75_872,
        "add_to_cart": 4_497,
        "favorite": 2_356,
        "purchase": 1_750,
    }
    [bad] = taobao.bad_records
    assert bad.raw == "100370,1968385,1875258,pv"
    assert bad.source == "UserBehavior.csv:84476"
    assert bad.reason.startswith("truncated row")
    assert taobao.items["2268318"].title == "category 2520377"
    assert taobao.items["2268318"].category == "2520377"
    _check_well_formed(taobao)


def test_limit_keeps_the_first_events_in_time_order(taobao: Dataset) -> None:
    small = load_dataset(TAOBAO, limit=100)
    assert small.interactions.event_id == taobao.interactions.event_id[:100]
    assert small.items == taobao.items
    assert small.fingerprint != taobao.fingerprint


def _write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")


def test_generic_pair(tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    _write(folder, "items.csv", 'item_id,title,category\ni1,"Mug, red",kitchen\ni2,Lamp,\n')
    _write(
        folder,
        "interactions.csv",
        "user_id,item_id,ts,type\n"
        "u1,i1,2024-01-02T00:00:00Z,purchase\n"
        "u1,i2,2024-01-01T00:00:00,\n"
        "u2,i9,1704067200.5,view\n"
        "u2,i1,1704067200\n"
        "u3,i1,yesterday,click\n"
        "u3,i1,1704067200,teleport\n",
    )
    ds = load_dataset(folder)
    ia = ds.interactions
    assert ds.name == "generic:shop"
    # Sorted by time, ties in file order; a missing type is a click.
    assert ia.event_id == ["g-3", "g-4", "g-2"]
    assert ia.type == ["click", "view", "purchase"]
    assert list(ia.ts) == [1704067200.0, 1704067200.5, 1704153600.0]
    assert ds.items["i1"].title == "Mug, red" and ds.items["i1"].category == "kitchen"
    assert ds.items["i2"].category is None
    assert ds.items["i9"].title == "i9"  # only in interactions.csv
    assert [b.source for b in ds.bad_records] == [
        "interactions.csv:5",
        "interactions.csv:6",
        "interactions.csv:7",
    ]
    assert ds.bad_records[0].raw == "u2,i1,1704067200"
    assert ds.bad_records[0].reason == "truncated row: 3 of 4 columns"
    assert "teleport" in ds.bad_records[2].reason
    assert all(isinstance(e, Event) for e in ia.events())
    _check_well_formed(ds)


def test_generic_pair_without_type_column(tmp_path: Path) -> None:
    _write(tmp_path, "items.csv", "item_id,title\ni1,Mug\n")
    _write(tmp_path, "interactions.csv", "user_id,item_id,ts\nu1,i1,5\n")
    ds = load_dataset(tmp_path)
    assert ds.interactions.type == ["click"] and not ds.bad_records


def test_generic_pair_with_a_wrong_header(tmp_path: Path) -> None:
    _write(tmp_path, "items.csv", "item_id,title\ni1,Mug\n")
    _write(tmp_path, "interactions.csv", "user,item,time\nu1,i1,5\n")
    with pytest.raises(DatasetError, match="lacks user_id, item_id, ts"):
        load_dataset(tmp_path)


def test_unknown_folder(tmp_path: Path) -> None:
    _write(tmp_path, "ratings.csv", "a,b\n")
    with pytest.raises(DatasetError, match="interactions.csv"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        load_dataset(tmp_path / "missing")
