"""Item vectors and the FAISS index for a dataset, cached on disk.

``build_catalog`` embeds every item's text with the encoder (the item tower)
and writes a ``streams.catalog.Catalog`` folder. The folder name is keyed by
the dataset's fingerprint and the model's fingerprint, so a second start with
the same data and model loads it instead of recomputing.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from model.encoder import Encoder
from streams.catalog import Catalog
from streams.datasets import Dataset

__all__ = ["catalog_dir", "build_catalog"]


def catalog_dir(cache_dir: Path, dataset: Dataset, encoder: Encoder) -> Path:
    """Where the catalog for (data, model) lives: ``<cache>/catalog-<data>-<model>``."""
    return Path(cache_dir) / f"catalog-{dataset.fingerprint[:12]}-{encoder.fingerprint[:12]}"


def build_catalog(
    dataset: Dataset, encoder: Encoder, cache_dir: Path, progress: bool = True
) -> tuple[Path, bool]:
    """Build (or reuse) the catalog folder -> (path, built_now)."""
    path = catalog_dir(cache_dir, dataset, encoder)
    if (path / "manifest.json").is_file():
        return path, False
    started = time.time()
    item_ids = sorted(dataset.items)
    titles = [dataset.items[i].title for i in item_ids]
    categories = [dataset.items[i].category for i in item_ids]
    counts = Counter(dataset.interactions.item_id)
    popularity = np.array([counts.get(i, 0) for i in item_ids], dtype=np.float32)
    vectors = encoder.encode(titles, progress=progress)
    manifest = {
        "version": f"{encoder.name}@{dataset.fingerprint[:8]}",
        "model": encoder.name,
        "model_dir": str(encoder.model_dir),
        "model_fingerprint": encoder.fingerprint,
        "data": dataset.name,
        "data_fingerprint": dataset.fingerprint,
        "dim": int(vectors.shape[1]),
        "items": len(item_ids),
        "popularity_from": f"{len(dataset.interactions)} interactions of {dataset.name}",
        "created_ts": time.time(),
        "build_seconds": round(time.time() - started, 2),
    }
    catalog = Catalog(item_ids, titles, categories, vectors, popularity, manifest)
    # Write to a sibling temp folder, then rename: a crash never leaves a
    # half-written folder that a later start would trust.
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    catalog.save(tmp)
    tmp.rename(path)
    (path / "build.json").write_text(json.dumps({"seconds": manifest["build_seconds"]}))
    return path, True
