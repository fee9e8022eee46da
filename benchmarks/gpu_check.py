"""GPU path check: the sequence model and the LM encoder on CUDA against the CPU.

Needs no dataset (synthetic sequences of the online-retail size: 3,185 items,
4,095 users, about 95 items each; real MiniLM on generated titles), so it
runs on a lent GPU machine from the repository alone:

    python benchmarks/gpu_check.py [--epochs 2]

Prints, per device: sequence-model training windows/s (full softmax, AMP
bf16 on CUDA), serving latency of one 64-request batch, the whole fusion
ranker on one 64-request batch (the worker's path: sequence model, candidate
merge, features, both weight sets, MMR), and LM encodes/s; then the CUDA/CPU
ratios (each measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.encoder import Encoder
from model.fusion import FusionScorer
from model.ranker import Ranker
from model.rerank import MMR
from model.sequence import (
    SeqConfig,
    SeqRec,
    SequenceModel,
    TrainingData,
    _epoch_batches,
    _window,
    save,
)
from streams.catalog import Catalog
from streams.contracts import RankRequest


def _data(n_items: int, users: int, length: int, seed: int = 0) -> TrainingData:
    rng = np.random.default_rng(seed)
    seqs, times = [], []
    for _ in range(users):
        n = int(rng.integers(length // 2, length * 2))
        seqs.append(rng.integers(0, n_items, n))
        times.append(np.cumsum(rng.exponential(3600.0, n)))
    return TrainingData(seqs, times)


def _train_rate(device: str, data: TrainingData, vectors: np.ndarray, batches: int) -> float:
    cfg = SeqConfig(device=device)
    model = SeqRec(vectors, cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    plan = _epoch_batches(data, cfg, np.random.default_rng(0))[: batches + 1]
    dev = torch.device(device)
    seen, started = 0, None
    for i, (tokens, gaps, targets) in enumerate(plan):
        if i == 1:  # the first batch warms up kernels and allocators
            if dev.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        t, g, y = (torch.as_tensor(a, device=dev) for a in (tokens, gaps, targets))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = model(t, g) @ model.item_table().T
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 1:
            seen += len(tokens)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


@torch.no_grad()
def _serve_ms(device: str, data: TrainingData, vectors: np.ndarray, reps: int = 20) -> float:
    cfg = SeqConfig(device=device)
    model = SeqRec(vectors, cfg).to(device).eval()
    table = model.item_table()
    win = [
        _window(s, t, cfg.max_len)
        for s, t in zip(data.sequences[:64], data.times[:64], strict=True)
    ]
    tokens = torch.as_tensor(np.stack([w[0] for w in win]), device=device)
    gaps = torch.as_tensor(np.stack([w[1] for w in win]), device=device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        scores = torch.log_softmax(model.user(tokens, gaps, table) @ table.T, 1).cpu()
        times.append(time.perf_counter() - start)
    assert scores.shape == (64, len(vectors))
    return float(np.median(times[2:]) * 1000)


def _fusion_ms(device: str, data: TrainingData, vectors: np.ndarray, reps: int = 10) -> float:
    """Median ms to rank one batch of 64 requests with the worker's fusion ranker;
    half the requests filter seen items (the second weight set)."""
    n = len(vectors)
    ids = [f"i{j}" for j in range(n)]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    catalog = Catalog(
        item_ids=ids,
        titles=ids,
        categories=[f"c{j % 40}" for j in range(n)],
        vectors=unit,
        popularity=np.arange(n, 0, -1, dtype=np.float32),
    )
    with tempfile.TemporaryDirectory() as tmp:
        save(SeqRec(vectors, SeqConfig(device=device)), ids, Path(tmp), {})
        sequence = SequenceModel(Path(tmp), device=device)
    plain = {"bias": 0.0, "weights": {"seq": 1.0, "repeat_count": 0.5, "category": 0.3}}
    weights = {**plain, "masked": {"bias": 0.0, "weights": {"seq": 1.0, "covis": 0.5}}}
    ranker = Ranker(
        scorer=FusionScorer(catalog, None, sequence, weights),
        reranker=MMR(),
        catalog=catalog,
        trade_off=0.7,
        model_version="gpu-check",
    )
    requests = []
    for u, (seq, ts) in enumerate(zip(data.sequences[:64], data.times[:64], strict=True)):
        items = [ids[j] for j in seq[-50:].tolist()]
        requests.append(
            RankRequest(
                request_id=f"r{u}",
                user_id=f"u{u}",
                k=10,
                counts={} if u % 2 else {i: (2.0, float(ts[-1])) for i in items[-20:]},
                last_ts=float(ts[-1]),
                sequence=items,
                sequence_ts=[float(t) for t in ts[-50:]],
                exclude=items if u % 2 else [],
                filter_seen=bool(u % 2),
                category_mix={"c1": 2.0, "c2": 1.0},
                arrival_ts=float(ts[-1]),
                created_ts=float(ts[-1]),
            )
        )
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        lists = ranker.rank(requests)
        times.append(time.perf_counter() - start)
    assert len(lists) == 64 and all(len(x) == 10 for x in lists)
    return float(np.median(times[2:]) * 1000)


def _encode_rate(device: str, n: int = 1024) -> float:
    enc = Encoder(device=device)
    texts = [f"VINTAGE RED RETROSPOT MUG {i} ; JUMBO BAG PINK {i % 97}" for i in range(n)]
    enc.encode(texts[:64])
    start = time.perf_counter()
    enc.encode(texts)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", type=int, default=40, help="training batches timed per device")
    args = p.parse_args()
    vectors = np.random.default_rng(1).normal(size=(3185, 384)).astype(np.float32)
    data = _data(3185, 4095, 95)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report: dict = {"torch": torch.__version__}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    for d in devices:
        report[d] = {
            "train_windows_per_s": round(_train_rate(d, data, vectors, args.batches), 1),
            "serve_batch64_ms": round(_serve_ms(d, data, vectors), 2),
            "fusion_rank_batch64_ms": round(_fusion_ms(d, data, vectors), 2),
        }
        try:
            report[d]["lm_encodes_per_s"] = round(_encode_rate(d), 1)
        except Exception as exc:  # e.g. a GPU machine without the MiniLM package
            report[d]["lm_encodes_per_s"] = f"not measured: {type(exc).__name__}: {exc}"[:160]
    if "cuda" in report:
        report["cuda_over_cpu"] = {
            "train": round(
                report["cuda"]["train_windows_per_s"] / report["cpu"]["train_windows_per_s"], 1
            ),
            "serve": round(
                report["cpu"]["serve_batch64_ms"] / report["cuda"]["serve_batch64_ms"], 1
            ),
            "fusion_rank": round(
                report["cpu"]["fusion_rank_batch64_ms"] / report["cuda"]["fusion_rank_batch64_ms"],
                1,
            ),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
