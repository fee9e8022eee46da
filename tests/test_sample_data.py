"""The online-retail sample that ships with the package: what it holds, that the
committed command rebuilds it, that it is the default where ``../shared/data`` is
absent, and that the demo runs on it there."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

import streams.settings
from streams.datasets import DatasetError, load_dataset
from streams.sample_data import ONLINE_RETAIL as SAMPLE
from streams.settings import Settings, default_data_dir
from tests.conftest import ONLINE_RETAIL

REPO = Path(__file__).resolve().parents[1]
SAMPLE_FILES = sorted((SAMPLE / "by-day").glob("*.csv.gz"))


@pytest.fixture
def no_shared_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make ``../shared/data`` look absent to this process, without touching it."""
    monkeypatch.setattr(streams.settings, "SHARED_DATA", tmp_path / "moved-away" / "data")
    monkeypatch.delenv("STREAMREC_DATA", raising=False)


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
    for needed in ("CC BY 4.0", "python -m streams.sample_data", "Daqing Chen"):
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


@pytest.mark.skipif(not ONLINE_RETAIL.is_dir(), reason=f"no full data at {ONLINE_RETAIL}")
def test_the_committed_command_rebuilds_the_sample(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    cmd = [sys.executable, "-m", "streams.sample_data", "--source", str(ONLINE_RETAIL)]
    done = subprocess.run(
        [*cmd, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "33123 rows of 277 customers over 78 days" in done.stdout
    rebuilt = sorted((out / "by-day").glob("*.csv.gz"))
    assert [p.name for p in rebuilt] == [p.name for p in SAMPLE_FILES]
    for new, shipped in zip(rebuilt, SAMPLE_FILES, strict=True):
        assert gzip.decompress(new.read_bytes()) == gzip.decompress(shipped.read_bytes()), new.name


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


@pytest.mark.integration
@pytest.mark.slow
def test_the_demo_runs_on_the_sample_where_shared_data_is_absent(
    no_shared_data: None, encoder, tmp_path: Path
) -> None:
    from model.index import build_catalog, catalog_dir

    # In this process: the default is the sample, and the real encoder catalogs it.
    data = default_data_dir()
    assert data == SAMPLE
    dataset = load_dataset(data)
    cache = tmp_path / "cache"
    path, built = build_catalog(dataset, encoder, cache, progress=False)
    assert built and (path / "manifest.json").is_file()

    # A copy of the package where no ../shared exists beside it, as when installed:
    # the subprocess imports it (the current folder comes first on sys.path, before
    # the editable install's finder), so its default_data_dir() finds no shared data.
    site = tmp_path / "site"
    for package in ("streams", "model", "streamrec"):
        shutil.copytree(
            REPO / package, site / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    assert not (tmp_path / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k != "STREAMREC_DATA"}
    env.update(
        PYTHONPATH=str(site),
        STREAMREC_METRICS_PORT="0",
        # Every event's list is answered, so the demo ends when the 200th comes back.
        STREAMREC_LATEST_WINS="false",
        COLUMNS="120",
    )
    where = subprocess.run(
        [sys.executable, "-c", "from streams.settings import default_data_dir as d; print(d())"],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip() == str(site / "streams" / "sample_data" / "online-retail"), (
        where.stdout + where.stderr
    )

    demo_cache = tmp_path / "demo-cache"  # cold: the demo builds what it needs
    demo = [sys.executable, "-m", "streamrec", "demo", "--events", "200", "--rate", "0"]
    done = subprocess.run(
        [*demo, "--cache-dir", str(demo_cache)],
        cwd=site,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=420,
    )
    out = done.stdout
    (tmp_path / "demo.out").write_text(out)
    tail = out[-4000:]
    assert done.returncode == 0, tail
    # It served a catalog of the sample (same data fingerprint, same encoder).
    assert (catalog_dir(demo_cache, dataset, encoder) / "manifest.json").is_file(), tail
    assert "streamrec demo report" in out, tail
    assert "200 (+0 bad records)" in out, tail
    assert "200 (duplicates dropped" in out, tail
