"""``streamrec bench model``: speed of the model paths on this machine's device.

Paths, all through the product's own ``Ranker`` (LM scoring + MMR):

- ``two-tower``: the reference; fp32 on the CPU, autocast on CUDA;
- ``two-tower int8``: dynamically quantised ``nn.Linear`` (CPU only);
- ``cross-encoder``: two-tower + the cross-encoder over the top ``cross_top_n``
  (when a cross-encoder folder is given).

Per path: item encodes/s (catalog titles, the item tower), rank requests/s and
p50/p99 latency per batch of ``batch_size`` requests, and each figure's ratio
to the reference measured in the same run (the machine may be shared: compare
ratios, not absolute figures, across runs). Requests are built from the
catalog, seeded: ``history`` recent items, ``candidates`` retrieved by the
streamed-embedding inner product, as the dataflow does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from model.encoder import Encoder
from model.finetune import cpu_threads
from model.ranker import Ranker
from streams.catalog import Catalog
from streams.contracts import RankRequest, encode_vector
from streams.settings import Settings

__all__ = ["PathResult", "bench_model", "bench_requests", "render_table"]


@dataclass
class PathResult:
    """One path's figures; ``*_ratio`` = this path / the reference path."""

    path: str
    device: str
    item_encodes_per_s: float | None
    requests_per_s: float
    p50_batch_ms: float
    p99_batch_ms: float
    encode_ratio: float | None = None
    requests_ratio: float | None = None
    p50_ratio: float | None = None


def bench_requests(
    catalog: Catalog, n: int, history: int = 10, candidates: int = 100, seed: int = 0
) -> list[RankRequest]:
    """``n`` seeded rank requests over ``catalog``: ``history`` recent items and a user
    vector at their mean, so the ranker retrieves ``candidates`` around them."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        recent = rng.choice(len(catalog), size=min(history, len(catalog)), replace=False)
        user = catalog.vectors[recent].mean(axis=0)
        user /= max(float(np.linalg.norm(user)), 1e-9)
        out.append(
            RankRequest(
                request_id=f"bench:{i}",
                user_id=f"u{i}",
                k=10,
                m=candidates,
                user_vector=encode_vector(user),
                recent_items=[catalog.item_ids[r] for r in recent.tolist()],
                arrival_ts=0.0,
                created_ts=0.0,
            )
        )
    return out


def _timed(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def _measure(
    name: str,
    ranker: Ranker,
    encoder: Encoder | None,
    titles: Sequence[str],
    requests: list[RankRequest],
    batch_size: int,
    warmup: int,
) -> PathResult:
    encodes = None
    if encoder is not None:
        (seconds,) = _timed(lambda: encoder.encode(titles), 1, warmup=1)
        encodes = len(titles) / seconds
    batches = [requests[s : s + batch_size] for s in range(0, len(requests), batch_size)]
    it = iter(batches * (warmup + 1))
    per_batch = _timed(lambda: ranker.rank(next(it)), len(batches), warmup)
    device = str(encoder.device) if encoder is not None else str(ranker.scorer.encoder.device)
    return PathResult(
        path=name,
        device=device,
        item_encodes_per_s=encodes,
        requests_per_s=len(requests) / sum(per_batch),
        p50_batch_ms=float(np.percentile(per_batch, 50) * 1000.0),
        p99_batch_ms=float(np.percentile(per_batch, 99) * 1000.0),
    )


def bench_model(
    settings: Settings,
    catalog: Catalog,
    cross_encoder: Path | None = None,
    batch_size: int = 64,
    batches: int = 10,
    items: int = 1024,
    warmup: int = 1,
) -> dict:
    """Measure every path on ``settings.device``; ratios against the first (reference)."""
    from model.ranker import build_ranker

    torch.set_num_threads(cpu_threads())
    requests = bench_requests(catalog, batch_size * batches, settings.history_items)
    titles = catalog.titles[:items]
    base = settings.model_copy(update={"quantize": "none", "cross_encoder": None})
    fp32 = Encoder(settings.artifact, device=settings.device)
    on_cuda = fp32.device.type == "cuda"
    paths: list[tuple[str, Ranker, Encoder | None]] = [
        (
            "two-tower " + ("autocast" if on_cuda else "fp32"),
            build_ranker(base, catalog, encoder=fp32),
            fp32,
        )
    ]
    if not on_cuda:
        int8 = Encoder(settings.artifact, device="cpu", quantize="int8")
        paths.append(("two-tower int8", build_ranker(base, catalog, encoder=int8), int8))
    if cross_encoder is not None:
        cross = base.model_copy(update={"cross_encoder": cross_encoder})
        name = f"cross-encoder top {settings.cross_top_n}"
        paths.append((name, build_ranker(cross, catalog, encoder=fp32), None))
    results = [
        _measure(name, ranker, enc, titles, requests, batch_size, warmup)
        for name, ranker, enc in paths
    ]
    ref = results[0]
    for r in results:
        if r.item_encodes_per_s is not None and ref.item_encodes_per_s:
            r.encode_ratio = r.item_encodes_per_s / ref.item_encodes_per_s
        r.requests_ratio = r.requests_per_s / ref.requests_per_s
        r.p50_ratio = r.p50_batch_ms / ref.p50_batch_ms
    return {
        "model": fp32.name,
        "catalog_items": len(catalog),
        "batch_size": batch_size,
        "batches": batches,
        "item_titles_encoded": len(titles),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "cuda": torch.cuda.get_device_name(0) if on_cuda else None,
        "reference": ref.path,
        "paths": [asdict(r) for r in results],
    }


def render_table(report: dict) -> object:
    """A rich Table of :func:`bench_model`'s report."""
    from rich.table import Table

    table = Table(
        title=f"model {report['model']}: batches of {report['batch_size']} requests, "
        f"{report['threads']} threads, load {report['load_avg_1_5_15']}"
        + (f", {report['cuda']}" if report["cuda"] else "")
    )
    headers = ["path", "device", "item enc/s", "x ref", "requests/s", "x ref", "p50 ms", "p99 ms"]
    for h in headers:
        table.add_column(h, justify="left" if h in ("path", "device") else "right")

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else fmt.format(v)

    for p in report["paths"]:
        table.add_row(
            p["path"],
            p["device"],
            num(p["item_encodes_per_s"], "{:,.0f}"),
            num(p["encode_ratio"], "{:.2f}"),
            num(p["requests_per_s"], "{:,.1f}"),
            num(p["requests_ratio"], "{:.2f}"),
            num(p["p50_batch_ms"], "{:,.0f}"),
            num(p["p99_batch_ms"], "{:,.0f}"),
        )
    return table
