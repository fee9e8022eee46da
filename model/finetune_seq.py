"""``streamrec finetune-seq``: train the sequence model, then warm-start the fusion ranker.

1. Split the data with P1 (collapse, 5-core; with ``until`` only the
   interactions before that date, so a prequential test stays unseen).
2. Train :class:`model.sequence.SeqRec` next-item with a full softmax on each
   user's history without the last two items, on top of the LM item vectors
   of ``catalog`` (pass a fine-tuned artifact's catalog to build on the
   fine-tuned LM); early stopping on the second-to-last items.
3. Feed the same training histories through the product's own path
   (:class:`model.system.StreamrecSystem`: the dataflow's user state
   and item signals, the worker's fusion scorer), ask for each sampled user's
   candidates with their features, and fit the fusion weights listwise so the
   second-to-last item outranks the rest (:func:`model.fusion.fit_weights`);
   a second set the same way with each user's history filtered, for lists
   that may not repeat the user's items (``RankRequest.filter_seen``).
4. Publish ``<out>/<version>`` (weights, config with the item ids and the
   training history, ``fusion.json``) and flip ``<out>/current`` atomically.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from corpus.datasets import load_dataset
from model.artifact import new_version, publish
from model.fusion import fit_weights
from model.sequence import SeqConfig, SequenceModel, p1_training_data, save, train_sequence_model
from streams.catalog import Catalog
from streams.settings import Settings

__all__ = ["finetune_sequence", "fusion_warm_start", "fusion_warm_start_baskets"]


def _cutoff(until: str | None) -> float | None:
    if until is None:
        return None
    return datetime.fromisoformat(until).replace(tzinfo=timezone.utc).timestamp()


def fusion_warm_start(
    dataset, split, catalog: Catalog, settings: Settings, users: int, seed: int, progress: bool
) -> tuple[dict, dict]:  # noqa: ANN001
    """Fit the fusion weights on the validation fold through the product's own path:
    the main set on every sampled user's next item, the ``"masked"`` set on the
    same users asked with their history filtered (users whose next item is a
    repeat drop out there, as they do from the masked protocol)."""
    from model.ranker import build_ranker
    from model.system import StreamrecSystem

    ranker = build_ranker(settings, catalog)
    system = StreamrecSystem(dataset, catalog, settings, ranker=ranker, progress=progress)
    fold = split.valid
    started = time.perf_counter()
    system.fit(fold.train)
    rng = np.random.default_rng(seed)
    sample = np.sort(
        rng.choice(len(fold.targets), size=min(users, len(fold.targets)), replace=False)
    )
    groups: dict[bool, list] = {False: [], True: []}
    for start in range(0, len(sample), 64):
        part = sample[start : start + 64]
        targets = [catalog.row.get(split.item_ids[fold.targets[u]], -1) for u in part.tolist()]
        for masked in (False, True):
            exclude = [fold.history(u) for u in part] if masked else None
            requests = system.requests(part, settings.k, None, exclude)
            for target, (rows, x) in zip(targets, ranker.scorer.featurize(requests), strict=True):
                hit = np.flatnonzero(rows == target)
                groups[masked].append((x, int(hit[0]) if len(hit) else -1))
    weights = {**fit_weights(groups[False]), "masked": fit_weights(groups[True])}
    return weights, {
        "users": len(sample),
        "target_in_candidates": _found(groups[False]),
        "masked_target_in_candidates": _found(groups[True]),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _found(groups: list[tuple[np.ndarray, object]]) -> float:
    """Share of groups with a target among their candidates (-1 / [] = none)."""
    hits = [bool(np.any(np.atleast_1d(t) >= 0)) for _, t in groups]
    return round(float(np.mean(hits)), 4) if hits else 0.0


def fusion_warm_start_baskets(
    dataset, catalog: Catalog, settings: Settings, start: str, until: str, max_baskets: int
) -> tuple[dict, dict]:  # noqa: ANN001
    """Fit the fusion weights for next-basket lists: the prequential replay (P2's
    rules) of the baskets dated ``start`` to ``until``, through the product's own
    path; each basket's distinct items are the targets of the main set, and its
    items new to the user, asked with the user's earlier items filtered (P2's
    ``new``), those of the ``"masked"`` set.

    Why a second objective: the P1 fit learns what follows the last item, which
    is mostly the rest of the same invoice; a list asked for when the customer
    comes back must predict a new basket, where the user's own repeat purchases
    dominate (P2 repeat-buy HR@10 .715). Only baskets before ``until`` are used.
    """
    from corpus.protocols import PrequentialReplay
    from model.ranker import build_ranker
    from model.system import StreamrecSystem

    started = time.perf_counter()
    ranker = build_ranker(settings, catalog)
    system = StreamrecSystem(dataset, catalog, settings, ranker=ranker)
    replay = PrequentialReplay(dataset.interactions, start)
    end = _cutoff(until)
    system.fit(replay.train_set())
    groups: dict[bool, list[tuple[np.ndarray, list[int]]]] = {False: [], True: []}

    def add(masked: bool, user: int, items: np.ndarray, test) -> None:  # noqa: ANN001
        exclude = [test.earlier] if masked else None
        request = system.requests(np.array([user]), settings.k, test.candidates, exclude)
        ((rows, x),) = ranker.scorer.featurize(request)
        wanted = [catalog.row.get(replay.item_ids[i], -1) for i in items]
        groups[masked].append((x, np.flatnonzero(np.isin(rows, wanted)).tolist()))

    for step in tqdm(replay, desc="basket warm start", unit="ts"):
        if step.time >= end or len(groups[False]) >= max_baskets:
            break
        for test in step.tests:
            add(False, test.basket.user, test.basket.items, test)
            if len(test.new_items):
                add(True, test.basket.user, test.new_items, test)
        system.update(step.events)
    weights = {**fit_weights(groups[False]), "masked": fit_weights(groups[True])}
    return weights, {
        "objective": f"next basket, prequential baskets {start} to {until}",
        "baskets": len(groups[False]),
        "baskets_with_new_items": len(groups[True]),
        "any_target_in_candidates": _found(groups[False]),
        "any_new_target_in_candidates": _found(groups[True]),
        "seconds": round(time.perf_counter() - started, 1),
    }


def finetune_sequence(
    data: Path,
    out: Path,
    catalog_dir: Path,
    settings: Settings,
    cfg: SeqConfig | None = None,
    until: str | None = None,
    fusion_users: int = 2000,
    progress: bool = True,
    trained: Path | None = None,
    baskets_from: str | None = None,
    max_baskets: int = 2000,
) -> Path:
    """Train, warm-start and publish; returns the published version folder.

    ``trained``: a sequence-model folder already trained on this split (e.g. a
    staging folder of an earlier run): skip training, fit the fusion, publish.
    """
    from corpus.protocols import leave_last_out

    cfg = cfg or SeqConfig()
    started = time.perf_counter()
    dataset = load_dataset(data)
    inter = dataset.interactions
    cut = _cutoff(until)
    if cut is not None:
        inter = inter.before(cut)
    split = leave_last_out(inter)
    catalog = Catalog.load(catalog_dir)
    missing = [i for i in split.item_ids if i not in catalog.row]
    if missing:
        raise ValueError(
            f"{len(missing)} items of {data} are not in the catalog {catalog_dir} "
            f"(e.g. {missing[:3]}): build the catalog from the same data"
        )
    vectors = catalog.vectors[[catalog.row[i] for i in split.item_ids]]
    train = p1_training_data(split, cfg.valid_users, cfg.seed)
    if trained is None:
        model, history = train_sequence_model(vectors, train, cfg, progress=progress)
    else:
        loaded = SequenceModel(trained, device=cfg.device)
        if loaded.item_ids != split.item_ids:
            raise ValueError(f"{trained} was trained on other items than {data}'s split")
        model, history, cfg = loaded.model, loaded.meta["history"], loaded.model.cfg

    out.mkdir(parents=True, exist_ok=True)
    staged = out / ".staging-seq"
    shutil.rmtree(staged, ignore_errors=True)
    digest = hashlib.sha256(
        b"".join(v.detach().cpu().numpy().tobytes() for v in model.state_dict().values())
    ).hexdigest()
    version = new_version(digest)
    meta = {
        "version": version,
        "kind": "sequence-model",
        "data": {"name": dataset.name, "fingerprint": dataset.fingerprint, "until": until},
        "catalog": {"path": str(Path(catalog_dir).resolve()), "version": catalog.version},
        "split": {
            "protocol": "P1 leave-last-out (collapse, 5-core)"
            + (f" on the interactions before {until}" if until else ""),
            "train": "each user's history without the last two items",
            "validation": f"second-to-last item of {len(train.valid_targets)} sampled users",
            "users": len(split.user_ids),
            "items": len(split.item_ids),
        },
        "loss": "next-item cross-entropy, full softmax over the items, every position",
        "history": history,
        "hyper_parameters": asdict(cfg),
    }
    save(model, split.item_ids, staged, meta)

    fused = settings.model_copy(update={"sequence_model": staged, "catalog": catalog_dir})
    if baskets_from is not None:
        if until is None:
            raise ValueError("fitting on baskets needs --until: the baskets must stay unseen")
        weights, info = fusion_warm_start_baskets(
            dataset, catalog, fused, baskets_from, until, max_baskets
        )
    else:
        weights, info = fusion_warm_start(
            dataset, split, catalog, fused, fusion_users, cfg.seed, progress
        )
    (staged / "fusion.json").write_text(json.dumps({**weights, "warm_start": info}, indent=1))
    meta["fusion"] = {**weights, "warm_start": info}
    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    (staged / "config.json").write_text(
        json.dumps({**json.loads((staged / "config.json").read_text()), **meta}, indent=1)
    )
    SequenceModel(staged, device="cpu")  # the folder loads before anyone is pointed at it
    return publish(staged, out, version)
