"""``streamrec evaluate``: EVALUATION.md's quality tables, streamrec included.

1. load the dataset; build the P1 split or the P2 replay;
2. for streamrec, build (or load) the catalog: over the filtered items for P1
   (full ranking over exactly the protocol's candidates), over every item for
   P2 (whose candidates change per basket and are filtered per request);
3. run every method through the protocol, per mask (P1) or variant (P2), timed;
4. print one table per protocol and mask, write ``results.json`` and
   ``results.md``;
5. with ``sweep`` (P1), the reranker sweep on the first mask:
   ``sweep.json``, ``sweep.md``, ``sweep.png``.

:func:`run_through_kafka` is the other mode: the consistency check of the
deployed pipeline against the in-process system (``consistency.json``/``.md``).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from corpus.datasets import Dataset, load_dataset
from streams.settings import Settings

if TYPE_CHECKING:
    from evaluation import LeaveLastOut, Recommender, ReferenceEmbeddings
    from evaluation.consistency import ConsistencyReport
    from model.encoder import Encoder
    from model.system import StreamrecSystem

__all__ = ["METHODS", "PROTOCOLS", "MASKS", "run_evaluate", "run_through_kafka", "default_out"]

METHODS = ("popularity", "repeat-buy", "item-knn", "content", "als", "bpr", "streamrec")
PROTOCOLS = ("leave-last-out", "prequential")
#: --mask -> the P1 runs: (table name, mask on?)
MASKS: dict[str, list[tuple[str, bool]]] = {
    "none": [("no mask", False)],
    "history": [("history mask", True)],
    "both": [("no mask", False), ("history mask", True)],
}
#: Methods left out of a table where the user's own items are removed: repeat-buy
#: is then the popularity order (EVALUATION.md's tables leave it out too).
_NOT_MASKED = {"repeat-buy"}


def default_out(dataset: Dataset, what: str) -> Path:
    """``runs/eval-<UTC time>-<dataset>-<what>`` (``generic:name`` -> ``generic-name``).

    A fresh folder per run, never the committed results in ``docs/eval/``: those
    are rewritten only by a run whose ``--out`` names them.
    """
    from datetime import datetime, timezone

    stamp = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    return Path("runs") / f"eval-{stamp}-{dataset.name.replace(':', '-')}-{what}"


def _console() -> Console:
    """The terminal's width, or a width that fits the tables when output is redirected."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _load(settings: Settings, console: Console) -> Dataset:
    with console.status(f"loading {settings.data}"):
        return load_dataset(settings.data)


def _plain(value: object) -> object:
    """JSON for numpy scalars (``int64`` counts and the like)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _command() -> str:
    return "streamrec " + shlex.join(sys.argv[1:])


def _metric_columns(k: int, p2: bool, categories: bool) -> list[tuple[str, str, str]]:
    """(metric key, header, format) for a table."""
    cols = [("n", "n", "{:,.0f}")]
    if p2:
        cols += [(f"hr@{k}", f"HR@{k}", "{:.4f}"), (f"recall@{k}", f"Recall@{k}", "{:.4f}")]
    else:
        cols.append((f"recall@{k}", f"Recall/HR@{k}", "{:.4f}"))
    cols += [
        (f"ndcg@{k}", f"NDCG@{k}", "{:.4f}"),
        (f"mrr@{k}", f"MRR@{k}", "{:.4f}"),
        (f"ild@{k}", f"ILD@{k}", "{:.4f}"),
    ]
    if categories:
        cols.append((f"category_coverage@{k}", f"categories@{k}", "{:.2f}"))
    cols += [
        ("catalog_coverage", "catalog cov.", "{:.3f}"),
        (f"novelty@{k}", f"novelty@{k}", "{:.2f}"),
        (f"long_tail_share@{k}", "long tail", "{:.3f}"),
    ]
    if categories:
        cols.append((f"exposure_gini_category@{k}", "Gini cat.", "{:.3f}"))
    cols += [
        (f"exposure_gini_item@{k}", "Gini items", "{:.3f}"),
        ("seconds", "seconds", "{:.1f}"),
    ]
    return cols


def _rows(
    results: Mapping[str, Mapping[str, float]], k: int, p2: bool
) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of one table (the same cells for the terminal and Markdown)."""
    categories = any(f"category_coverage@{k}" in m for m in results.values())
    cols = _metric_columns(k, p2, categories)
    header = ["method"] + [h for _, h, _ in cols]
    rows = [
        [name] + [fmt.format(m[key]) if key in m else "-" for key, _, fmt in cols]
        for name, m in results.items()
    ]
    return header, rows


def _print_table(
    console: Console, title: str, results: Mapping[str, Mapping[str, float]], k: int, p2: bool
) -> None:
    header, rows = _rows(results, k, p2)
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _markdown_table(results: Mapping[str, Mapping[str, float]], k: int, p2: bool) -> list[str]:
    header, rows = _rows(results, k, p2)
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _markdown(report: Mapping, k: int) -> str:
    p2 = report["protocol"] == "prequential"
    from evaluation.runner import report_header

    lines = report_header(report, f"{report['dataset']}: {report['protocol']} (k = {k})")
    for name, results in report["tables"].items():
        lines += [f"## {name}", "", *_markdown_table(results, k, p2), ""]
    lines += [
        "`n` = test cases; `seconds` = fit + every list + metrics for that method. "
        "ILD from pretrained all-MiniLM-L6-v2 reference embeddings. Catalog coverage = "
        "distinct recommended items / candidate items. Exposure = 1/log2(rank+1) per "
        "listed item, summed over the lists: `long tail` = its share on items outside "
        "the most popular 20% by training interactions; `Gini cat.` / `Gini items` = its "
        "Gini coefficient across categories (derived by k-means where the data has "
        "none, as the catalog does) / across candidate items (0 = equal). repeat-buy is "
        "left out where the user's own items are removed (it is then the popularity order).",
        "",
    ]
    return "\n".join(lines)


def _baselines(
    protocol: str, embeddings: ReferenceEmbeddings, names: Sequence[str] = ()
) -> dict[str, Recommender]:
    from evaluation import Content, default_methods

    p = "p2" if protocol == "prequential" else "p1"
    methods = default_methods(embeddings, p)
    methods.setdefault("content", Content(embeddings))
    if any(name in names for name in ("als", "bpr")):
        # The peers (implicit's ALS and BPR) load implicit only when asked for.
        from evaluation.peers import peer_methods

        methods.update(peer_methods(p))
    return methods


def run_evaluate(
    settings: Settings,
    protocol: str,
    methods: Sequence[str],
    mask: str = "both",
    k: int = 10,
    sweep: bool = False,
    out: Path | None = None,
    console: Console | None = None,
) -> dict:
    """Run the tables (and the sweep); print them and write them to ``out``."""
    from evaluation import (
        PrequentialReplay,
        ReferenceEmbeddings,
        evaluate_p1,
        evaluate_p2,
        leave_last_out,
    )
    from evaluation.runner import machine
    from model.encoder import Encoder

    console = console or _console()
    started = perf_counter()
    started_on = machine()
    dataset = _load(settings, console)
    out = out if out is not None else default_out(dataset, protocol)
    p2 = protocol == "prequential"
    if p2:
        replay = PrequentialReplay(dataset.interactions)
        universe = replay.item_ids
        counts = {"invoices": len(replay.baskets), "test baskets": int(replay.n_tests)}
    else:
        split = leave_last_out(dataset.interactions)
        universe = split.item_ids
        counts = {
            "users": len(split.user_ids),
            "items": len(split.item_ids),
            "interactions": split.n_interactions,
        }
    encoder = Encoder(settings.artifact, device=settings.device)
    # The reference embeddings are always the pretrained model's.
    embeddings = ReferenceEmbeddings(dataset.items, encoder if settings.artifact is None else None)
    with console.status("reference embeddings"):
        embeddings(universe)

    baselines = _baselines(protocol, embeddings, methods)
    chosen = {name: baselines[name] for name in methods if name != "streamrec"}
    system = None
    if "streamrec" in methods or sweep:
        system = _streamrec(dataset, universe, p2, settings, encoder, console)
    if "streamrec" in methods:
        chosen["streamrec"] = system

    tables: dict[str, dict] = {}
    if p2:
        for variant, results in evaluate_p2(
            dataset, chosen, k, replay=replay, embeddings=embeddings, progress=True
        ).items():
            name = f"P2 {variant}"
            tables[name] = {
                m: r for m, r in results.items() if variant == "all" or m not in _NOT_MASKED
            }
            _print_table(console, f"{dataset.name} {name}", tables[name], k, p2)
    else:
        for name, masked in MASKS[mask]:
            run = {m: v for m, v in chosen.items() if not (masked and m in _NOT_MASKED)}
            tables[f"P1 {name}"] = evaluate_p1(
                dataset, run, k, masked, split=split, embeddings=embeddings, progress=True
            )
            _print_table(console, f"{dataset.name} P1 {name}", tables[f"P1 {name}"], k, p2)

    report = {
        "dataset": dataset.name,
        "protocol": protocol,
        "k": k,
        "command": _command(),
        "counts": counts,
        "machine": started_on,
        "tables": tables,
        "settings": json.loads(settings.model_dump_json()) if system is not None else None,
    }
    report["seconds"] = perf_counter() - started
    report["machine_end"] = machine()
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2, default=_plain) + "\n")
    (out / "results.md").write_text(_markdown(report, k))
    console.print(f"[bold]tables[/] {report['seconds']:.0f} s -> {out}/results.{{json,md}}")

    if sweep and not p2:
        report["sweep"] = _sweep(dataset, split, system, mask, embeddings, k, tables, out, console)
    return report


def _streamrec(
    dataset: Dataset,
    universe: Sequence[str],
    p2: bool,
    settings: Settings,
    encoder: Encoder,
    console: Console,
) -> StreamrecSystem:
    from model.index import build_catalog
    from model.system import StreamrecSystem, universe_catalog
    from streams.catalog import Catalog

    with console.status("catalog (item vectors + index)"):
        if p2:
            path, _ = build_catalog(dataset, encoder, settings.cache_dir, progress=False)
        else:
            path = universe_catalog(dataset, universe, encoder, settings.cache_dir)
    console.print(f"[bold]catalog[/] {path}")
    return StreamrecSystem(dataset, Catalog.load(path), settings, progress=True)


def _sweep(
    dataset: Dataset,
    split: LeaveLastOut,
    system: StreamrecSystem,
    mask: str,
    embeddings: ReferenceEmbeddings,
    k: int,
    tables: Mapping[str, Mapping],
    out: Path,
    console: Console,
) -> dict:
    from evaluation.sweep import (
        best_within,
        long_tail_qualifying,
        long_tail_within,
        qualifying,
        sweep_p1,
        write_sweep,
    )

    name, masked = MASKS[mask][0]
    result = sweep_p1(
        dataset, system, split, mask=masked, embeddings=embeddings, k=k, progress=True
    )
    baselines = tables[f"P1 {name}"]
    title = f"{dataset.name} P1 {name}: rerankers x trade-offs (NDCG@{k} vs ILD@{k})"
    paths = write_sweep(out, result, baselines, title)
    ok, closest = qualifying(result)
    if ok:
        best = ok[0]
        console.print(
            f"[bold]sweep[/] {len(ok)} settings raise ILD@{k} >= 20% for <= 3% NDCG@{k}; "
            f"most diverse: {best['reranker']} {best['trade_off']:g} "
            f"(ILD {best['ild_change']:+.1%}, NDCG {best['ndcg_change']:+.1%})"
        )
    elif closest is not None:
        console.print(
            f"[bold]sweep[/] none raises ILD@{k} >= 20% for <= 3% NDCG@{k}; closest: "
            f"{closest['reranker']} {closest['trade_off']:g} "
            f"(ILD {closest['ild_change']:+.1%}, NDCG {closest['ndcg_change']:+.1%})"
        )
    best = best_within(result)
    if best is not None:
        console.print(
            f"[bold]sweep[/] most diverse within -3% NDCG@{k}: {best['reranker']} "
            f"{best['trade_off']:g} (ILD {best['ild_change']:+.1%}, "
            f"NDCG {best['ndcg_change']:+.1%})"
        )
    _print_long_tail(console, result, long_tail_qualifying(result), long_tail_within(result))
    console.print(f"[bold]sweep[/] {result['seconds']:.0f} s -> {', '.join(map(str, paths))}")
    return result


def _print_long_tail(
    console: Console, result: Mapping, ok: Sequence[Mapping], best: Mapping | None
) -> None:
    """The sweep's exposure lines: the relevance order's long-tail share and Gini, the
    settings that raise the share by 30% within 3% NDCG, the most long-tail one."""
    k = result["k"]
    ref = next(p for p in result["points"] if p["reranker"] == "relevance")
    if f"long_tail_share@{k}" not in ref:
        return
    gini = ref.get(f"exposure_gini_category@{k}")
    console.print(
        f"[bold]sweep[/] relevance order: long-tail share {ref[f'long_tail_share@{k}']:.3f}, "
        + (f"exposure Gini {gini:.3f} across categories, " if gini is not None else "")
        + f"{ref[f'exposure_gini_item@{k}']:.3f} across items"
    )
    if ok:
        top = ok[0]
        console.print(
            f"[bold]sweep[/] {len(ok)} settings raise the long-tail share >= 30% for <= 3% "
            f"NDCG@{k}; most: {top['reranker']} {top['trade_off']:g} (long tail "
            f"{top['long_tail_change']:+.1%}, NDCG {top['ndcg_change']:+.1%})"
        )
    elif best is not None:
        console.print(
            f"[bold]sweep[/] none raises the long-tail share >= 30% for <= 3% NDCG@{k}; "
            f"most within -3% NDCG: {best['reranker']} {best['trade_off']:g} (long tail "
            f"{best['long_tail_change']:+.1%}, NDCG {best['ndcg_change']:+.1%})"
        )


def run_through_kafka(
    settings: Settings, n_events: int, out: Path | None = None, console: Console | None = None
) -> ConsistencyReport:
    """The consistency check on the first ``n_events``; prints and writes the report."""
    from evaluation.consistency import check_consistency, write_consistency
    from model.encoder import Encoder
    from model.index import build_catalog

    console = console or _console()
    dataset = _load(settings, console)
    out = out if out is not None else default_out(dataset, "through-kafka")
    with console.status("catalog (item vectors + index)"):
        encoder = Encoder(settings.artifact, device=settings.device)
        path, _ = build_catalog(dataset, encoder, settings.cache_dir, progress=False)
    report = check_consistency(dataset, path, settings, n_events)
    title = f"{dataset.name}: first {report.events:,} events, Kafka pipeline vs in-process"
    table = Table(title=title, show_header=False)
    for label, value in report.rows():
        table.add_row(label, value)
    console.print(table)
    for m in report.mismatches:
        console.print(
            f"mismatch {m['event_id']}: kafka {m['kafka']} / in-process {m['in_process']}"
        )
    write_consistency(out, report, title)
    console.print(f"-> {out}/consistency.{{json,md}}")
    return report
