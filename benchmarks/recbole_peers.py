"""GRU4Rec and SASRec (RecBole 1.2.1) as peers, on the harness's own splits and metrics.

Runs in the optional environment that ``make recbole-env`` builds (``.venv-recbole``:
recbole, a pinned CPU torch, and streamrec installed without its dependencies)::

    nice -n 10 .venv-recbole/bin/python benchmarks/recbole_peers.py \\
        --data /work/shared/data/online-retail --protocol leave-last-out --max-minutes 10

Only RecBole's *models* are used (their layers, losses and ``full_sort_predict``);
RecBole's data pipeline, splits and evaluator are not, so the figures come from
the same split and the same metric code as ``streamrec evaluate``:

- P1 (``--protocol leave-last-out``): the split is
  :func:`corpus.protocols.leave_last_out`. Training sequences are the
  validation fold's histories (every user's items without the last two), as
  RecBole's own leave-one-out does: each prefix (its last ``max_seq_length``
  items) predicts the next item, cross-entropy over every item. After each
  epoch the validation fold (second-to-last item) is scored; the best epoch's
  weights are kept, training stops after ``--patience`` epochs without a better
  validation NDCG@10, at ``--epochs``, or at ``--max-minutes``. The test fold is
  then scored through :func:`evaluation.runner.evaluate_p1`, with each
  user's ``fold.history(u)`` (the validation item included, as input only) as
  the sequence, no mask and with the history mask.
- P2 (``--protocol prequential``, online-retail): trained once on the lines
  before 2011-11-01 (per user in time order, consecutive duplicates
  collapsed; each user's last item held out for the same early stopping),
  then replayed through :func:`evaluation.runner.evaluate_p2`: every test
  basket is scored from the user's items bought strictly before it (lines fed
  by the replay), items the model never saw skipped; items it never saw
  cannot be recommended. A user with no known item gets the training
  popularity.

Each dataset and protocol writes ``<out>/<dataset>-<protocol>-recbole.json`` and
``.md`` and prints the table. ILD is left out (the reference embeddings need
the MiniLM encoder, which this environment does not install); every other
column is the harness's own.

Compatibility shims for RecBole 1.2.1 with numpy 2 and torch 2.6+:

- RecBole's ``Config`` aliases ``np.float_``, ``np.complex_`` and ``np.unicode_``,
  removed in numpy 2.0: :func:`_shims` puts them back before recbole is imported.
- Importing ``recbole.model.sequential_recommender`` imports SINE, whose module
  calls ``torch.autograd.set_detect_anomaly(True)`` for the whole process: every
  backward op is then checked for NaNs, which made a SASRec step 1.5x slower
  here. :func:`_build` turns it off again after the import.
- ``torch.load``'s ``weights_only=True`` default (torch 2.6) breaks RecBole's
  checkpoint loading, but this script never loads a checkpoint (the best
  weights are kept in memory), so it needs no shim for that.

CPU budget: RecBole's training is slow on 2 shared cores (SASRec: about 4 s per
2,048-instance step in fp32, 2 s with ``--bf16``; an online-retail epoch is 186
steps), so ``--max-minutes`` usually ends the training before ``--epochs``, and
``--eval-steps`` validates inside an epoch so that the weights kept are the best
seen, not just the last. ``--bf16`` trains under CPU autocast (bfloat16 matrix
products, float32 weights, optimizer and loss); scoring is always float32.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from time import perf_counter

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpus.datasets import Dataset, load_dataset  # noqa: E402
from corpus.protocols import Events, PrequentialReplay, leave_last_out  # noqa: E402
from evaluation.baselines import Recommender  # noqa: E402
from evaluation.runner import evaluate_p1, evaluate_p2, machine, report_header  # noqa: E402

MODELS = {"gru4rec": "GRU4Rec", "sasrec": "SASRec"}
#: RecBole's defaults for both models, except GRU4Rec's hidden size (64, not 128).
HYPER = {
    "SASRec": {
        "n_layers": 2,
        "n_heads": 2,
        "hidden_size": 64,
        "inner_size": 256,
        "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5,
        "loss_type": "CE",
    },
    "GRU4Rec": {
        "embedding_size": 64,
        "hidden_size": 64,
        "num_layers": 1,
        "dropout_prob": 0.3,
        "loss_type": "CE",
    },
}
P2_START = "2011-11-01"


def _shims() -> None:
    """numpy 2 removed aliases that RecBole 1.2.1's ``Config`` still reads."""
    for old, new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, old):
            setattr(np, old, new)


def _sequences(users: np.ndarray, items: np.ndarray, n_users: int) -> list[np.ndarray]:
    """Per user, their items in the given (time) order, consecutive duplicates collapsed."""
    order = np.argsort(users, kind="stable")
    u, i = users[order], items[order]
    keep = np.ones(len(u), dtype=bool)
    keep[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    u, i = u[keep], i[keep]
    bounds = np.searchsorted(u, np.arange(n_users + 1))
    return [i[bounds[n] : bounds[n + 1]] for n in range(n_users)]


class _Instances:
    """Training instances: every prefix of every sequence predicts the next item."""

    def __init__(self, sequences: list[np.ndarray], max_len: int) -> None:
        lengths = np.array([len(s) for s in sequences])
        self.items = np.concatenate([s for s in sequences if len(s)] or [np.zeros(0, np.int64)])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        # Instance = (start of the user's sequence, position of the target).
        self.start = np.concatenate(
            [np.full(n - 1, s) for s, n in zip(starts, lengths, strict=True) if n > 1]
        )
        self.target = np.concatenate(
            [np.arange(s + 1, s + n) for s, n in zip(starts, lengths, strict=True) if n > 1]
        )
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.target)

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Left-aligned, zero-padded (RecBole's layout) inputs, lengths and targets.

        The batch is as wide as its longest input, not ``max_len``: with left
        alignment the trailing padding changes no output (SASRec's causal mask
        and GRU4Rec's gather at ``length - 1`` never reach it), and short
        prefixes then cost less.
        """
        end = self.target[rows]
        length = np.minimum(end - self.start[rows], self.max_len)
        width = int(length.max())
        idx = (end - length)[:, None] + np.arange(width)[None, :]
        valid = np.arange(width)[None, :] < length[:, None]
        seq = np.where(valid, self.items[np.minimum(idx, len(self.items) - 1)], 0)
        return seq, length, self.items[end]


class RecBolePeer(Recommender):
    """A trained RecBole sequential model behind the harness's ``Recommender`` API.

    ``fit``/``update`` only record each user's item sequence (consecutive
    duplicates collapsed); ``scores`` runs ``full_sort_predict`` on the last
    ``max_len`` known items. ``vocab[code]`` is the model id of a harness item
    code (0 = unknown: RecBole's id 0 is padding); unknown items score -inf.
    """

    def __init__(self, model, vocab: np.ndarray, popularity: np.ndarray, max_len: int) -> None:
        self.model, self.vocab, self.max_len = model, vocab, max_len
        self.popularity = popularity  # per harness code: the fallback for empty sequences

    def _reset(self) -> None:
        self._seqs: list[list[int]] = [[] for _ in self.user_ids]

    def update(self, events: Events) -> None:
        for u, i in zip(events.users.tolist(), events.items.tolist(), strict=True):
            mid = int(self.vocab[i])
            seq = self._seqs[u]
            if mid and (not seq or seq[-1] != mid):
                seq.append(mid)

    def scores(self, users: np.ndarray, now: float | None = None) -> np.ndarray:
        import torch

        seqs = [self._seqs[u][-self.max_len :] for u in users.tolist()]
        out = np.tile(self.popularity, (len(users), 1)).astype(np.float64)
        rows = [r for r, s in enumerate(seqs) if s]
        if rows:
            batch = np.zeros((len(rows), self.max_len), dtype=np.int64)
            for n, r in enumerate(rows):
                batch[n, : len(seqs[r])] = seqs[r]
            lengths = np.array([len(seqs[r]) for r in rows])
            self.model.eval()
            with torch.no_grad():
                logits = self.model.full_sort_predict(_interaction(self.model, batch, lengths))
            logits = logits.double().numpy()
            known = self.vocab > 0
            scored = np.full((len(rows), len(self.vocab)), -np.inf)
            scored[:, known] = logits[:, self.vocab[known]]
            out[rows] = scored
        return out


def _interaction(model, seq: np.ndarray, lengths: np.ndarray, targets=None) -> dict:
    import torch

    batch = {
        model.ITEM_SEQ: torch.from_numpy(seq),
        model.ITEM_SEQ_LEN: torch.from_numpy(lengths.astype(np.int64)),
    }
    if targets is not None:
        batch[model.POS_ITEM_ID] = torch.from_numpy(targets.astype(np.int64))
    return batch


class _Vocabulary:
    """RecBole's dataset interface as far as the models read it: ``num(field)``."""

    def __init__(self, n_ids: int) -> None:
        self.n_ids = n_ids

    def num(self, field: str) -> int:
        return self.n_ids


class _NoVectors:
    """Stands in for the reference embeddings: no vectors, so no ILD."""

    def __call__(self, item_ids):
        return None


def _build(name: str, n_ids: int, args: argparse.Namespace):
    """A fresh RecBole model: RecBole's config defaults, our overrides, its seed."""
    from recbole.config import Config
    from recbole.model.sequential_recommender import GRU4Rec, SASRec
    from recbole.utils import init_seed

    config = Config(
        model=name,
        dataset="streamrec",
        config_dict={
            **HYPER[name],
            "MAX_ITEM_LIST_LENGTH": args.max_len,
            "train_neg_sample_args": None,
            "device": "cpu",
            "use_gpu": False,
            "seed": args.seed,
            "reproducibility": True,
            "data_path": str(Path(args.out) / ".recbole-unused"),
        },
    )
    import torch

    # recbole.model.sequential_recommender imported SINE, which switched anomaly
    # detection on process-wide (a NaN check after every backward op).
    torch.autograd.set_detect_anomaly(False)
    init_seed(args.seed, True)
    cls = {"SASRec": SASRec, "GRU4Rec": GRU4Rec}[name]
    return cls(config, _Vocabulary(n_ids)), config


def _train(
    name: str,
    sequences: list[np.ndarray],
    n_ids: int,
    validate,
    args: argparse.Namespace,
    log: list[dict],
):
    """Train on ``sequences`` (model ids), keep the best epoch by ``validate(model)``."""
    import torch

    model, config = _build(name, n_ids, args)
    data = _Instances(sequences, args.max_len)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    steps_per_epoch = math.ceil(len(data) / args.batch_size)
    deadline = perf_counter() + args.max_minutes * 60
    best, best_state, best_at, since_best = -1.0, None, 0.0, 0
    started, step, total, n_loss = perf_counter(), 0, 0.0, 0
    stop = False
    for _ in range(args.epochs):
        order = rng.permutation(len(data))
        for first in range(0, len(order), args.batch_size):
            model.train()
            seq, lengths, targets = data.batch(order[first : first + args.batch_size])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = model.calculate_loss(_interaction(model, seq, lengths, targets))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step, total, n_loss = step + 1, total + loss.item(), n_loss + 1
            out_of_time = perf_counter() > deadline
            end_of_epoch = first + args.batch_size >= len(order)
            if not (end_of_epoch or out_of_time or step % args.eval_steps == 0):
                continue
            metric = validate(model)
            entry = {
                "epochs": round(step / steps_per_epoch, 3),
                "step": step,
                "loss": total / n_loss,
                "valid_ndcg@10": metric,
                "seconds": perf_counter() - started,
            }
            total, n_loss = 0.0, 0
            log.append(entry)
            print(f"  {name} {json.dumps(entry)}", flush=True)
            if metric > best:
                best, best_at, since_best = metric, entry["epochs"], 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
            if out_of_time or since_best >= args.patience:
                stop = True
                break
        if stop:
            break
    model.load_state_dict(best_state)
    model.eval()
    return model, {
        "best_epochs": best_at,
        "epochs_run": round(step / steps_per_epoch, 3),
        "steps": step,
        "instances": len(data),
        "train_seconds": perf_counter() - started,
        "config": {k: config[k] for k in HYPER[name]} | {"MAX_ITEM_LIST_LENGTH": args.max_len},
    }


def _popularity(sequences: list[np.ndarray], vocab_codes: np.ndarray, n_codes: int) -> np.ndarray:
    """Per harness code, its count in the training sequences: the order given to a
    user with no known item (a row is all model scores or all popularity)."""
    counts = np.zeros(n_codes)
    model_counts = np.bincount(np.concatenate(sequences), minlength=len(vocab_codes) + 1)
    counts[vocab_codes] = model_counts[1:]
    return counts


def run_p1(dataset: Dataset, args: argparse.Namespace) -> dict:
    split = leave_last_out(dataset.interactions)
    n_items = len(split.item_ids)
    vocab = np.arange(1, n_items + 1)  # harness code c -> model id c + 1
    codes = np.arange(n_items)
    valid = split.valid
    train_seqs = [valid.history(u) + 1 for u in range(len(split.user_ids))]
    popularity = _popularity(train_seqs, codes, n_items)
    results: dict = {"no mask": {}, "history mask": {}}
    runs: dict = {}
    for key in args.models:
        name = MODELS[key]
        log: list[dict] = []

        def validate(model, name=name) -> float:
            peer = RecBolePeer(model, vocab, popularity, args.max_len)
            res = evaluate_p1(
                dataset, {name: peer}, 10, False, split=split, fold="valid", embeddings=_NoVectors()
            )
            return res[name]["ndcg@10"]

        model, info = _train(name, train_seqs, n_items + 1, validate, args, log)
        peer = RecBolePeer(model, vocab, popularity, args.max_len)
        for table, masked in (("no mask", False), ("history mask", True)):
            res = evaluate_p1(
                dataset, {name: peer}, 10, masked, split=split, embeddings=_NoVectors()
            )
            results[table][name] = res[name]
        runs[name] = info | {"log": log}
    counts = {
        "users": len(split.user_ids),
        "items": n_items,
        "interactions": split.n_interactions,
    }
    return {"tables": {f"P1 {t}": r for t, r in results.items()}, "runs": runs, "counts": counts}


def run_p2(dataset: Dataset, args: argparse.Namespace) -> dict:
    replay = PrequentialReplay(dataset.interactions, P2_START)
    cutoff = replay.start
    users, items, ts = [], [], []
    for b in replay.baskets:
        if b.time < cutoff:
            users.append(b.lines.users)
            items.append(b.lines.items)
            ts.append(b.lines.ts)
    u, i, t = np.concatenate(users), np.concatenate(items), np.concatenate(ts)
    order = np.argsort(t, kind="stable")  # baskets in time order, lines in source order
    u, i = u[order], i[order]
    known = np.unique(i)
    vocab = np.zeros(len(replay.item_ids), dtype=np.int64)
    vocab[known] = np.arange(1, len(known) + 1)
    seqs = [vocab[s] for s in _sequences(u, i, len(replay.user_ids))]
    # Early stopping inside the training data: each user's last item (>= 3 items).
    train_seqs = [s[:-1] if len(s) >= 3 else s for s in seqs]
    held = [(n, s[-1]) for n, s in enumerate(seqs) if len(s) >= 3]
    popularity = _popularity(seqs, known, len(replay.item_ids))

    def validate(model) -> float:
        from evaluation.quality import ndcg_at_k

        peer = RecBolePeer(model, vocab, popularity, args.max_len)
        peer._seqs = [list(s) for s in train_seqs]
        peer.user_ids, peer.n_items = replay.user_ids, len(replay.item_ids)
        values = []
        for first in range(0, len(held), 512):
            part = held[first : first + 512]
            ranked = peer.recommend_many(np.array([n for n, _ in part]), 10)
            # Targets as harness codes: model id -> code.
            values += [ndcg_at_k(r, [known[m - 1]]) for r, (_, m) in zip(ranked, part, strict=True)]
        return float(np.mean(values))

    results: dict = {"all": {}, "new": {}}
    runs: dict = {}
    for key in args.models:
        name = MODELS[key]
        log: list[dict] = []
        model, info = _train(name, train_seqs, len(known) + 1, validate, args, log)
        peer = RecBolePeer(model, vocab, popularity, args.max_len)
        res = evaluate_p2(dataset, {name: peer}, 10, replay=replay, embeddings=_NoVectors())
        for variant in results:
            results[variant][name] = res[variant][name]
        runs[name] = info | {"log": log, "training_lines": int(len(u))}
    counts = {"invoices": len(replay.baskets), "test baskets": int(replay.n_tests)}
    return {"tables": {f"P2 {v}": r for v, r in results.items()}, "runs": runs, "counts": counts}


_COLUMNS = {
    False: [("n", "n", "{:,.0f}"), ("recall@10", "Recall/HR@10", "{:.4f}")],
    True: [
        ("n", "n", "{:,.0f}"),
        ("hr@10", "HR@10", "{:.4f}"),
        ("recall@10", "Recall@10", "{:.4f}"),
    ],
}
_TAIL = [
    ("ndcg@10", "NDCG@10", "{:.4f}"),
    ("mrr@10", "MRR@10", "{:.4f}"),
    ("catalog_coverage", "catalog cov.", "{:.3f}"),
    ("novelty@10", "novelty@10", "{:.2f}"),
    ("seconds", "seconds (lists)", "{:.1f}"),
]


def _markdown(report: dict) -> str:
    p2 = report["protocol"] == "prequential"
    cols = _COLUMNS[p2] + _TAIL
    versions = report["versions"]
    lines = report_header(
        report,
        f"{report['dataset']}: {report['protocol']}, RecBole peers (k = 10)",
        f" recbole {versions['recbole']}, torch {versions['torch']}.",
    )
    for table, results in report["tables"].items():
        lines += [f"## {table}", "", "| method | " + " | ".join(h for _, h, _ in cols) + " |"]
        lines.append("|---" + "|---:" * len(cols) + "|")
        for name, m in results.items():
            cells = [fmt.format(m[k]) if k in m else "-" for k, _, fmt in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Training", ""]
    lines += [
        "| method | instances | steps | epochs run | best at (epochs, validation) "
        "| train seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["runs"].items():
        lines.append(
            f"| {name} | {r['instances']:,} | {r['steps']:,} | {r['epochs_run']:.2f} | "
            f"{r['best_epochs']:.2f} | {r['train_seconds']:.0f} |"
        )
    lines += [
        "",
        "`seconds (lists)` = every list + metrics, training excluded (train seconds "
        "include the validations). Cross-entropy over every item, Adam; batch size, "
        "learning rate, bf16 and the training log in the JSON. Validation = NDCG@10 on "
        "each user's held-out item every `--eval-steps` steps and at each epoch's end; "
        "the best validated weights are the ones scored. ILD is not computed here (no "
        "MiniLM encoder in this environment).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder (corpus.datasets)")
    parser.add_argument(
        "--protocol", choices=("leave-last-out", "prequential"), default="leave-last-out"
    )
    parser.add_argument("--models", default="gru4rec,sasrec", help="comma-separated")
    parser.add_argument("--epochs", type=int, default=50, help="at most this many epochs")
    parser.add_argument(
        "--max-minutes", type=float, default=10.0, help="training budget per model (minutes)"
    )
    parser.add_argument(
        "--patience", type=int, default=3, help="validations without a better NDCG@10"
    )
    parser.add_argument(
        "--eval-steps", type=int, default=50, help="validate every N steps (and per epoch)"
    )
    parser.add_argument("--bf16", action="store_true", help="train under bfloat16 autocast")
    parser.add_argument("--batch-size", type=int, default=2048, help="RecBole's default")
    parser.add_argument("--lr", type=float, default=0.001, help="RecBole's default")
    parser.add_argument("--max-len", type=int, default=50, help="MAX_ITEM_LIST_LENGTH")
    parser.add_argument("--seed", type=int, default=2020, help="RecBole's default seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/eval/peers")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}; known: {sorted(MODELS)}")

    _shims()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import recbole
    import torch

    torch.set_num_threads(args.threads)
    started, started_on = perf_counter(), machine()
    dataset = load_dataset(args.data)
    print(f"{dataset.name} {args.protocol}: {args.models}", flush=True)
    run = run_p2 if args.protocol == "prequential" else run_p1
    report = {
        "dataset": dataset.name,
        "protocol": args.protocol,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "args": vars(args),
        "versions": {"recbole": recbole.__version__, "torch": torch.__version__},
        "machine": started_on,
        "finished": None,
        **run(dataset, args),
    }
    report["seconds"] = perf_counter() - started
    report["machine_end"] = machine()
    report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{dataset.name.replace(':', '-')}-{args.protocol}-recbole"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    text = _markdown(report)
    stem.with_suffix(".md").write_text(text)
    print(text)
    print(f"-> {stem}.json, {stem}.md")
    return report


if __name__ == "__main__":
    main()
