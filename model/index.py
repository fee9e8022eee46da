"""Item vectors and the FAISS index for a dataset, cached on disk.

``build_catalog`` embeds every item's text with the encoder (the item tower)
and writes a ``streams.catalog.Catalog`` folder. The folder name is keyed by
the dataset's fingerprint and the model's fingerprint, so a second start with
the same data and model loads it instead of recomputing. An encoder loaded
from a fine-tuned artifact brings its own catalog (built by ``streamrec
finetune``), which is used as is when it was built for the same dataset.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from pathlib import Path

import faiss
import numpy as np

from corpus.datasets import Dataset
from model.encoder import Encoder
from streams.catalog import Catalog

__all__ = ["catalog_dir", "build_catalog", "make_catalog", "derive_categories"]


def derive_categories(vectors: np.ndarray, seed: int = 0) -> tuple[list[str | None], str]:
    """Categories for a catalog that has none: k-means clusters of the item vectors.

    Online-retail has no category field (its README says a grouping must be
    derived, e.g. from the text). Clusters of the item-text embeddings give
    the category-aware rerankers (calibration, per-category cap) something to
    work with; k = sqrt(n / 2), seeded, so the same catalog gives the same
    clusters. Returns (labels "c<id>", a description for the manifest).
    """
    n = len(vectors)
    k = max(2, round(math.sqrt(n / 2)))
    if n < 2 * k:
        return [None] * n, "none (too few items to cluster)"
    km = faiss.Kmeans(vectors.shape[1], k, niter=25, seed=seed, spherical=True, verbose=False)
    km.train(vectors)
    _, labels = km.index.search(vectors, 1)
    return [f"c{int(c)}" for c in labels[:, 0]], f"derived: spherical k-means, k={k}, seed={seed}"


def catalog_dir(cache_dir: Path, dataset: Dataset, encoder: Encoder) -> Path:
    """Where the catalog for (data, model) lives: ``<cache>/catalog-<data>-<model>``."""
    return Path(cache_dir) / f"catalog-{dataset.fingerprint[:12]}-{encoder.fingerprint[:12]}"


def build_catalog(
    dataset: Dataset, encoder: Encoder, cache_dir: Path, progress: bool = True
) -> tuple[Path, bool]:
    """Build (or reuse) the catalog folder -> (path, built_now)."""
    artifact = getattr(encoder, "artifact", None)
    if artifact and artifact.catalog_dir and artifact.data_fingerprint == dataset.fingerprint:
        return artifact.catalog_dir, False
    path = catalog_dir(cache_dir, dataset, encoder)
    if (path / "manifest.json").is_file():
        return path, False
    catalog = make_catalog(dataset, encoder, progress)
    # Write to a sibling temp folder, then rename: a crash never leaves a
    # half-written folder that a later start would trust.
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    catalog.save(tmp)
    tmp.rename(path)
    (path / "build.json").write_text(json.dumps({"seconds": catalog.manifest["build_seconds"]}))
    return path, True


def make_catalog(dataset: Dataset, encoder: Encoder, progress: bool = True) -> Catalog:
    """Embed every item of ``dataset`` with ``encoder`` -> an in-memory :class:`Catalog`."""
    started = time.time()
    item_ids = sorted(dataset.items)
    titles = [dataset.items[i].title for i in item_ids]
    categories = [dataset.items[i].category for i in item_ids]
    counts = Counter(dataset.interactions.item_id)
    popularity = np.array([counts.get(i, 0) for i in item_ids], dtype=np.float32)
    vectors = encoder.encode(titles, progress=progress)
    derived = None
    if all(c is None for c in categories):
        categories, derived = derive_categories(vectors)
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
        "categories": derived or "from the dataset",
        "created_ts": time.time(),
        "build_seconds": round(time.time() - started, 2),
    }
    return Catalog(item_ids, titles, categories, vectors, popularity, manifest)
