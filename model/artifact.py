"""Versioned model artifacts: the folder layout, resolving a path, publishing a version.

``streamrec finetune`` writes one folder per version and flips ``current``::

    ARTIFACTS_DIR/
        20240102T030405Z-1a2b3c4d/
            model/          save_pretrained: safetensors weights + tokenizer
            catalog/        a ``streams.catalog.Catalog`` folder built with that model
            manifest.json   version, base model, data fingerprint, split, hyper-parameters,
                            metrics, training seconds
        current -> 20240102T030405Z-1a2b3c4d

Anything that takes ``--artifact`` accepts a version folder, the ``current``
link, or a plain Hugging Face model folder (no catalog, no version). A link is
resolved once per load, so a flip during a load never mixes two versions.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "ResolvedArtifact",
    "resolve_artifact",
    "artifact_version",
    "is_artifact",
    "new_version",
    "publish",
    "CURRENT",
    "MANIFEST",
]

CURRENT = "current"
MANIFEST = "manifest.json"


class ResolvedArtifact(NamedTuple):
    """What ``--artifact PATH`` stands for, with links followed."""

    model_dir: Path
    catalog_dir: Path | None
    version: str | None
    manifest: dict

    @property
    def data_fingerprint(self) -> str | None:
        """The dataset the artifact was trained on (and its catalog built for)."""
        data = self.manifest.get("data") or {}
        return data.get("fingerprint")


def is_artifact(path: Path) -> bool:
    """A version folder: ``model/config.json`` and ``manifest.json`` inside."""
    return (path / "model" / "config.json").is_file() and (path / MANIFEST).is_file()


def resolve_artifact(path: Path | str) -> ResolvedArtifact:
    """``path`` (artifact, ``current`` link or plain HF model folder) -> its parts.

    >>> resolve_artifact("/nonexistent").version is None
    True
    """
    real = Path(path).resolve()
    if not is_artifact(real):
        return ResolvedArtifact(real, None, None, {})
    manifest = json.loads((real / MANIFEST).read_text())
    catalog = real / "catalog"
    return ResolvedArtifact(
        real / "model",
        catalog if (catalog / "manifest.json").is_file() else None,
        str(manifest.get("version", real.name)),
        manifest,
    )


def artifact_version(path: Path | str) -> str | None:
    """The version ``path`` points at now (cheap: one link and one small file)."""
    return resolve_artifact(path).version


def new_version(weights_sha256: str, now: float | None = None) -> str:
    """``<UTC time>-<weights hash>``: sorts by creation, names the exact weights."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{weights_sha256[:8]}"


def publish(staged: Path, artifacts_dir: Path, version: str) -> Path:
    """Move a fully written ``staged`` folder to ``artifacts_dir/version``; flip ``current``.

    Both steps are renames, so a reader (the worker polling ``current``) sees
    the old version or the new one, never a partial folder or a missing link.
    """
    final = artifacts_dir / version
    if final.exists():
        raise FileExistsError(f"{final} already exists; versions are immutable")
    staged.rename(final)
    link = artifacts_dir / CURRENT
    tmp = artifacts_dir / f".{CURRENT}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version)  # relative: the folder can be moved or mounted elsewhere
    tmp.replace(link)
    return final
