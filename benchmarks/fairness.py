"""Exposure fairness on online-retail P1 (fusion ranker): every method and every reranker.

    .venv/bin/python benchmarks/fairness.py \
        --sequence-model .cache/streamrec/models/online-retail-6d4ddc3b0fee/current \
        --catalog .cache/streamrec/catalog-bed789863994-dd11322a53e6 \
        --out docs/eval/fusion/online-retail-leave-last-out

1. the peers (popularity, repeat-buy, item-kNN, content, ALS, BPR) through
   ``evaluate_p1`` (P1 leave-last-out, no mask), as ``streamrec evaluate`` runs them;
2. the reranker sweep (``sweep_p1``: one LM scoring per user, every reranker at
   every trade-off on the same scores), the product's default arm included;
3. writes ``fairness.json``, ``fairness.md`` (a table of every method's
   exposure Gini and long-tail share, then the sweep) and ``fairness.png``
   (NDCG@10 against ILD@10 and against the long-tail share).

Needs the ranker to hand ``Catalog.long_tail`` to the rerankers that read it
(``Reranker.uses_long_tail``); the script checks that first and stops if not.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from time import perf_counter

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Trade-offs per reranker (1 = the relevance order, measured once); 0.275 is the
#: fusion ranker's default arm (mmr_pinned).
GRID = (0.9, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3, 0.275, 0.2, 0.1)
PEERS = ("popularity", "repeat-buy", "item-knn", "content", "als", "bpr")


def _ranker_passes_long_tail() -> bool:
    """A one-list probe: does ``Ranker`` give a ``uses_long_tail`` reranker its flags?"""
    from model.ranker import Ranker
    from model.rerank import LongTailQuota
    from model.scoring import Scorer
    from streams.catalog import Catalog
    from streams.contracts import RankRequest

    class Fixed(Scorer):
        def score(self, requests):
            return [(np.arange(5), np.linspace(1.0, 0.0, 5)) for _ in requests]

    class Probe(LongTailQuota):
        seen = None

        def _rerank(self, scores, vectors, k, trade_off):
            Probe.seen = self._long_tail
            return super()._rerank(scores, vectors, k, trade_off)

    ids = [f"i{i}" for i in range(5)]
    catalog = Catalog(ids, ids, [None] * 5, np.eye(5, dtype=np.float32), np.arange(5.0))
    ranker = Ranker(Fixed(), Probe(), catalog, trade_off=0.5, model_version="probe")
    request = RankRequest.model_validate(
        {"request_id": "r", "user_id": "u", "k": 3, "arrival_ts": 0.0, "created_ts": 0.0}
    )
    ranker.rank([request])
    return Probe.seen is not None


def _methods_table(rows: dict[str, dict], k: int) -> list[str]:
    lines = [
        f"| method | NDCG@{k} | Recall@{k} | ILD@{k} | long-tail share | exposure Gini "
        "(categories) | exposure Gini (items) | catalog coverage |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in rows.items():
        gini_cat = m.get(f"exposure_gini_category@{k}", float("nan"))
        lines.append(
            f"| {name} | {m[f'ndcg@{k}']:.4f} | {m[f'recall@{k}']:.4f} | {m[f'ild@{k}']:.4f} | "
            f"{m[f'long_tail_share@{k}']:.3f} | {gini_cat:.3f} | "
            f"{m[f'exposure_gini_item@{k}']:.3f} | {m['catalog_coverage']:.3f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequence-model", type=Path, required=True)
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fairness")
    parser.add_argument("--fair-setting", type=float, default=None,
                        help="the long_tail trade-off the methods table shows (default: the "
                        "most long-tail setting within -3%% NDCG)")  # fmt: skip
    args = parser.parse_args()
    if not _ranker_passes_long_tail():
        sys.exit(
            "model/ranker.py does not pass Catalog.long_tail to the rerankers "
            "(reranker.rerank(..., long_tail=...)): apply that change first"
        )

    from corpus.datasets import load_dataset
    from evaluation import ReferenceEmbeddings, evaluate_p1, leave_last_out
    from evaluation.runner import machine
    from evaluation.sweep import long_tail_within, sweep_p1, write_sweep
    from model.rerank import RERANKERS
    from model.system import StreamrecSystem
    from streamrec.evaluate import _baselines
    from streams.catalog import Catalog
    from streams.settings import Settings

    started, started_on = perf_counter(), machine()
    extra = {"data": args.data} if args.data is not None else {}
    settings = Settings(sequence_model=args.sequence_model, catalog=args.catalog, **extra)
    dataset = load_dataset(settings.data)
    catalog = Catalog.load(settings.catalog)
    split = leave_last_out(dataset.interactions)
    embeddings = ReferenceEmbeddings(dataset.items)
    k = 10

    peers = _baselines("leave-last-out", embeddings, PEERS)
    tables = evaluate_p1(
        dataset, {n: peers[n] for n in PEERS}, k, split=split, embeddings=embeddings
    )
    system = StreamrecSystem(dataset, catalog, settings)
    default = (system.ranker.reranker.name, system.ranker.trade_off)
    sweep = sweep_p1(
        dataset, system, split, embeddings=embeddings, k=k, trade_offs=GRID,
        rerankers=tuple(RERANKERS),
    )  # fmt: skip
    by = {(p["reranker"], p["trade_off"]): p for p in sweep["points"]}
    best = long_tail_within(sweep)
    fair = args.fair_setting if args.fair_setting is not None else best["trade_off"]
    methods = dict(tables)
    methods["streamrec (relevance order)"] = by[("relevance", 1.0)]
    methods[f"streamrec (default arm, {default[0]} {default[1]:g})"] = by[default]
    methods[f"streamrec + long_tail {fair:g}"] = by[("long_tail", fair)]

    out = args.out
    title = f"{dataset.name} P1 no mask, fusion ranker: rerankers x trade-offs, exposure"
    paths = write_sweep(out, sweep, tables, title, stem="fairness")
    command = "python " + shlex.join([str(Path(sys.argv[0]))] + sys.argv[1:])
    seconds = perf_counter() - started
    head = [
        f"# {dataset.name}: exposure fairness (P1 leave-last-out, no mask, k = {k})",
        "",
        f"Command: `{command}`",
        "",
        f"Run time {seconds:.0f} s on {started_on['cpus']} CPUs (load average at start "
        f"{started_on['load_avg_1_5_15']}, at end {machine()['load_avg_1_5_15']}; the "
        "machine is shared). Data: users "
        f"{len(split.user_ids):,}, items {len(split.item_ids):,}, interactions "
        f"{split.n_interactions:,}; {sweep['n']:,} test users.",
        "",
        f"Fusion ranker: sequence model `{args.sequence_model}`, catalog "
        f"`{args.catalog}` (categories derived: spherical k-means of the pretrained "
        "item embeddings; the evaluation derives the same clusters for every method).",
        "",
        "Exposure: each listed item gets 1/log2(rank+1); long-tail share = the share on "
        "items outside the most popular 20% by training interactions; Gini = the Gini "
        "coefficient of the exposure across the categories / the candidate items (0 = "
        "equal, towards 1 = concentrated). The `long_tail` reranker reads the catalog's "
        "flag (outside the most popular 20% by the catalog's interaction counts).",
        "",
        "## Every method",
        "",
        *_methods_table(methods, k),
        "",
    ]
    body = paths[1].read_text().split("\n", 1)[1]  # the sweep's own title replaced
    paths[1].write_text("\n".join(head) + "\n## The sweep\n" + body)
    payload = json.loads(paths[0].read_text())
    payload.update(command=command, seconds=seconds, methods=methods, fair_setting=fair)
    paths[0].write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(_methods_table(methods, k)))
    print(f"{seconds:.0f} s -> {', '.join(map(str, paths))}")


if __name__ == "__main__":
    main()
