"""Fine-tune the encoder on interaction sequences: ``streamrec finetune``.

Data. Pairs come from the P1 split (``corpus.protocols``) and only
from its training part: each user's history without the last two items (the
validation fold's history), so neither the validation nor the test target is
ever trained on. For every position of a history, the context is what the
worker's user tower would read there: the recent-items window of
``streams.state.UserState`` (``recent_n`` events, distinct, newest first),
turned into text by ``model.scoring.history_text`` (``history_items`` titles
joined by `` ; ``); the target is the next item's title.

Model. One encoder with shared weights embeds both sides (the worker uses one
encoder for the history query and the catalog), mean-pooled and
L2-normalised, as ``model.encoder.Encoder`` does at inference.

Loss, per batch::

    (1 - alpha) * InfoNCE(queries, distinct targets, temperature)
        + alpha * log mean_{i<j} exp(-2 * ||v_i - v_j||^2)

InfoNCE scores each query against the batch's distinct target items (in-batch
negatives); a target that occurs twice in a batch is one column, so it is
never a negative for a query whose positive it is.

Diversity term: the uniformity loss of Wang & Isola (2020) over the batch's
distinct item embeddings. InfoNCE alone pulls co-purchased items together and
lets whole product families collapse into tight clusters (online-retail has
dozens of near-identical "... RETROSPOT" or "... T-LIGHT HOLDER" titles), so a
relevance-ranked list fills with one family. Uniformity pushes every pair of
items apart in proportion to how close they are (the Gaussian potential acts
mostly on near neighbours), which spreads the item space: similar but
different products separate while the co-purchase alignment stays. It needs
no extra data, is cheap (one ``pdist`` per batch), and, unlike a penalty on
the similarity of a user's positives, it does not fight the relevance signal
for users whose purchases really are all alike.

Validation: NDCG@10 (and Recall@10) of the validation target (each user's
second-to-last item) for ``val_users`` sampled users, ranked over every item
by the current model (item titles and histories re-encoded), before training
and after every epoch; the best epoch's weights are kept, and training stops
after ``patience`` epochs without improvement. An epoch is ``epoch_pairs``
pairs drawn afresh (seeded) from all of them; a full pass over the ~385k
online-retail pairs does not fit a CPU budget.

Resuming: ``out/checkpoint`` holds the current and best weights, the
optimizer, scheduler and RNG states, the step, epoch and position, the
metrics so far and the training seconds; ``resume=True`` continues from it.

The artifact (``model.artifact``): ``out/<version>/{model,catalog,manifest.json}``
and ``out/current`` pointing at it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from tqdm.auto import tqdm

from corpus.datasets import load_dataset
from corpus.metrics import target_metrics
from corpus.protocols import LeaveLastOut, leave_last_out
from model.artifact import MANIFEST, new_version, publish, resolve_artifact
from model.encoder import Encoder, default_model_dir, model_fingerprint
from model.index import make_catalog
from model.scoring import history_text
from streams.settings import Settings
from streams.state import UserState

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "Pairs",
    "CheckpointMismatch",
    "training_pairs",
    "validation_cases",
    "info_nce",
    "uniformity",
    "rank_metrics",
    "finetune",
    "cpu_threads",
]

CHECKPOINT = "checkpoint"


class CheckpointMismatch(ValueError):
    """``--resume`` found a checkpoint of another dataset or base model."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters; the defaults fit a 2-core CPU in under 20 minutes."""

    alpha: float = 0.1
    temperature: float = 0.05
    epochs: int = 12
    epoch_pairs: int = 4096
    max_steps: int = 0
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    seed: int = 13
    val_users: int = 300
    patience: int = 3
    max_minutes: float = 15.0
    max_length: int = 96
    history_items: int = Settings.model_fields["history_items"].default
    recent_n: int = Settings.model_fields["recent_n"].default
    device: str = "auto"
    threads: int = 0


@dataclass(frozen=True)
class Pairs:
    """Contexts (history texts) and their next items (codes into the split's items)."""

    contexts: list[str]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class FinetuneResult:
    """The published version folder and its manifest."""

    path: Path
    version: str
    manifest: dict = field(default_factory=dict)


def cpu_threads() -> int:
    """The cores this process may run on (not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _context(
    window: Sequence[str], title_of: Callable[[str], str | None], history_items: int
) -> str | None:
    """What the worker's user tower reads after ``window`` (the user's last events)."""
    recent = UserState(recent=deque(window)).recent_items()
    return history_text(recent, title_of, history_items)


def training_pairs(
    split: LeaveLastOut, title_of: Callable[[str], str | None], cfg: FinetuneConfig
) -> Pairs:
    """(context, next item) for every position of every validation-fold history."""
    ids = split.item_ids
    contexts: list[str] = []
    targets: list[int] = []
    for user in range(len(split.user_ids)):
        seq = split.valid.history(user)
        names = [ids[c] for c in seq]
        for t in range(1, len(seq)):
            text = _context(names[max(0, t - cfg.recent_n) : t], title_of, cfg.history_items)
            if text is not None:
                contexts.append(text)
                targets.append(int(seq[t]))
    return Pairs(contexts, np.asarray(targets, dtype=np.int64))


def validation_cases(
    split: LeaveLastOut, title_of: Callable[[str], str | None], cfg: FinetuneConfig
) -> Pairs:
    """``val_users`` seeded users: their validation history's context and target."""
    rng = np.random.default_rng(cfg.seed)
    n = len(split.user_ids)
    users = np.sort(rng.choice(n, size=min(cfg.val_users, n), replace=False))
    contexts, targets = [], []
    for user in users.tolist():
        names = [split.item_ids[c] for c in split.valid.history(user)[-cfg.recent_n :]]
        text = _context(names, title_of, cfg.history_items)
        if text is not None:
            contexts.append(text)
            targets.append(int(split.valid.targets[user]))
    return Pairs(contexts, np.asarray(targets, dtype=np.int64))


def info_nce(
    queries: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy of each query over the batch's distinct items (in-batch negatives)."""
    return F.cross_entropy(queries @ items.T / temperature, labels)


def uniformity(vectors: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang & Isola (2020): log of the mean Gaussian potential over distinct pairs.

    >>> round(float(uniformity(torch.eye(2))), 3)   # two orthogonal unit vectors
    -4.0
    """
    if len(vectors) < 2:
        return vectors.sum() * 0.0
    return torch.pdist(vectors).pow(2).mul(-t).exp().mean().log()


def rank_metrics(
    queries: np.ndarray, items: np.ndarray, targets: np.ndarray, k: int = 10
) -> dict[str, float]:
    """NDCG@k and Recall@k of one target per query, ranking every item by dot product."""
    scores = queries @ items.T
    own = scores[np.arange(len(targets)), targets]
    return target_metrics((scores > own[:, None]).sum(axis=1), k)


class _Trainer:
    """The training loop's state: model, optimizer, schedule, position, metrics."""

    def __init__(
        self,
        encoder: Encoder,
        cfg: FinetuneConfig,
        pairs: Pairs,
        val: Pairs,
        item_titles: list[str],
        planned_steps: int,
    ) -> None:
        self.encoder, self.cfg, self.pairs, self.val = encoder, cfg, pairs, val
        self.item_titles = item_titles
        self.model = encoder.model
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )

        def schedule(step: int) -> float:
            # Linear warm-up, then linear decay to 10% over the planned steps.
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            rest = max(1, planned_steps - cfg.warmup_steps)
            return max(0.1, 1.0 - 0.9 * (step - cfg.warmup_steps) / rest)

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        cuda = encoder.device.type == "cuda"
        bf16 = cuda and torch.cuda.is_bf16_supported()
        self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and not bf16)
        self.step = self.epoch = self.position = 0
        self.best = -1.0
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []
        self.seconds = 0.0
        self.stopped = ""

    # --- one step -------------------------------------------------------------

    def _autocast(self) -> torch.autocast:
        cuda = self.encoder.device.type == "cuda"
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype, enabled=cuda)

    def train_step(self, rows: np.ndarray) -> dict[str, float]:
        cfg = self.cfg
        targets = self.pairs.targets[rows]
        items, labels = np.unique(targets, return_inverse=True)
        self.model.train()
        with self._autocast():
            queries = self.encoder.forward([self.pairs.contexts[r] for r in rows.tolist()])
            vectors = self.encoder.forward([self.item_titles[i] for i in items.tolist()])
        nce = info_nce(
            queries, vectors, torch.as_tensor(labels, device=queries.device), cfg.temperature
        )
        unif = uniformity(vectors)
        loss = (1.0 - cfg.alpha) * nce + cfg.alpha * unif
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.step += 1
        return {"loss": loss.item(), "nce": nce.item(), "unif": unif.item()}

    # --- validation -----------------------------------------------------------

    def validate(self) -> dict[str, float]:
        self.model.eval()
        items = self.encoder.encode(self.item_titles)
        queries = self.encoder.encode(self.val.contexts)
        self.model.train()
        return rank_metrics(queries, items, self.val.targets)

    def record(self, metrics: dict[str, float], epoch: int, partial: bool) -> bool:
        """Append an epoch's metrics (epoch 0 = before training); True when best so far."""
        self.history.append({"epoch": epoch, "step": self.step, "partial": partial, **metrics})
        if metrics["ndcg@10"] > self.best:
            self.best, self.best_epoch = metrics["ndcg@10"], epoch
            self.best_state = {
                k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
            }
            return True
        return False

    @property
    def patience_left(self) -> bool:
        return self.epoch - self.best_epoch < self.cfg.patience

    # --- checkpoint -----------------------------------------------------------

    def save(self, path: Path, meta: dict) -> None:
        """Write ``path`` atomically (a sibling temp folder, then a rename)."""
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(tmp / "model")
        self.encoder.tokenizer.save_pretrained(tmp / "model")
        if self.best_state is not None:
            torch.save(self.best_state, tmp / "best.pt")
        torch.save(
            {
                "meta": meta,
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "step": self.step,
                "epoch": self.epoch,
                "position": self.position,
                "best": self.best,
                "best_epoch": self.best_epoch,
                "history": self.history,
                "seconds": self.seconds,
                "stopped": self.stopped,
            },
            tmp / "state.pt",
        )
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)

    def load(self, path: Path, meta: dict) -> None:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        for key in ("data_fingerprint", "base_fingerprint"):
            if state["meta"].get(key) != meta[key]:
                raise CheckpointMismatch(
                    f"{path} was trained with another {key.split('_')[0]} "
                    f"({state['meta'].get(key)} != {meta[key]}); drop --resume or "
                    "delete the checkpoint folder"
                )
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        for key in ("step", "epoch", "position", "best", "best_epoch", "history", "seconds"):
            setattr(self, key, state[key])
        if (path / "best.pt").is_file():
            self.best_state = torch.load(path / "best.pt", map_location="cpu")


def _planned_steps(cfg: FinetuneConfig, n_pairs: int) -> int:
    """Steps of the whole run if no budget or early stop cuts it (the LR schedule's span)."""
    per_epoch = math.ceil((min(cfg.epoch_pairs, n_pairs) or n_pairs) / cfg.batch_size)
    planned = cfg.epochs * per_epoch
    return min(planned, cfg.max_steps) if cfg.max_steps else planned


def _epoch_rows(n: int, cfg: FinetuneConfig, epoch: int) -> np.ndarray:
    """The pairs of ``epoch``: a seeded draw, the same on a resumed run."""
    order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
    return order[: cfg.epoch_pairs] if cfg.epoch_pairs else order


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _train(trainer: _Trainer, cfg: FinetuneConfig, ckpt: Path, meta: dict, progress: bool) -> None:
    """Epochs until the epochs, steps, time budget or patience run out."""
    started = time.perf_counter()
    seconds0 = trainer.seconds
    deadline = started + cfg.max_minutes * 60.0 if cfg.max_minutes > 0 else math.inf
    planned = _planned_steps(cfg, len(trainer.pairs))
    bar = tqdm(
        total=planned,
        initial=min(trainer.step, planned),
        desc="finetune",
        unit="step",
        disable=not progress,
    )
    if not trainer.history:
        trainer.record(trainer.validate(), epoch=0, partial=False)
    bar.set_postfix(val_ndcg=f"{trainer.history[-1]['ndcg@10']:.4f}")
    trainer.stopped = ""
    while not trainer.stopped:
        if trainer.epoch >= cfg.epochs:
            trainer.stopped = "epochs"
            break
        if not trainer.patience_left:
            trainer.stopped = "early stopping"
            break
        rows = _epoch_rows(len(trainer.pairs), cfg, trainer.epoch)
        stepped = False
        while trainer.position < len(rows):
            if cfg.max_steps and trainer.step >= cfg.max_steps:
                trainer.stopped = "max steps"
                break
            if time.perf_counter() >= deadline:
                trainer.stopped = "time budget"
                break
            batch = rows[trainer.position : trainer.position + cfg.batch_size]
            losses = trainer.train_step(batch)
            trainer.position += len(batch)
            stepped = True
            bar.update(1)
            bar.set_postfix(
                loss=f"{losses['loss']:.3f}",
                nce=f"{losses['nce']:.3f}",
                unif=f"{losses['unif']:.3f}",
                val_ndcg=f"{trainer.best:.4f}",
            )
        partial = trainer.position < len(rows)
        number = trainer.epoch + 1  # an interrupted epoch is validated under its number too
        if not partial:
            trainer.epoch, trainer.position = number, 0
        if stepped:
            metrics = trainer.validate()
            best = trainer.record(metrics, epoch=number, partial=partial)
            bar.write(
                f"epoch {number} step {trainer.step}: "
                f"val NDCG@10 {metrics['ndcg@10']:.4f} Recall@10 {metrics['recall@10']:.4f}"
                + (" (best)" if best else "")
                + (" (partial epoch)" if partial else "")
            )
        trainer.seconds = seconds0 + time.perf_counter() - started
        trainer.save(ckpt, meta)
    bar.close()


def finetune(
    data: Path,
    out: Path,
    base: Path | None = None,
    cfg: FinetuneConfig | None = None,
    resume: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``base`` on ``data`` and publish a new version under ``out``.

    >>> finetune(Path("data"), Path("artifacts"), cfg=FinetuneConfig(max_steps=5))  # doctest: +SKIP
    """
    cfg = cfg or FinetuneConfig()
    run_started = time.perf_counter()
    transformers.utils.logging.disable_progress_bar()  # one bar (ours) is enough
    torch.set_num_threads(cfg.threads or cpu_threads())
    torch.manual_seed(cfg.seed)
    # A fine-tuned artifact can be the base too: its model folder and version.
    base_art = resolve_artifact(base if base is not None else default_model_dir())
    base_dir = base_art.model_dir
    base_fingerprint = model_fingerprint(base_dir) + (base_art.version or "")
    dataset = load_dataset(data)
    split = leave_last_out(dataset.interactions)
    titles = {i: item.title for i, item in dataset.items.items()}
    item_titles = [titles[i] for i in split.item_ids]
    pairs = training_pairs(split, titles.get, cfg)
    val = validation_cases(split, titles.get, cfg)
    if not len(pairs) or not len(val):
        raise ValueError(f"{data}: no training pairs after the 5-core filter; need more data")

    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    meta = {
        "data_fingerprint": dataset.fingerprint,
        "base_fingerprint": base_fingerprint,
        "config": asdict(cfg),
    }
    resumed = resume and (ckpt / "state.pt").is_file()
    encoder = Encoder(
        ckpt / "model" if resumed else base_dir, device=cfg.device, max_length=cfg.max_length
    )
    trainer = _Trainer(encoder, cfg, pairs, val, item_titles, _planned_steps(cfg, len(pairs)))
    resumed_from = 0
    if resumed:
        trainer.load(ckpt, meta)
        resumed_from = trainer.step
    _train(trainer, cfg, ckpt, meta, progress)

    # Publish the best epoch's weights with a catalog built by them.
    if trainer.best_state is not None:
        encoder.model.load_state_dict(trainer.best_state)
    staged = out / f".staging-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    encoder.model.save_pretrained(staged / "model")
    encoder.tokenizer.save_pretrained(staged / "model")
    weights = staged / "model" / "model.safetensors"
    version = new_version(_sha256(weights))
    if (out / version).exists():  # the same weights published within the same second
        version += f".{sum(1 for _ in out.glob(version + '*'))}"
    epochs = [h for h in trainer.history if h["epoch"] > 0]
    manifest = {
        "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "created_ts": time.time(),
        "base_model": {
            "path": str(base_dir),
            "name": base_art.version or _base_name(base_dir),
            "fingerprint": base_fingerprint,
        },
        "weights_sha256": _sha256(weights),
        "data": {
            "name": dataset.name,
            "path": str(Path(data).resolve()),
            "fingerprint": dataset.fingerprint,
            "items": len(dataset.items),
            "interactions": len(dataset.interactions),
        },
        "split": {
            "protocol": "P1 leave-last-out (EVALUATION.md): collapse, iterative 5-core",
            "train": "each user's history without the last two items (validation-fold "
            "history); contexts = UserState recent window -> history_text",
            "validation": "second-to-last item of sampled users, ranked over every item",
            "test": "last item of each user: never used",
            "users": len(split.user_ids),
            "items": len(split.item_ids),
            "training_pairs": len(pairs),
            "validation_users": len(val),
        },
        "context": {
            "history_items": cfg.history_items,
            "recent_n": cfg.recent_n,
            "order": "newest first, distinct",
            "joiner": " ; ",
        },
        "hyper_parameters": asdict(cfg),
        "loss": "(1 - alpha) * InfoNCE(in-batch distinct targets, temperature) "
        "+ alpha * uniformity (Wang & Isola 2020, t=2) of the batch's distinct items",
        "metrics": {
            "validation": trainer.history,
            "val_ndcg@10_pretrained": trainer.history[0]["ndcg@10"],
            "val_ndcg@10_per_epoch": [h["ndcg@10"] for h in epochs],
            "val_recall@10_per_epoch": [h["recall@10"] for h in epochs],
            "best_val_ndcg@10": trainer.best,
            "best_epoch": trainer.best_epoch,
        },
        "steps": trainer.step,
        "resumed_from_step": resumed_from,
        "stopped": trainer.stopped,
        "device": str(encoder.device),
        "threads": torch.get_num_threads(),
        "training_seconds": round(trainer.seconds, 1),
    }
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=2))
    artifact_encoder = Encoder(staged, device=cfg.device)
    catalog = make_catalog(dataset, artifact_encoder, progress=progress)
    catalog.manifest.update(version=version, model=version, model_dir="../model")
    catalog.save(staged / "catalog")
    manifest["catalog"] = {
        "items": len(catalog),
        "dim": catalog.dim,
        "categories": catalog.manifest["categories"],
        "build_seconds": catalog.manifest["build_seconds"],
    }
    manifest["total_seconds"] = round(time.perf_counter() - run_started, 1)
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=2))
    path = publish(staged, out, version)
    return FinetuneResult(path, version, copy.deepcopy(manifest))


def _base_name(base_dir: Path) -> str:
    return "all-MiniLM-L6-v2" if base_dir == default_model_dir().resolve() else base_dir.name
