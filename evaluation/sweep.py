"""The diversity sweep: every reranker at a grid of trade-offs, on the same scores.

Each test user's candidates are retrieved and scored by the LM once
(:class:`~model.system.StreamrecSystem` and its ranker's scorer);
each (reranker, trade-off) setting then reranks those same scored candidates
through the product's :class:`~model.ranker.Ranker`, fed by a scorer that
replays the stored scores. The result is one accuracy/diversity point per
setting (NDCG@k against ILD@k, ILD from the pretrained reference embeddings),
compared with the relevance-only order, and its exposure: the long-tail share
and the exposure Gini across categories and items (``streams.exposure``), so
the fairness reranker (``long_tail``) is judged on the same scores.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from evaluation.quality import QualityAccumulator, ReferenceEmbeddings, long_tail_items
from evaluation.runner import _categories
from model.ranker import Ranker
from model.rerank import RERANKERS
from model.scoring import Scored, Scorer

if TYPE_CHECKING:
    from corpus.datasets import Dataset
    from corpus.protocols import LeaveLastOut
    from model.system import StreamrecSystem
    from streams.contracts import RankRequest

__all__ = [
    "TRADE_OFFS",
    "sweep_p1",
    "qualifying",
    "best_within",
    "long_tail_qualifying",
    "long_tail_within",
    "write_sweep",
]

#: The exposure targets the sweep reports against (relative to the relevance order).
LONG_TAIL_GAIN = 0.30
NDCG_LOSS = 0.03

#: Trade-offs swept for every reranker but ``relevance`` (1 = the relevance order).
#: Finer below 0.5: on the fusion ranker's standardised relevance (``model.rerank``),
#: that is where the fusion ranker's accuracy/diversity frontier bends.
TRADE_OFFS = (
    1.0,
    0.9,
    0.8,
    0.7,
    0.6,
    0.5,
    0.45,
    0.4,
    0.375,
    0.35,
    0.325,
    0.3,
    0.275,
    0.25,
    0.225,
    0.2,
    0.1,
)


class _Replayed(Scorer):
    """Hands back the scores of the current batch, computed once by the real scorer."""

    def __init__(self) -> None:
        self.scored: list[Scored] = []

    def score(self, requests: Sequence[RankRequest]) -> list[Scored]:
        if len(requests) != len(self.scored):
            raise ValueError(f"{len(self.scored)} stored scores for {len(requests)} requests")
        return self.scored


def sweep_p1(
    dataset: Dataset,
    system: StreamrecSystem,
    split: LeaveLastOut,
    *,
    mask: bool = False,
    embeddings: ReferenceEmbeddings | None = None,
    k: int = 10,
    trade_offs: Sequence[float] = TRADE_OFFS,
    rerankers: Sequence[str] = tuple(RERANKERS),
    progress: bool = False,
) -> dict:
    """P1 (test fold) metrics per (reranker, trade-off) over one scoring per user.

    Returns ``{"k", "mask", "n", "seconds", "points": [{"reranker", "trade_off",
    <metric>: value, ...}, ...]}``; ``relevance`` appears once, at trade-off 1.
    """
    started = perf_counter()
    embeddings = embeddings if embeddings is not None else ReferenceEmbeddings(dataset.items)
    data = split.test
    vectors = embeddings(split.item_ids)
    categories = _categories(dataset, split.item_ids, embeddings)
    long_tail = long_tail_items(data.train.events.items, len(split.item_ids))
    item_users, n_users = data.item_users(), len(split.user_ids)
    settings = [
        (name, t) for name in rerankers for t in ((1.0,) if name == "relevance" else trade_offs)
    ]
    replay = _Replayed()
    rankers = {
        (name, t): Ranker(
            scorer=replay,
            reranker=RERANKERS[name](),
            catalog=system.catalog,
            trade_off=t,
            model_version=system.ranker.model_version,
            standardise=system.ranker.standardise,
        )
        for name, t in settings
    }
    accs = {s: QualityAccumulator(k, vectors, categories, long_tail) for s in settings}
    system.fit(data.train)
    batches = range(0, n_users, system.batch_size)
    for first in tqdm(batches, desc="sweep", unit="batch", disable=not progress):
        users = np.arange(first, min(first + system.batch_size, n_users))
        exclude = [data.history(u) for u in users] if mask else None
        requests = system.requests(users, k, None, exclude)
        replay.scored = system.ranker.scorer.score(requests)
        for setting, ranker in rankers.items():
            for user, ranked in zip(users, ranker.rank(requests), strict=True):
                accs[setting].add(
                    system.codes(ranked), data.targets[user : user + 1], item_users, n_users
                )
    points = [
        {"reranker": name, "trade_off": t, **accs[(name, t)].summary(len(split.item_ids))}
        for name, t in settings
    ]
    return {
        "k": k,
        "mask": mask,
        "n": n_users,
        "seconds": perf_counter() - started,
        "points": points,
    }


def _reference(sweep: Mapping) -> dict:
    return next(p for p in sweep["points"] if p["reranker"] == "relevance")


def _ratio(value: float | None, reference: float | None) -> float:
    if value is None or not reference:
        return float("nan")
    return value / reference - 1.0


def _changes(sweep: Mapping) -> list[dict]:
    """Every setting but the relevance order, with its relative NDCG, ILD and
    long-tail share change (NaN where the sweep has no long-tail figures)."""
    k = sweep["k"]
    ref = _reference(sweep)
    ndcg0, ild0 = ref[f"ndcg@{k}"], ref[f"ild@{k}"]
    tail0 = ref.get(f"long_tail_share@{k}")
    return [
        {
            **p,
            "ild_change": p[f"ild@{k}"] / ild0 - 1.0,
            "ndcg_change": p[f"ndcg@{k}"] / ndcg0 - 1.0,
            "long_tail_change": _ratio(p.get(f"long_tail_share@{k}"), tail0),
        }
        for p in sweep["points"]
        if p["reranker"] != "relevance"
    ]


def _compact(row: Mapping) -> dict:
    """A setting without its per-category exposure (for the summaries in sweep.json)."""
    return {key: v for key, v in row.items() if not key.startswith("exposure_by_category")}


def long_tail_qualifying(
    sweep: Mapping, gain: float = LONG_TAIL_GAIN, ndcg_loss: float = NDCG_LOSS
) -> list[dict]:
    """Settings that raise the long-tail share of the exposure by ``gain`` or more
    and lose at most ``ndcg_loss`` NDCG@k (relative to the relevance order), the
    largest long-tail gain first."""
    rows = [
        r
        for r in _changes(sweep)
        if r["long_tail_change"] >= gain and r["ndcg_change"] >= -ndcg_loss
    ]
    return sorted(rows, key=lambda r: -r["long_tail_change"])


def long_tail_within(sweep: Mapping, ndcg_loss: float = NDCG_LOSS) -> dict | None:
    """The setting with the largest long-tail gain among those losing at most
    ``ndcg_loss`` NDCG@k; None when none does or the sweep has no long-tail figures."""
    rows = [
        r
        for r in _changes(sweep)
        if r["ndcg_change"] >= -ndcg_loss and r["long_tail_change"] == r["long_tail_change"]
    ]
    return max(rows, key=lambda r: r["long_tail_change"]) if rows else None


def qualifying(
    sweep: Mapping, ild_gain: float = 0.20, ndcg_loss: float = 0.03
) -> tuple[list[dict], dict | None]:
    """Settings with ILD@k >= (1 + ild_gain) x and NDCG@k >= (1 - ndcg_loss) x the
    relevance order's (relative changes), most diverse first, and the closest one
    when none qualifies.

    Closest = among the settings that raise ILD by ``ild_gain``, the one losing the
    least NDCG (None when no setting raises ILD that much).
    """
    rows = _changes(sweep)
    ok = [r for r in rows if r["ild_change"] >= ild_gain and r["ndcg_change"] >= -ndcg_loss]
    ok.sort(key=lambda r: -r["ild_change"])
    diverse = [r for r in rows if r["ild_change"] >= ild_gain]
    closest = max(diverse, key=lambda r: r["ndcg_change"]) if diverse else None
    return ok, (None if ok else closest)


def best_within(sweep: Mapping, ndcg_loss: float = 0.03) -> dict | None:
    """The setting with the largest ILD gain among those losing at most ``ndcg_loss``
    of the relevance order's NDCG (relative); None when every setting loses more."""
    rows = [r for r in _changes(sweep) if r["ndcg_change"] >= -ndcg_loss]
    return max(rows, key=lambda r: r["ild_change"]) if rows else None


def _markdown(sweep: Mapping, baselines: Mapping[str, Mapping[str, float]], title: str) -> str:
    k = sweep["k"]
    ok, closest = qualifying(sweep)
    ref = _reference(sweep)
    lines = [
        f"# {title}",
        "",
        f"P1 leave-last-out, {'history mask' if sweep['mask'] else 'no mask'}, "
        f"{sweep['n']:,} test users, k = {k}; {sweep['seconds']:.0f} s. Each user's candidates "
        "are retrieved and LM-scored once; every setting reranks the same scores. "
        "ILD from the pretrained all-MiniLM-L6-v2 reference embeddings.",
        "",
        f"Relevance order: NDCG@{k} {ref[f'ndcg@{k}']:.4f}, ILD@{k} {ref[f'ild@{k}']:.4f}.",
        "",
        f"## Settings with ILD@{k} +20% or more and NDCG@{k} -3% or less (relative)",
        "",
    ]
    if ok:
        lines += [
            f"- `{r['reranker']}` at {r['trade_off']:g}: ILD {r['ild_change']:+.1%}, "
            f"NDCG {r['ndcg_change']:+.1%}"
            for r in ok
        ]
    elif closest is not None:
        lines.append(
            f"None. Closest: `{closest['reranker']}` at {closest['trade_off']:g} raises ILD by "
            f"{closest['ild_change']:+.1%} for NDCG {closest['ndcg_change']:+.1%}."
        )
    else:
        lines.append("None; no setting raises ILD by 20%.")
    best = best_within(sweep)
    if best is not None:
        lines += [
            "",
            f"Most diverse setting within -3% NDCG: `{best['reranker']}` at "
            f"{best['trade_off']:g} (ILD {best['ild_change']:+.1%}, NDCG "
            f"{best['ndcg_change']:+.1%}).",
        ]
    lines += _long_tail_section(sweep)
    lines += [
        "",
        "## Every setting",
        "",
        f"| reranker | trade-off | NDCG@{k} | ILD@{k} | NDCG change | ILD change "
        f"| Recall@{k} | catalog coverage | long-tail share | long-tail change "
        "| exposure Gini (categories) | exposure Gini (items) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    tail0 = ref.get(f"long_tail_share@{k}")
    for p in sweep["points"]:
        lines.append(
            f"| {p['reranker']} | {p['trade_off']:g} | {p[f'ndcg@{k}']:.4f} | "
            f"{p[f'ild@{k}']:.4f} | {p[f'ndcg@{k}'] / ref[f'ndcg@{k}'] - 1:+.1%} | "
            f"{p[f'ild@{k}'] / ref[f'ild@{k}'] - 1:+.1%} | {p[f'recall@{k}']:.4f} | "
            f"{p['catalog_coverage']:.3f} | {_cell(p, f'long_tail_share@{k}')} | "
            f"{_cell_change(p.get(f'long_tail_share@{k}'), tail0)} | "
            f"{_cell(p, f'exposure_gini_category@{k}')} | {_cell(p, f'exposure_gini_item@{k}')} |"
        )
    if baselines:
        lines += ["", "Reference points (same protocol and mask):", ""]
        lines += [
            f"- {name}: NDCG@{k} {m[f'ndcg@{k}']:.4f}, ILD@{k} {m[f'ild@{k}']:.4f}"
            + (
                f", long-tail share {m[f'long_tail_share@{k}']:.3f}"
                if f"long_tail_share@{k}" in m
                else ""
            )
            + (
                f", exposure Gini (categories) {m[f'exposure_gini_category@{k}']:.3f}"
                if f"exposure_gini_category@{k}" in m
                else ""
            )
            for name, m in baselines.items()
        ]
    return "\n".join(lines) + "\n"


def _cell(point: Mapping, key: str, fmt: str = "{:.3f}") -> str:
    return fmt.format(point[key]) if key in point else "-"


def _cell_change(value: float | None, reference: float | None) -> str:
    change = _ratio(value, reference)
    return "-" if change != change else f"{change:+.1%}"


def _long_tail_section(sweep: Mapping) -> list[str]:
    """The exposure summary: the relevance order's long-tail share and Gini, and the
    settings that raise the long-tail share by 30% within 3% NDCG."""
    k = sweep["k"]
    ref = _reference(sweep)
    if f"long_tail_share@{k}" not in ref:
        return []
    lines = [
        "",
        f"## Exposure: long-tail share +{LONG_TAIL_GAIN:.0%} or more and NDCG@{k} "
        f"-{NDCG_LOSS:.0%} or less (relative)",
        "",
        f"Exposure = position weight 1/log2(rank+1) summed over the lists; long tail = "
        f"outside the most popular 20% of items by training interactions. Relevance order: "
        f"long-tail share {ref[f'long_tail_share@{k}']:.3f}, exposure Gini "
        f"{_cell(ref, f'exposure_gini_category@{k}')} across categories, "
        f"{_cell(ref, f'exposure_gini_item@{k}')} across items.",
        "",
    ]
    ok = long_tail_qualifying(sweep)
    if ok:
        lines += [
            f"- `{r['reranker']}` at {r['trade_off']:g}: long-tail share "
            f"{r[f'long_tail_share@{k}']:.3f} ({r['long_tail_change']:+.1%}), NDCG "
            f"{r['ndcg_change']:+.1%}, exposure Gini (categories) "
            f"{_cell(r, f'exposure_gini_category@{k}')}"
            for r in ok
        ]
    else:
        lines.append(f"None raises the long-tail share by {LONG_TAIL_GAIN:.0%} within the budget.")
    best = long_tail_within(sweep)
    if best is not None:
        lines += [
            "",
            f"Most long-tail exposure within -{NDCG_LOSS:.0%} NDCG: `{best['reranker']}` at "
            f"{best['trade_off']:g} (long-tail share {best['long_tail_change']:+.1%}, NDCG "
            f"{best['ndcg_change']:+.1%}).",
        ]
    return lines


def _plot(
    sweep: Mapping, baselines: Mapping[str, Mapping[str, float]], title: str, path: Path
) -> None:
    """Two panels on the same settings: NDCG@k against ILD@k, and NDCG@k against the
    long-tail share of the exposure (when the sweep has it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = sweep["k"]
    ref = _reference(sweep)
    tail_key = f"long_tail_share@{k}"
    panels = [(f"ild@{k}", f"ILD@{k} (pretrained MiniLM reference embeddings)", 1.2)]
    if tail_key in ref:
        panels.append(
            (tail_key, "long-tail share of exposure (1/log2(rank+1))", 1 + LONG_TAIL_GAIN)
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5.5), squeeze=False)
    by_reranker: dict[str, list[dict]] = {}
    for p in sweep["points"]:
        by_reranker.setdefault(p["reranker"], []).append(p)
    for ax, (key, label, gain) in zip(axes[0], panels, strict=True):
        for name, pts in by_reranker.items():
            x = [p[key] for p in pts]
            y = [p[f"ndcg@{k}"] for p in pts]
            if name == "relevance":
                ax.scatter(
                    x, y, marker="*", s=180, color="black", zorder=3, label="relevance order"
                )
                continue
            (line,) = ax.plot(x, y, marker="o", label=name)
            for p in pts:
                ax.annotate(
                    f"{p['trade_off']:g}",
                    (p[key], p[f"ndcg@{k}"]),
                    textcoords="offset points",
                    xytext=(3, 3),
                    fontsize=7,
                    color=line.get_color(),
                )
        for name, m in baselines.items():
            if key not in m:
                continue
            ax.scatter([m[key]], [m[f"ndcg@{k}"]], marker="s", color="grey", zorder=3)
            ax.annotate(
                name,
                (m[key], m[f"ndcg@{k}"]),
                textcoords="offset points",
                xytext=(5, -10),
                fontsize=8,
            )
        ax.axhline(ref[f"ndcg@{k}"] * (1 - NDCG_LOSS), color="grey", lw=0.6, ls="--")
        ax.axvline(ref[key] * gain, color="grey", lw=0.6, ls="--")
        ax.set_xlabel(label)
        ax.set_ylabel(f"NDCG@{k}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_sweep(
    out: Path,
    sweep: Mapping,
    baselines: Mapping[str, Mapping[str, float]],
    title: str,
    stem: str = "sweep",
) -> list[Path]:
    """Write ``sweep.json``, ``sweep.md`` and ``sweep.png`` (NDCG@k against ILD@k and
    against the long-tail share, one curve per reranker, dashed lines at -3% NDCG,
    +20% ILD and +30% long-tail share, baselines as points); ``stem`` names the files."""
    out.mkdir(parents=True, exist_ok=True)
    ok, closest = qualifying(sweep)
    best, tail_best = best_within(sweep), long_tail_within(sweep)
    payload = {
        **sweep,
        "qualifying": [_compact(r) for r in ok],
        "closest": None if closest is None else _compact(closest),
        "best_within_ndcg_budget": None if best is None else _compact(best),
        "long_tail_qualifying": [_compact(r) for r in long_tail_qualifying(sweep)],
        "long_tail_within_ndcg_budget": None if tail_best is None else _compact(tail_best),
        "baselines": dict(baselines),
    }
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    paths[0].write_text(json.dumps(payload, indent=2) + "\n")
    paths[1].write_text(_markdown(sweep, baselines, title))
    _plot(sweep, baselines, title, paths[2])
    return paths
