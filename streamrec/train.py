"""``streamrec train``: the whole model chain for a dataset, cached by data and code.

The chain, each stage with its own progress bar:

1. the catalog: the LM's item vectors and FAISS index (the pretrained
   all-MiniLM-L6-v2 unless ``--artifact`` names a fine-tuned LM, made with
   ``streamrec finetune``);
2. the sequence model on those vectors, within a time budget
   (:func:`model.finetune_seq.finetune_sequence`);
3. the fusion weights, fitted on validation users through the product's own
   path (the same call).

The result is one model folder, ``<cache>/models/<dataset>-<key>/`` with the
sequence model's versions and its ``current`` link, and
``<cache>/models/current`` pointing at the newest one trained. ``key``
fingerprints what the model depends on: the data (its content hash), the LM
and the code that shapes features and training. The same key finds the
finished model again (a warm start costs nothing); a change to any of them
trains a new one, and so do other training options given explicitly
(each version records its options in ``train-options.json``). A stage interrupted (Ctrl-C, a crash)
leaves no published model and runs again on the next call: each stage is a
few minutes, and a half-trained model would be served as if it were done.

The LM itself is not fine-tuned by default: the fusion ranker on the
pretrained LM's vectors with a 3-minute sequence model reached P1 NDCG@10
.2466 (no mask) against .2454 for the one built on the fine-tuned LM with a
15-minute budget (docs/RANKING.md), and fine-tuning costs some 15 minutes
more on two cores.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from streams.settings import Settings

__all__ = [
    "TrainOptions",
    "TooLittleData",
    "model_key",
    "trained_model",
    "train",
    "current_model",
]

# The code a model's numbers depend on: a change in one of these retrains.
_CODE = (
    "model/sequence.py",
    "model/finetune_seq.py",
    "model/fusion.py",
    "corpus/protocols.py",
    "streams/state.py",
    "streams/signals.py",
    "streams/retrieval.py",
)
_ROOT = Path(__file__).resolve().parent.parent
# Users P1's 5-core split must keep: fewer leave no validation users to stop on
# and fit the fusion with (a 12-user set trains a model of NaNs).
_MIN_USERS = 30


class TooLittleData(ValueError):
    """The dataset has too few users or items for a sequence model (P1's 5-core split)."""


@dataclass(frozen=True)
class TrainOptions:
    """What ``streamrec train`` may be told; part of the model's key."""

    max_minutes: float = 3.0
    fusion_users: int = 600
    seed: int = 13


def model_key(fingerprint: str, lm: str) -> str:
    """12 hex characters over the data fingerprint, the LM and the code."""
    h = hashlib.sha256()
    h.update(json.dumps([fingerprint, lm]).encode())
    for rel in _CODE:
        path = _ROOT / rel
        h.update(rel.encode())
        h.update(path.read_bytes() if path.is_file() else b"")
    return h.hexdigest()[:12]


def _folder(settings: Settings, name: str, key: str) -> Path:
    return settings.cache_dir / "models" / f"{name}-{key}"


def trained_model(
    settings: Settings, dataset, lm: str, options: TrainOptions | None = None
) -> Path | None:  # noqa: ANN001
    """The ``current`` link of the finished model for this data, LM and code (and,
    when given, trained with ``options``), or None."""
    folder = _folder(settings, dataset.name, model_key(dataset.fingerprint, lm))
    current = folder / "current"
    if not (current / "config.json").is_file():
        return None
    if options is not None:
        recorded = (current / _OPTIONS).read_text() if (current / _OPTIONS).is_file() else ""
        if recorded != _options_json(options):
            return None
    return current


_OPTIONS = "train-options.json"


def _options_json(options: TrainOptions) -> str:
    return json.dumps(options.__dict__, sort_keys=True)


def train(
    settings: Settings, options: TrainOptions | None = None, progress: bool = True, log=print
) -> Path:  # noqa: ANN001
    """Run the chain (or find its cached result) -> the sequence model's ``current`` link.

    ``options`` None takes any finished model of this data, LM and code (what
    the demo wants), else trains with the defaults; given options take a
    finished model only if it was trained with them, else train a new version
    (``current`` flips to it). ``log`` gets one line per stage. Raises
    :class:`TooLittleData` when the dataset cannot train a sequence model (the
    caller may serve the two-tower ranker instead).
    """
    from corpus.datasets import load_dataset
    from model.encoder import Encoder
    from model.finetune_seq import finetune_sequence
    from model.index import build_catalog
    from model.sequence import SeqConfig

    dataset = load_dataset(settings.data)
    encoder = Encoder(settings.artifact, device=settings.device)
    folder = _folder(settings, dataset.name, model_key(dataset.fingerprint, encoder.name))
    done = trained_model(settings, dataset, encoder.name, options)
    options = options or TrainOptions()
    if done is not None:
        log(f"model: cached {done.resolve().name} ({folder})")
        _link_current(settings, done)
        return done
    from corpus.protocols import leave_last_out

    users = len(leave_last_out(dataset.interactions).user_ids)
    if users < _MIN_USERS:
        raise TooLittleData(
            f"{dataset.name}: {users} users with 5 or more interactions, a sequence model "
            f"needs at least {_MIN_USERS}"
        )
    catalog_dir = encoder.artifact.catalog_dir if encoder.artifact else None
    if catalog_dir is None:
        catalog_dir, built = build_catalog(dataset, encoder, settings.cache_dir, progress)
        log(f"catalog: {'built' if built else 'cached'} {catalog_dir}")
    cfg = SeqConfig(max_minutes=options.max_minutes, seed=options.seed, device=settings.device)
    log(
        f"sequence model + fusion weights: training (budget {options.max_minutes:g} min, "
        f"{options.fusion_users} fusion users) into {folder}"
    )
    try:
        version = finetune_sequence(
            settings.data,
            folder,
            catalog_dir,
            settings,
            cfg=cfg,
            fusion_users=options.fusion_users,
            progress=progress,
        )
    except (ValueError, IndexError, ZeroDivisionError) as exc:
        # A tiny dataset leaves no users after P1's 5-core filter (or none to validate on).
        raise TooLittleData(
            f"{dataset.name}: too little data for a sequence model ({exc})"
        ) from exc
    (version / _OPTIONS).write_text(_options_json(options))
    current = folder / "current"
    log(f"model: trained {version.name}")
    _link_current(settings, current)
    return current


def current_model(settings: Settings) -> Path | None:
    """The model ``streamrec train`` made last (``CACHE/models/current``), when it
    was trained on the vectors of ``settings.catalog``; else None.

    How the dataflow, the worker and evaluate find the current model without a
    flag: a model is only taken for the catalog it was trained on (another
    dataset's, or another LM's, would not share its item rows).
    """
    link = settings.cache_dir / "models" / "current"
    if settings.catalog is None or not (link / "config.json").is_file():
        return None
    try:
        trained_on = json.loads((link / "config.json").read_text())["catalog"]["version"]
        catalog = json.loads((Path(settings.catalog) / "manifest.json").read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return link if trained_on == catalog else None


def _link_current(settings: Settings, model: Path) -> None:
    """Point ``<cache>/models/current`` at ``model`` (atomically)."""
    link = settings.cache_dir / "models" / "current"
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".current-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(model.resolve())
    tmp.replace(link)
