"""The item catalog as the streaming side sees it: ids, texts, vectors, index.

A catalog folder is written by ``model.index.build_catalog`` (which needs the
language model) and read here with numpy and FAISS only, so the dataflow never
imports torch. Layout of the folder:

``manifest.json``   version, model name + fingerprint, data fingerprint, dim, count
``items.json``      {"item_ids": [...], "titles": [...], "categories": [...]}
``vectors.npy``     float32 (n, dim), rows L2-normalised (the item tower)
``popularity.npy``  float32 (n,), interaction counts in the data it was built from
``index.faiss``     exact inner-product index over ``vectors``

``Catalog.long_tail`` (derived, not stored): True for the items outside the
most popular 20% by ``popularity`` (:func:`streams.exposure.long_tail_mask`),
what the fairness reranker promotes and the worker's long-tail gauge counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from streams.exposure import long_tail_mask

__all__ = ["Catalog", "CatalogNotFound"]


class CatalogNotFound(FileNotFoundError):
    """The catalog folder is missing or incomplete."""


_FILES = ("manifest.json", "items.json", "vectors.npy", "popularity.npy", "index.faiss")


@dataclass
class Catalog:
    """Item ids, texts and L2-normalised vectors with an exact FAISS index."""

    item_ids: list[str]
    titles: list[str]
    categories: list[str | None]
    vectors: np.ndarray
    popularity: np.ndarray
    manifest: dict = field(default_factory=dict)
    index: faiss.Index | None = None

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        self.popularity = np.asarray(self.popularity, dtype=np.float32)
        if self.index is None:
            self.index = faiss.IndexFlatIP(self.vectors.shape[1])
            self.index.add(self.vectors)
        self.row: dict[str, int] = {item: i for i, item in enumerate(self.item_ids)}
        # Most popular first; ties by catalog order, so the fallback is deterministic.
        self.popular_rows = np.argsort(-self.popularity, kind="stable")
        # Outside the most popular 20% (ties by catalog order, as popular_rows).
        self.long_tail = long_tail_mask(self.popularity)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "unversioned"))

    def search(self, vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` rows by inner product with ``vector`` -> (rows, scores)."""
        n = min(n, len(self))
        scores, rows = self.index.search(np.asarray(vector, np.float32).reshape(1, -1), n)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep]

    def save(self, path: Path) -> None:
        """Write the folder atomically enough: every file, the manifest last."""
        path.mkdir(parents=True, exist_ok=True)
        (path / "items.json").write_text(
            json.dumps(
                {"item_ids": self.item_ids, "titles": self.titles, "categories": self.categories}
            )
        )
        np.save(path / "vectors.npy", self.vectors)
        np.save(path / "popularity.npy", self.popularity)
        faiss.write_index(self.index, str(path / "index.faiss"))
        (path / "manifest.json").write_text(json.dumps(self.manifest, indent=2))

    @classmethod
    def load(cls, path: Path) -> Catalog:
        """Read a catalog folder written by :meth:`save`."""
        path = Path(path)
        missing = [f for f in _FILES if not (path / f).is_file()]
        if missing:
            raise CatalogNotFound(
                f"{path} is not a complete catalog (missing {', '.join(missing)}); "
                "build it with `streamrec index --data DIR`"
            )
        items = json.loads((path / "items.json").read_text())
        return cls(
            item_ids=items["item_ids"],
            titles=items["titles"],
            categories=items["categories"],
            vectors=np.load(path / "vectors.npy"),
            popularity=np.load(path / "popularity.npy"),
            manifest=json.loads((path / "manifest.json").read_text()),
            index=faiss.read_index(str(path / "index.faiss")),
        )
