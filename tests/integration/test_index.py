"""Building and caching the catalog with the real default encoder (CPU)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from corpus.datasets import Dataset, load_dataset
from model.encoder import Encoder, EncoderNotFound
from model.index import build_catalog, catalog_dir
from streams.catalog import Catalog
from tests.helpers import write_generic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return load_dataset(write_generic_dataset(tmp_path_factory.mktemp("data"), seed=7))


@pytest.fixture(scope="module")
def built(
    dataset: Dataset, encoder: Encoder, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, bool, Path]:
    """(catalog path, built_now, cache dir) of the first build in a fresh cache."""
    cache = tmp_path_factory.mktemp("cache")
    path, built_now = build_catalog(dataset, encoder, cache, progress=False)
    return path, built_now, cache


def test_first_call_builds(built, dataset: Dataset, encoder: Encoder) -> None:
    path, built_now, cache = built
    assert built_now is True
    assert path == catalog_dir(cache, dataset, encoder)
    assert path.name == f"catalog-{dataset.fingerprint[:12]}-{encoder.fingerprint[:12]}"
    assert not path.with_name(path.name + ".tmp").exists()


def test_second_call_reuses_without_encoding(
    built, dataset: Dataset, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _, cache = built

    def refuse(*args, **kwargs):
        raise AssertionError("the cached catalog must not be re-encoded")

    monkeypatch.setattr(Encoder, "encode", refuse)
    again, built_now = build_catalog(dataset, encoder, cache, progress=False)
    assert (again, built_now) == (path, False)


def test_loaded_catalog(built, dataset: Dataset, encoder: Encoder) -> None:
    path, _, _ = built
    catalog = Catalog.load(path)
    assert catalog.item_ids == sorted(dataset.items)
    assert len(catalog) == 40 and catalog.dim == encoder.dim == 384
    assert catalog.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(catalog.vectors, axis=1), 1.0, atol=1e-5)
    assert catalog.index.ntotal == 40
    assert catalog.titles[catalog.row["k0"]] == "RED ENAMEL MUG"
    assert catalog.categories[catalog.row["k0"]] == "kitchen"


def test_popularity_is_interaction_counts(built, dataset: Dataset) -> None:
    catalog = Catalog.load(built[0])
    counts = Counter(dataset.interactions.item_id)
    expected = [counts.get(item, 0) for item in catalog.item_ids]
    np.testing.assert_array_equal(catalog.popularity, np.array(expected, dtype=np.float32))
    assert catalog.popularity.sum() == len(dataset.interactions) == 72
    assert (catalog.popularity == 0).any()  # items nobody touched are still in the catalog


def test_manifest_names_model_and_data(built, dataset: Dataset, encoder: Encoder) -> None:
    path, _, _ = built
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["model"] == encoder.name == "all-MiniLM-L6-v2"
    assert manifest["model_fingerprint"] == encoder.fingerprint
    assert manifest["data"] == dataset.name
    assert manifest["data_fingerprint"] == dataset.fingerprint
    assert manifest["dim"] == 384 and manifest["items"] == 40
    assert Catalog.load(path).version == f"all-MiniLM-L6-v2@{dataset.fingerprint[:8]}"


def test_vectors_are_the_encoder_output(built, encoder: Encoder) -> None:
    catalog = Catalog.load(built[0])
    rows = [catalog.row[i] for i in ("k0", "b0", "t0")]
    expected = encoder.encode([catalog.titles[r] for r in rows])
    np.testing.assert_allclose(catalog.vectors[rows], expected, atol=1e-5)


def test_different_dataset_gives_a_different_folder(
    built, dataset: Dataset, encoder: Encoder, tmp_path: Path
) -> None:
    path, _, cache = built
    folder = write_generic_dataset(tmp_path / "other", n_users=4, seed=3)
    other = load_dataset(folder)
    assert other.fingerprint != dataset.fingerprint
    other_path, built_now = build_catalog(other, encoder, cache, progress=False)
    assert built_now is True and other_path != path
    assert other_path == catalog_dir(cache, other, encoder)
    assert (path / "manifest.json").is_file()  # the first catalog is untouched
    # Popularity counted independently from interactions.csv, not through the loader.
    with open(folder / "interactions.csv") as f:
        counts = Counter(row["item_id"] for row in csv.DictReader(f))
    catalog = Catalog.load(other_path)
    assert {
        i: int(p) for i, p in zip(catalog.item_ids, catalog.popularity, strict=True) if p
    } == counts


def test_encoder_without_config_json(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(EncoderNotFound, match="no config.json"):
        Encoder(tmp_path, device="cpu")
    with pytest.raises(EncoderNotFound):
        Encoder(tmp_path / "missing", device="cpu")
