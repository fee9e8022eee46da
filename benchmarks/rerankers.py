"""Reranker speed: M candidates -> k items, median over many lists.

    python benchmarks/rerankers.py [--m 200] [--k 10] [--dim 384] [--lists 2000]

Prints each reranker's median and p99 time per list and its ratio to the
relevance-only top-k measured in the same run (so figures from different
machines compare as ratios). Inputs are float32 unit vectors like the
catalog's and scores like the LM's cosines; categories for the
category-aware rerankers come from 20 random groups.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from model.rerank import RERANKERS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--lists", type=int, default=2000)
    ap.add_argument("--trade-off", type=float, default=0.7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    problems = []
    for _ in range(args.lists):
        v = rng.normal(size=(args.m, args.dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        cats = [f"c{c}" for c in rng.integers(0, 20, args.m)]
        mix = {f"c{c}": float(w) for c, w in enumerate(rng.random(20))}
        problems.append((rng.uniform(0.2, 0.8, args.m).astype(np.float32), v, cats, mix))
    rows = []
    for name, cls in RERANKERS.items():
        reranker = cls()
        times = []
        for scores, vectors, cats, mix in problems:
            t = time.perf_counter()
            reranker.rerank(scores, vectors, args.k, args.trade_off, cats, mix)
            times.append(time.perf_counter() - t)
        rows.append((name, np.median(times) * 1e3, np.percentile(times, 99) * 1e3))
    ref = rows[0][1]
    print(
        f"M={args.m} -> k={args.k}, dim={args.dim}, trade-off={args.trade_off}, {args.lists} lists"
    )
    print(f"{'reranker':<14}{'median ms':>11}{'p99 ms':>9}{'x relevance':>13}")
    for name, med, p99 in rows:
        print(f"{name:<14}{med:>11.3f}{p99:>9.3f}{med / ref:>13.1f}")


if __name__ == "__main__":
    main()
