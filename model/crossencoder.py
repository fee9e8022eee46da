"""Cross-encoder rescoring: the LM reads [history text, item title] together.

The two-tower scorer embeds the history and each item separately; a
cross-encoder attends across both, which is more accurate per pair and far
more expensive (one forward pass per candidate), so it only rescores the
two-tower's top ``top_n`` candidates of each request (``STREAMREC_CROSS_ENCODER``,
``STREAMREC_CROSS_TOP_N``). The list is then drawn from those ``top_n``, ordered
by the cross-encoder's probability.

Training (``streamrec finetune-cross``): from the same base (default
all-MiniLM-L6-v2) with a one-logit classification head, on the fine-tuning
pairs (``model.finetune.training_pairs``: P1 training histories only), each
positive grouped with ``negatives`` hard negatives: items the first-stage
encoder ranks in its top 30 for that context (what the cross-encoder will see
at serving time), with the target and repeats removed. Loss: softmax
cross-entropy over each group (listwise). A short budget (minutes on a CPU).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from model.artifact import resolve_artifact
from model.encoder import default_model_dir, require_model_dir, resolve_device
from model.scoring import Scored, Scorer, TwoTowerScorer
from streams.contracts import RankRequest

__all__ = ["CrossEncoder", "CrossEncoderScorer", "CrossConfig", "train_cross_encoder"]


def _model_dir(path: Path) -> Path:
    """A cross-encoder folder (``model/`` + manifest) or a bare HF model folder."""
    path = Path(path)
    return path / "model" if (path / "model" / "config.json").is_file() else path


class CrossEncoder:
    """[history text, item title] -> relevance logit, with any local HF model folder."""

    def __init__(self, model_dir: Path | str, device: str = "auto", max_length: int = 128) -> None:
        self.model_dir = _model_dir(Path(model_dir))
        require_model_dir(
            self.model_dir, "a cross-encoder folder", "train one with `streamrec finetune-cross`"
        )
        self.device = resolve_device(device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.model_dir, num_labels=1, local_files_only=True
        )
        self.model.to(self.device).eval()

    def logits(self, queries: Sequence[str], titles: Sequence[str]) -> torch.Tensor:
        """Differentiable logits, one per (query, title) pair."""
        batch = self.tokenizer(
            list(queries),
            list(titles),
            padding=True,
            truncation="only_first",
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.autocast(device_type="cuda", enabled=self.device.type == "cuda"):
            return self.model(**batch).logits[:, 0].float()

    @torch.inference_mode()
    def score(
        self, queries: Sequence[str], titles: Sequence[str], batch_size: int = 128
    ) -> np.ndarray:
        """Relevance probabilities (sigmoid of the logits), float32."""
        out = np.zeros(len(queries), dtype=np.float32)
        for s in range(0, len(queries), batch_size):
            logits = self.logits(queries[s : s + batch_size], titles[s : s + batch_size])
            out[s : s + batch_size] = torch.sigmoid(logits).cpu().numpy()
        return out


class CrossEncoderScorer(Scorer):
    """Two-tower scores, then the cross-encoder over each request's top ``top_n``.

    Requests without a history text (cold users) keep the two-tower scores.
    """

    def __init__(self, base: TwoTowerScorer, cross: CrossEncoder, top_n: int = 20) -> None:
        self.base = base
        self.cross = cross
        self.top_n = top_n
        self.encoder = base.encoder  # the worker reads the device from here

    def score(self, requests: Sequence[RankRequest]) -> list[Scored]:
        scored = self.base.score(requests)
        titles = self.base.catalog.titles
        queries: list[str] = []
        items: list[str] = []
        spans: list[tuple[int, np.ndarray, int, int]] = []
        for i, (request, (rows, scores)) in enumerate(zip(requests, scored, strict=True)):
            text = self.base.history_text(request.recent_items)
            if text is None or not len(rows):
                continue
            top = np.argsort(-scores, kind="stable")[: self.top_n]
            spans.append((i, rows[top], len(queries), len(queries) + len(top)))
            queries += [text] * len(top)
            items += [titles[r] for r in rows[top].tolist()]
        if queries:
            probs = self.cross.score(queries, items)
            for i, rows, start, stop in spans:
                scored[i] = (rows, probs[start:stop])
        return scored


@dataclass(frozen=True)
class CrossConfig:
    """Hyper-parameters of the short cross-encoder fine-tune."""

    negatives: int = 3
    groups_per_step: int = 16
    train_pairs: int = 4096
    lr: float = 5e-5
    max_minutes: float = 6.0
    max_steps: int = 0
    mine_top: int = 30
    seed: int = 13
    max_length: int = 128
    device: str = "auto"


def _hard_negatives(
    first_stage: Path | None,
    contexts: list[str],
    targets: np.ndarray,
    item_titles: list[str],
    cfg: CrossConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """(n, negatives) item codes from the first stage's top ``mine_top`` per context."""
    from model.encoder import Encoder

    encoder = Encoder(first_stage, device=cfg.device)
    top = np.argsort(
        -(encoder.encode(contexts, progress=True) @ encoder.encode(item_titles).T), axis=1
    )[:, : cfg.mine_top]
    out = np.empty((len(targets), cfg.negatives), dtype=np.int64)
    for row, (cands, target) in enumerate(zip(top, targets, strict=True)):
        pool = cands[cands != target]
        out[row] = rng.choice(pool, size=cfg.negatives, replace=len(pool) < cfg.negatives)
    return out


def _first_stage_name(path: Path | None) -> str:
    if path is None:
        return "base"
    resolved = resolve_artifact(path)
    return f"{path} ({resolved.version})" if resolved.version else str(path)


def train_cross_encoder(
    data: Path,
    out: Path,
    base: Path | None = None,
    first_stage: Path | None = None,
    cfg: CrossConfig | None = None,
    progress: bool = True,
) -> Path:
    """Fine-tune a cross-encoder on ``data``'s P1 training pairs -> ``out`` (model + manifest).

    ``first_stage`` (an artifact or model folder; default: the base) mines the
    hard negatives; pass the two-tower artifact the cross-encoder will rerank.
    ``cfg.max_minutes`` covers the whole call, mining included.
    """
    from corpus.datasets import load_dataset
    from corpus.protocols import leave_last_out
    from model.finetune import FinetuneConfig, cpu_threads, training_pairs

    cfg = cfg or CrossConfig()
    started = time.perf_counter()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(cpu_threads())
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    base_dir = _model_dir(Path(base)) if base is not None else default_model_dir()
    dataset = load_dataset(data)
    split = leave_last_out(dataset.interactions)
    titles = {i: item.title for i, item in dataset.items.items()}
    item_titles = [titles[i] for i in split.item_ids]
    pairs = training_pairs(split, titles.get, FinetuneConfig())
    rows = rng.permutation(len(pairs))[: cfg.train_pairs]
    contexts = [pairs.contexts[r] for r in rows.tolist()]
    targets = pairs.targets[rows]
    negatives = _hard_negatives(first_stage, contexts, targets, item_titles, cfg, rng)

    cross = CrossEncoder(base_dir, device=cfg.device, max_length=cfg.max_length)
    model = cross.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    deadline = started + cfg.max_minutes * 60.0
    group = 1 + cfg.negatives
    steps = len(contexts) // cfg.groups_per_step
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    losses: list[float] = []
    bar = tqdm(range(steps), desc="finetune-cross", unit="step", disable=not progress)
    for step in bar:
        if time.perf_counter() >= deadline:
            break
        part = slice(step * cfg.groups_per_step, (step + 1) * cfg.groups_per_step)
        queries = [q for q in contexts[part] for _ in range(group)]
        items = [
            item_titles[i]
            for t, negs in zip(targets[part], negatives[part], strict=True)
            for i in [t, *negs]
        ]
        logits = cross.logits(queries, items).view(-1, group)
        # Listwise: the positive sits in column 0 of each group.
        loss = F.cross_entropy(
            logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()

    staged = out.with_name(out.name + ".tmp")
    shutil.rmtree(staged, ignore_errors=True)
    model.save_pretrained(staged / "model")
    cross.tokenizer.save_pretrained(staged / "model")
    manifest = {
        "kind": "cross-encoder",
        "base_model": str(base_dir),
        "first_stage": _first_stage_name(first_stage),
        "data": {"name": dataset.name, "fingerprint": dataset.fingerprint},
        "split": "P1 training histories only (each user's history without the last two items)",
        "hyper_parameters": asdict(cfg),
        "steps": len(losses),
        "loss_first_last": [
            float(np.mean(losses[:20])) if losses else None,
            float(np.mean(losses[-20:])) if losses else None,
        ],
        "device": str(cross.device),
        "training_seconds": round(time.perf_counter() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (staged / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staged.rename(out)
    return out
