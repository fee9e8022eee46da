"""The shipped sample as a user meets it: the committed command rebuilds it, and
the demo runs on it where ``../shared/data`` is absent.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import streams.settings
from corpus.datasets import load_dataset
from streams.sample_data import ONLINE_RETAIL as SAMPLE
from streams.settings import default_data_dir
from tests.helpers import ONLINE_RETAIL
from tests.unit.test_sample_data import REPO, SAMPLE_FILES  # shared with the unit half


@pytest.fixture
def no_shared_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make ``../shared/data`` look absent to this process, without touching it."""
    monkeypatch.setattr(streams.settings, "SHARED_DATA", tmp_path / "moved-away" / "data")
    monkeypatch.delenv("STREAMREC_DATA", raising=False)


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


@pytest.mark.skipif(not ONLINE_RETAIL.is_dir(), reason=f"no full data at {ONLINE_RETAIL}")
def test_the_committed_command_rebuilds_the_sample(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    cmd = [sys.executable, "-m", "corpus.sample", "--source", str(ONLINE_RETAIL)]
    done = subprocess.run(
        [*cmd, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "33123 rows of 277 customers over 78 days" in done.stdout
    rebuilt = sorted((out / "by-day").glob("*.csv.gz"))
    assert [p.name for p in rebuilt] == [p.name for p in SAMPLE_FILES]
    for new, shipped in zip(rebuilt, SAMPLE_FILES, strict=True):
        assert gzip.decompress(new.read_bytes()) == gzip.decompress(shipped.read_bytes()), new.name
