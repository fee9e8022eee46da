"""Quality of serving variants of one model on P1 (online-retail by default).

The user states are fed once (StreamrecSystem over the model's P1 catalog);
each variant then swaps only the ranker, so variants are compared on the same
states and, with ``--users``, on the same seeded user subsample:

- ``fp32``: the two-tower scorer as served (the reference);
- ``int8``: the same with ``--quantize int8`` (query tower int8, catalog fp32);
- ``cross``: two-tower + the cross-encoder over the top ``--cross-top-n``.

Each at every ``--trade-offs`` value of MMR (1 = relevance order). No mask.

    .venv/bin/python benchmarks/model_variants.py --artifact artifacts/current \\
        --variants fp32,cross --cross-encoder artifacts/cross --users 1000
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from time import perf_counter

import numpy as np

from corpus.datasets import load_dataset
from evaluation import ReferenceEmbeddings, evaluate_p1, leave_last_out
from model.encoder import Encoder
from model.ranker import build_ranker
from model.system import StreamrecSystem, universe_catalog
from streams.catalog import Catalog
from streams.settings import Settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--artifact", type=Path, default=None, help="default: pretrained")
    ap.add_argument("--variants", default="fp32,int8")
    ap.add_argument("--cross-encoder", type=Path, default=None)
    ap.add_argument("--cross-top-n", type=int, default=20)
    ap.add_argument("--trade-offs", default="1.0")
    ap.add_argument("--users", type=int, default=0, help="seeded subsample (0 = every user)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    args = ap.parse_args()

    started = perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    base = Settings(**({"data": args.data} if args.data else {}), artifact=args.artifact)
    dataset = load_dataset(base.data)
    split = leave_last_out(dataset.interactions)
    embeddings = ReferenceEmbeddings(dataset.items)
    encoder = Encoder(base.artifact, device=base.device)
    catalog = Catalog.load(universe_catalog(dataset, split.item_ids, encoder, base.cache_dir))
    n = len(split.user_ids)
    users = None
    if args.users:
        rng = np.random.default_rng(args.seed)
        users = np.sort(rng.choice(n, size=min(args.users, n), replace=False))
    system = StreamrecSystem(dataset, catalog, base, progress=True)
    results: dict[str, dict] = {}
    for variant in args.variants.split(","):
        update: dict[str, object] = {}
        if variant == "int8":
            update["quantize"] = "int8"
        elif variant == "cross":
            update |= {"cross_encoder": args.cross_encoder, "cross_top_n": args.cross_top_n}
        for trade_off in (float(t) for t in args.trade_offs.split(",")):
            s = base.model_copy(update={**update, "mmr_lambda": trade_off})
            system.ranker = build_ranker(s, catalog)
            name = f"{variant} mmr {trade_off:g}"
            (metrics,) = evaluate_p1(
                dataset,
                {name: system},
                split=split,
                embeddings=embeddings,
                users=users,
                progress=True,
            ).values()
            results[name] = metrics
            print(
                f"{name}: n {metrics['n']:.0f} NDCG@10 {metrics['ndcg@10']:.4f} "
                f"Recall@10 {metrics['recall@10']:.4f} ILD@10 {metrics['ild@10']:.4f} "
                f"({metrics['seconds']:.0f} s)",
                flush=True,
            )
    report = {
        "data": dataset.name,
        "model": encoder.name,
        "users": "all" if users is None else f"{len(users)} seeded (seed {args.seed})",
        "protocol": "P1 no mask",
        "results": results,
        "seconds": round(perf_counter() - started, 1),
        "load_avg_start_end": [load_start, [round(x, 2) for x in os.getloadavg()]],
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
