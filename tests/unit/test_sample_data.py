"""The online-retail sample that ships with the package: what it holds, and that it
is the default where ``../shared/data`` is absent.
"""

from __future__ import annotations

import gzip
import shutil
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

import streams.settings
from corpus.datasets import DatasetError, load_dataset
from streams.sample_data import ONLINE_RETAIL as SAMPLE
from streams.settings import Settings, default_data_dir

REPO = Path(__file__).resolve().parents[2]
SAMPLE_FILES = sorted((SAMPLE / "by-day").glob("*.csv.gz"))


def test_the_sample_is_online_retail_read_by_the_same_code() -> None:
    ds = load_dataset(SAMPLE)
    ia = ds.interactions
    assert ds.name == "online-retail"
    assert len(ia) == 32_306
    assert len(set(ia.user_id)) == 277
    assert len(set(ia.item_id)) == len(ds.items) == 2_541
    assert set(ia.type) == {"purchase"}
    assert ds.bad_records == []
    assert ds.skipped == {
        "cancellation": 682,
        "non_product": 131,
        "non_positive_quantity_or_price": 4,
    }
    # The LM reads descriptions: every item has one (the loader falls back to the code).
    assert all(item.title != item.item_id for item in ds.items.values())
    baskets: dict[str, set] = defaultdict(set)
    for user, basket in zip(ia.user_id, ia.basket, strict=True):
        baskets[user].add(basket)
    assert min(len(b) for b in baskets.values()) >= 3
    assert np.all(np.diff(ia.ts) >= 0)
    first, last = (datetime.fromtimestamp(t, timezone.utc) for t in (ia.ts[0], ia.ts[-1]))
    assert (str(first), str(last)) == ("2011-09-01 09:15:00+00:00", "2011-11-30 16:54:00+00:00")
    event = ia.event(0)
    assert event.session_id == ia.basket[0] and not event.user_id.endswith(".0")


def test_the_sample_is_small_and_documented() -> None:
    assert len(SAMPLE_FILES) == 78
    assert sum(p.stat().st_size for p in SAMPLE_FILES) < 1_000_000
    readme = (SAMPLE / "README.md").read_text()
    for needed in ("CC BY 4.0", "python -m corpus.sample", "Daqing Chen"):
        assert needed in readme


def test_gzip_and_plain_day_files_load_the_same(tmp_path: Path) -> None:
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    (plain / "by-day").mkdir(parents=True)
    (packed / "by-day").mkdir(parents=True)
    for path in SAMPLE_FILES[:3]:
        (plain / "by-day" / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
        shutil.copy(path, packed / "by-day" / path.name)
    a, b = load_dataset(plain), load_dataset(packed)
    assert len(a.interactions) > 0
    assert a.interactions.event_id == b.interactions.event_id
    assert list(a.interactions.ts) == list(b.interactions.ts)
    assert a.items == b.items and a.skipped == b.skipped

    (packed / "by-day" / SAMPLE_FILES[0].name).write_bytes(b"not gzip")
    with pytest.raises(DatasetError, match="not a readable gzip file"):
        load_dataset(packed)


def test_default_data_is_the_shared_folder_when_present_else_the_sample(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STREAMREC_DATA", raising=False)
    shared = tmp_path / "shared" / "data"
    (shared / "online-retail").mkdir(parents=True)
    monkeypatch.setattr(streams.settings, "SHARED_DATA", shared)
    assert default_data_dir() == shared / "online-retail"
    assert Settings().data == shared / "online-retail"

    monkeypatch.setattr(streams.settings, "SHARED_DATA", tmp_path / "absent")
    assert default_data_dir() == SAMPLE
    assert Settings().data == SAMPLE
    monkeypatch.setenv("STREAMREC_DATA", str(tmp_path))
    assert Settings().data == tmp_path  # --data / STREAMREC_DATA still take any folder
