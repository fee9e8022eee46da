"""Run methods through a protocol and collect their metrics (EVALUATION.md tables).

Each method is timed on its own (fit, every recommendation and the metrics),
and every result carries ``n``, the number of test cases, and ``seconds``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Literal

import numpy as np
from tqdm.auto import tqdm

from corpus.protocols import LeaveLastOut, PrequentialReplay, leave_last_out
from evaluation.baselines import Recommender
from evaluation.quality import QualityAccumulator, ReferenceEmbeddings, long_tail_items

if TYPE_CHECKING:
    from corpus.datasets import Dataset

__all__ = ["evaluate_p1", "evaluate_p2", "machine", "report_header"]

Results = dict[str, dict[str, float]]
#: Users scored per ``scores`` call in P1: big enough for matrix products, small
#: enough that a (batch x items) float64 score matrix stays in tens of MB.
_BATCH = 512


def _categories(
    dataset: Dataset, item_ids: Sequence[str], embeddings: ReferenceEmbeddings | None = None
) -> list[str | None] | None:
    """Per item code, its category; None when the dataset has no categories at all.

    With ``embeddings``, a dataset without categories (online-retail) gets the
    ones its catalog derives (``model.index.derive_categories``: k-means of
    every item's pretrained embedding, the same clusters as a catalog built
    with the pretrained model), so exposure per category can be measured.
    """
    cats = [dataset.items[i].category if i in dataset.items else None for i in item_ids]
    if any(c is not None for c in cats):
        return cats
    if embeddings is None or not dataset.items:
        return None
    derived = _derived_categories(dataset, embeddings)
    if not derived:
        return None
    cats = [derived.get(i) for i in item_ids]
    return cats if any(c is not None for c in cats) else None


def _derived_categories(dataset: Dataset, embeddings: ReferenceEmbeddings) -> dict[str, str | None]:
    """Item id -> derived category over every item of ``dataset``; kept on
    ``embeddings`` per item set, so P1, P2 and the sweep derive them once."""
    every = sorted(dataset.items)  # the catalog's row order (make_catalog)
    cache = embeddings.__dict__.setdefault("_derived_categories", {})
    key = tuple(every)
    if key not in cache:
        from model.index import derive_categories

        vectors = embeddings(every)
        if vectors is None or np.ndim(vectors) != 2 or len(vectors) != len(every):
            return {}  # a stand-in without vectors: no categories to derive
        labels, _ = derive_categories(np.asarray(vectors, dtype=np.float32))
        cache[key] = dict(zip(every, labels, strict=True))
    return cache[key]


def evaluate_p1(
    dataset: Dataset,
    methods: Mapping[str, Recommender],
    k: int = 10,
    mask: bool = False,
    *,
    split: LeaveLastOut | None = None,
    fold: Literal["test", "valid"] = "test",
    embeddings: ReferenceEmbeddings | None = None,
    progress: bool = False,
    users: np.ndarray | None = None,
) -> Results:
    """P1 leave-last-out, full ranking: method name -> metrics (``n``, ``seconds`` too).

    ``mask`` removes each user's history items from their candidates. Pass
    ``split`` (from :func:`leave_last_out`) and ``embeddings`` to reuse them
    across calls; ``users`` (user codes) evaluates a subsample (default: all).
    """
    split = split if split is not None else leave_last_out(dataset.interactions)
    embeddings = embeddings if embeddings is not None else ReferenceEmbeddings(dataset.items)
    data = split.test if fold == "test" else split.valid
    vectors = embeddings(split.item_ids)
    categories = _categories(dataset, split.item_ids, embeddings)
    long_tail = long_tail_items(data.train.events.items, len(split.item_ids))
    item_users, n_users = data.item_users(), len(split.user_ids)
    chosen = np.arange(n_users) if users is None else np.asarray(users, dtype=np.int64)
    results: Results = {}
    for name, method in methods.items():
        acc = QualityAccumulator(k, vectors, categories, long_tail)
        start = perf_counter()
        method.fit(data.train)
        batches = range(0, len(chosen), _BATCH)
        for first in tqdm(batches, desc=f"P1 {name}", unit="batch", disable=not progress):
            part = chosen[first : first + _BATCH]
            exclude = [data.history(u) for u in part] if mask else None
            for user, ranked in zip(
                part, method.recommend_many(part, k, None, exclude), strict=True
            ):
                acc.add(ranked, data.targets[user : user + 1], item_users, n_users)
        results[name] = {**acc.summary(len(split.item_ids)), "seconds": perf_counter() - start}
    return results


def evaluate_p2(
    dataset: Dataset,
    methods: Mapping[str, Recommender],
    k: int = 10,
    *,
    replay: PrequentialReplay | None = None,
    start: str | float = "2011-11-01",
    embeddings: ReferenceEmbeddings | None = None,
    progress: bool = False,
) -> dict[str, Results]:
    """P2 prequential replay: ``{"all": {method: metrics}, "new": {method: metrics}}``.

    ``all`` scores each test basket's distinct items; ``new`` removes the user's
    earlier items from the list and the relevant set and skips baskets left
    with nothing. Catalog coverage is over the items sold before the last test;
    the long tail is by the interactions before the first test (``train_set``).
    """
    replay = replay if replay is not None else PrequentialReplay(dataset.interactions, start)
    embeddings = embeddings if embeddings is not None else ReferenceEmbeddings(dataset.items)
    vectors = embeddings(replay.item_ids)
    categories = _categories(dataset, replay.item_ids, embeddings)
    long_tail = long_tail_items(replay.train_set().events.items, len(replay.item_ids))
    results: dict[str, Results] = {"all": {}, "new": {}}
    for name, method in methods.items():
        acc = {v: QualityAccumulator(k, vectors, categories, long_tail) for v in results}
        n_candidates = 0
        start_s = perf_counter()
        method.fit(replay.train_set())
        for step in tqdm(replay, desc=f"P2 {name}", unit="ts", disable=not progress):
            for test in step.tests:
                user, cands = test.basket.user, test.candidates
                n_candidates = int(cands.sum())
                ranked = method.recommend(user, k, candidates=cands, now=step.time)
                acc["all"].add(ranked, test.basket.items, step.item_users, step.n_users)
                new = test.new_items
                if len(new):
                    ranked = method.recommend(
                        user, k, candidates=cands, exclude=test.earlier, now=step.time
                    )
                    acc["new"].add(ranked, new, step.item_users, step.n_users)
            method.update(step.events)
        seconds = perf_counter() - start_s
        for variant, a in acc.items():
            results[variant][name] = {**a.summary(n_candidates), "seconds": seconds}
    return results


def machine() -> dict[str, object]:
    """CPUs and load averages, recorded at a run's start and end: the machine is
    shared, so every results file says how busy it was."""
    return {"cpus": os.cpu_count(), "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def report_header(report: Mapping, title: str, note: str = "") -> list[str]:
    """The opening lines of a ``results.md``: title, command, run time with the
    machine's load (then ``note``), data counts. ``report`` holds ``command``,
    ``seconds``, ``machine``, ``machine_end`` (:func:`machine`) and ``counts``."""
    return [
        f"# {title}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Run time {report['seconds']:.0f} s on {report['machine']['cpus']} CPUs "
        f"(load average at start {report['machine']['load_avg_1_5_15']}, "
        f"at end {report['machine_end']['load_avg_1_5_15']}; the machine is shared)." + note,
        "",
        "Data: " + ", ".join(f"{key} {v:,}" for key, v in report["counts"].items()) + ".",
        "",
    ]
