"""The sequence-aware user side: a small causal transformer over LM item vectors.

Why: on purchase data the *order* of a user's items carries most of the signal
(SASRec and GRU4Rec beat every bag-of-items method on online-retail), and a
bag of recent titles read by the LM cannot see it. So the user side is a
SASRec-style model (Kang & McAuley, ICDM 2018) whose item representations are
built *on top of the language model's item vectors*:

    item(i)  = W · v_lm(i) + e_id(i)         (W: 384 -> d, trained; e_id: per-item residual)
    input_t  = item(x_t) + pos(t) + gap(x_t)  (gap: log-bucket of the time since the previous item)
    h_t      = causal transformer(input_1..t)
    logit(j) = <h_t, item(j)>                (tied output table, full softmax over the catalog)

The LM vectors give every item, even one bought twice, a meaningful start,
and carry text similarity into the sequence model; ``e_id`` learns what text
cannot (what is bought together, in which order). Training is next-item with
a full softmax (cross-entropy over every item) at every position of random
windows of each user's training sequence: the loss SASRec/GRU4Rec use in the
peer table. Early stopping on validation NDCG@10.

The per-user state this model reads is kept by the dataflow (``UserState.sequence``:
the last ``sequence_n`` items with their times, shipped as
``RankRequest.sequence``/``sequence_ts``); the worker runs the forward pass.

Folder layout written by :func:`save` (``streamrec finetune-seq``):

``model.safetensors``  the weights (the LM vectors are a frozen buffer inside)
``config.json``        hyper-parameters, the item ids (row order) and training metrics
``fusion.json``        the fusion ranker's warm-start weights (``model.fusion``), when fitted
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from corpus.metrics import target_metrics
from model.encoder import resolve_device

log = logging.getLogger(__name__)

__all__ = [
    "SeqConfig",
    "SeqRec",
    "SequenceModel",
    "gap_buckets",
    "train_sequence_model",
    "save",
]

N_GAP_BUCKETS = 16
_DAY_S = 86_400.0


def gap_buckets(ts: np.ndarray) -> np.ndarray:
    """Bucket of the time since the previous item, per position (the first gets 1).

    0 = within a minute (the same basket/invoice), then 1 + floor(log2(1 + hours)),
    capped: 1 h -> 2, 1 day -> 5, 1 month -> 10, 1 year -> 14.

    >>> gap_buckets(np.array([0.0, 10.0, 3610.0, 3610.0 + 86400]))
    array([1, 0, 2, 5])
    """
    ts = np.asarray(ts, dtype=np.float64)
    gaps = np.diff(ts, prepend=ts[:1] - 3600.0 * 0.5) if len(ts) else ts
    hours = np.maximum(gaps, 0.0) / 3600.0
    buckets = 1 + np.floor(np.log2(1.0 + hours)).astype(np.int64)
    buckets[gaps <= 60.0] = 0
    if len(ts):
        buckets[0] = 1
    return np.minimum(buckets, N_GAP_BUCKETS - 1)


@dataclass
class SeqConfig:
    """Hyper-parameters; defaults are SASRec's for a catalog of a few thousand items."""

    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.3
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    max_minutes: float = 8.0
    patience: int = 4  # validation checks without improvement before stopping
    eval_every: int = 2  # epochs between validation checks
    valid_users: int = 1000
    seed: int = 13
    threads: int = 0  # 0 = every core
    device: str = "auto"


class SeqRec(nn.Module):
    """The causal transformer; item row r is token r + 1 (token 0 = padding)."""

    def __init__(self, lm_vectors: np.ndarray, cfg: SeqConfig) -> None:
        super().__init__()
        n, lm_dim = lm_vectors.shape
        self.cfg = cfg
        self.register_buffer("lm", torch.as_tensor(np.asarray(lm_vectors, dtype=np.float32)))
        self.content = nn.Linear(lm_dim, cfg.dim, bias=False)
        self.ids = nn.Embedding(n + 1, cfg.dim, padding_idx=0)
        nn.init.normal_(self.ids.weight, std=0.02)
        with torch.no_grad():
            self.ids.weight[0].zero_()
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        self.gap = nn.Embedding(N_GAP_BUCKETS, cfg.dim)
        layer = nn.TransformerEncoderLayer(
            cfg.dim,
            cfg.heads,
            dim_feedforward=cfg.dim * 2,
            dropout=cfg.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def item_table(self) -> torch.Tensor:
        """(n_items, dim): every item's representation (input and output side)."""
        return self.content(self.lm) + self.ids.weight[1:]

    @staticmethod
    def padded(table: torch.Tensor) -> torch.Tensor:
        """``table`` under a zero row: the embedding of token 0 (padding)."""
        return torch.cat([table.new_zeros(1, table.shape[1]), table])

    def _inputs(
        self,
        tokens: torch.Tensor,
        gaps: torch.Tensor,
        table: torch.Tensor | None,
        start: int,
        padded: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedded inputs, additive attention mask per head) for ``tokens``, whose
        first column is position ``start`` of the full window. ``padded``: the
        caller's cached :meth:`padded` table (serving: a copy of the whole table
        per call otherwise)."""
        if padded is None:
            padded = self.padded(self.item_table() if table is None else table)
        length = tokens.shape[1]
        pos = torch.arange(start, start + length, device=tokens.device)
        x = padded[tokens] * math.sqrt(self.cfg.dim) + self.pos(pos)[None] + self.gap(gaps)
        x = self.drop(x)
        # Position t sees the real items at positions <= t, and itself: a padding
        # position would otherwise attend to nothing and turn into NaN, which
        # leaks through the zero attention weights of later layers.
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        eye = torch.eye(length, device=tokens.device) > 0
        allowed = causal[None] & ((tokens != 0)[:, None, :] | eye[None])
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(~allowed, float("-inf"))
        return x, mask.repeat_interleave(self.cfg.heads, dim=0)

    def forward(
        self, tokens: torch.Tensor, gaps: torch.Tensor, table: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden state per position, (B, L, dim); ``tokens`` are left-padded with 0.
        ``table``: the item table when the caller has it (serving caches it)."""
        x, mask = self._inputs(tokens, gaps, table, 0)
        return self.norm(self.blocks(x, mask=mask))

    def user(
        self,
        tokens: torch.Tensor,
        gaps: torch.Tensor,
        table: torch.Tensor | None = None,
        start: int = 0,
        padded: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, dim): the state after each sequence's last (right-most) item.

        Serving needs only the last position: every layer but the last runs
        over the window (their outputs are the last layer's keys and values),
        the last one for the final position alone, which is most of the work
        of that layer saved. ``start``: the window position of the first
        column, when leading columns that are padding in every row were cut.
        ``padded``: the cached padded table (see :meth:`_inputs`).
        """
        x, mask = self._inputs(tokens, gaps, table, start, padded)
        layers = self.blocks.layers
        for layer in layers[:-1]:
            x = layer(x, src_mask=mask)
        last = layers[-1]
        assert last.norm_first, "the serving path follows the pre-norm layer"
        h = last.norm1(x)
        attended = last.self_attn(h[:, -1:], h, h, attn_mask=mask[:, -1:], need_weights=False)[0]
        y = x[:, -1:] + last.dropout1(attended)
        y = y + last._ff_block(last.norm2(y))
        return self.norm(y)[:, 0]


def _window(items: np.ndarray, ts: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``max_len`` items as left-padded tokens and their gap buckets."""
    items, ts = items[-max_len:], ts[-max_len:]
    tokens = np.zeros(max_len, dtype=np.int64)
    gaps = np.zeros(max_len, dtype=np.int64)
    if len(items):
        tokens[-len(items) :] = items + 1
        gaps[-len(items) :] = gap_buckets(ts)
    return tokens, gaps


@dataclass
class TrainingData:
    """Users' ordered training sequences (item rows and times) and validation cases."""

    sequences: list[np.ndarray]
    times: list[np.ndarray]
    valid_history: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    valid_targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _epoch_batches(
    data: TrainingData, cfg: SeqConfig, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Random windows (max_len + 1 items) of every sequence, more for long ones."""
    windows = []
    span = cfg.max_len + 1
    for items, ts in zip(data.sequences, data.times, strict=True):
        if len(items) < 2:
            continue
        for _ in range(max(1, math.ceil(len(items) / cfg.max_len))):
            end = len(items) if len(items) <= span else int(rng.integers(span, len(items) + 1))
            windows.append((items[max(0, end - span) : end], ts[max(0, end - span) : end]))
    order = rng.permutation(len(windows))
    batches = []
    for start in range(0, len(order), cfg.batch_size):
        chunk = [windows[i] for i in order[start : start + cfg.batch_size]]
        tokens = np.zeros((len(chunk), cfg.max_len), dtype=np.int64)
        gaps = np.zeros_like(tokens)
        targets = np.full_like(tokens, -100)  # -100 = ignored by cross_entropy
        for row, (items, ts) in enumerate(chunk):
            t, g = _window(items[:-1], ts[:-1], cfg.max_len)
            tokens[row], gaps[row] = t, g
            targets[row, cfg.max_len - (len(items) - 1) :] = items[1:]
        batches.append((tokens, gaps, targets))
    return batches


def _autocast(device: torch.device) -> torch.autocast:
    # bf16 autocast on CUDA (AMP); CPU runs in fp32.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def validate(model: SeqRec, data: TrainingData, device: torch.device, k: int = 10) -> dict:
    """NDCG@k and Recall@k of the validation targets, full ranking, no mask."""
    model.eval()
    ranks: list[int] = []
    table = model.item_table()
    for start in range(0, len(data.valid_targets), 256):
        part = data.valid_history[start : start + 256]
        win = [_window(i, t, model.cfg.max_len) for i, t in part]
        tokens = torch.as_tensor(np.stack([w[0] for w in win]), device=device)
        gaps = torch.as_tensor(np.stack([w[1] for w in win]), device=device)
        with _autocast(device):
            scores = (model.user(tokens, gaps) @ table.T).float()
        target = torch.as_tensor(data.valid_targets[start : start + 256], device=device)
        mine = scores.gather(1, target[:, None])
        ranks += (scores > mine).sum(1).tolist()
    model.train()
    return target_metrics(np.array(ranks), k)


def train_sequence_model(
    lm_vectors: np.ndarray, data: TrainingData, cfg: SeqConfig, progress: bool = True
) -> tuple[SeqRec, list[dict]]:
    """Train next-item with a full softmax; keep the best validation epoch's weights."""
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    model = SeqRec(lm_vectors, cfg).to(device)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )
    rng = np.random.default_rng(cfg.seed)
    history = [{"epoch": 0, **validate(model, data, device)}]
    best, best_state, stale = history[0]["ndcg@10"], None, 0
    started = time.perf_counter()
    bar = tqdm(total=cfg.max_epochs, desc="sequence model", disable=not progress)
    for epoch in range(1, cfg.max_epochs + 1):
        losses = []
        for tokens, gaps, targets in _epoch_batches(data, cfg, rng):
            t = torch.as_tensor(tokens, device=device)
            g = torch.as_tensor(gaps, device=device)
            y = torch.as_tensor(targets, device=device)
            with _autocast(device):
                logits = model(t, g) @ model.item_table().T
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        out_of_time = time.perf_counter() - started > cfg.max_minutes * 60
        if epoch % cfg.eval_every == 0 or out_of_time or epoch == cfg.max_epochs:
            metrics = validate(model, data, device)
            history.append({"epoch": epoch, "loss": float(np.mean(losses)), **metrics})
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", ndcg=f"{metrics['ndcg@10']:.4f}")
            if metrics["ndcg@10"] > best:
                best, stale = metrics["ndcg@10"], 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            if stale >= cfg.patience or out_of_time:
                break
        bar.update(1)
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history.append({"seconds": round(time.perf_counter() - started, 1), "best_ndcg@10": best})
    return model, history


def save(model: SeqRec, item_ids: Sequence[str], path: Path, meta: dict) -> None:
    """Write the folder :class:`SequenceModel` loads (weights, config, item ids)."""
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"))
    config = {"config": asdict(model.cfg), "item_ids": list(item_ids), **meta}
    (path / "config.json").write_text(json.dumps(config, indent=1))


class SequenceModel:
    """A trained :class:`SeqRec` for serving: item-id sequences in, scores out."""

    def __init__(self, path: Path, device: str = "auto", runtime: str = "auto") -> None:
        """``runtime``: ``auto`` serves the forward pass with ONNX Runtime on a CPU
        when it is installed (:class:`_CpuSession`), else with torch; ``torch``
        always with torch."""
        if runtime not in ("auto", "torch"):
            raise ValueError(f"runtime must be auto or torch, got {runtime!r}")
        self.path = Path(path)
        config = json.loads((self.path / "config.json").read_text())
        self.meta = config
        cfg = SeqConfig(**config["config"])
        self.item_ids: list[str] = config["item_ids"]
        self.index = {item: row for row, item in enumerate(self.item_ids)}
        state = load_file(str(self.path / "model.safetensors"))
        self.device = resolve_device(device)
        self.model = SeqRec(state["lm"].numpy(), cfg)
        self.model.load_state_dict(state)
        self.model.to(self.device).eval().requires_grad_(False)  # serving only
        with torch.no_grad():
            self._table = self.model.item_table()
            self._padded = self.model.padded(self._table)
        self.version = str(config.get("version", self.path.name))
        self._session: _CpuSession | None = None
        self._want_session = runtime == "auto" and self.device.type == "cpu"

    @property
    def runtime(self) -> str:
        """What runs the forward pass: ``onnxruntime`` or ``torch``."""
        return "onnxruntime" if self._cpu_session() is not None else "torch"

    def _cpu_session(self) -> _CpuSession | None:
        """The ONNX Runtime session, built on first use (None: torch serves)."""
        if self._want_session and self._session is None:
            self._want_session = False  # one try: a failure is logged once, torch serves
            self._session = _CpuSession.build(self)
        return self._session

    @property
    def max_len(self) -> int:
        return self.model.cfg.max_len

    @torch.no_grad()
    def log_probs(
        self, sequences: Sequence[Sequence[str]], times: Sequence[Sequence[float]]
    ) -> np.ndarray:
        """(B, n_items) log-softmax of the next item for each sequence (oldest first).

        Items the model does not know are skipped; an empty sequence gets the
        model's prior (what follows "nothing", the padding-only state).
        """
        windows = []
        for items, ts in zip(sequences, times, strict=True):
            rows = [(self.index[i], t) for i, t in zip(items, ts, strict=True) if i in self.index]
            windows.append(
                _window(
                    np.array([r for r, _ in rows], dtype=np.int64),
                    np.array([t for _, t in rows], dtype=np.float64),
                    self.max_len,
                )
            )
        if not windows:
            return np.zeros((0, len(self.item_ids)), dtype=np.float32)
        tokens_np = np.stack([w[0] for w in windows])
        session = self._cpu_session()
        if session is not None:
            return session.log_probs(tokens_np, np.stack([w[1] for w in windows]))
        # Columns that are padding in every row change nothing: cut them.
        used = np.flatnonzero(tokens_np.any(axis=0))
        start = int(used[0]) if len(used) else self.max_len - 1
        tokens = torch.as_tensor(tokens_np[:, start:], device=self.device)
        gaps = torch.as_tensor(np.stack([w[1] for w in windows])[:, start:], device=self.device)
        with _autocast(self.device):
            user = self.model.user(tokens, gaps, self._table, start, self._padded)
            logits = (user @ self._table.T).float()
        return torch.log_softmax(logits, dim=1).cpu().numpy()


class _Serving(nn.Module):
    """What serving computes, as one module to export: full-window tokens and gaps
    -> the next item's log-softmax over the catalog."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.seq, self.table, self.padded_table = model.model, model._table, model._padded

    def forward(self, tokens: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        user = self.seq.user(tokens, gaps, self.table, 0, self.padded_table)
        return torch.log_softmax(user @ self.table.T, dim=1)


class _CpuSession:
    """The sequence model's forward pass in ONNX Runtime, for serving on a CPU.

    Why: at the worker's batch sizes torch spends its time dispatching a few
    dozen small operators, not computing. Measured on the 2-core test machine
    (one thread, a full 50-item window): 0.16 ms a request alone against torch's
    0.81 ms, 5.4 ms against 19.8 ms for 64 requests, the same log-probabilities
    within 4e-6. The model is exported once, in memory, when it first ranks
    (about a second); the window is always the full ``max_len`` (the export
    fixes that dimension, the batch stays free). On CUDA torch serves.
    """

    def __init__(self, session: object) -> None:
        self._session = session

    @classmethod
    def build(cls, model: SequenceModel) -> _CpuSession | None:
        """Export ``model`` and load it in ONNX Runtime; None (torch serves, with a
        warning) when onnxruntime or onnx is missing or the export fails."""
        try:
            import onnxruntime as ort
        except ImportError:
            log.warning("onnxruntime is not installed: the sequence model runs on torch")
            return None
        serving = _Serving(model).eval()
        example = torch.ones(2, model.max_len, dtype=torch.int64)
        buffer = io.BytesIO()
        fastpath = torch.backends.mha.get_fastpath_enabled()
        try:
            # The fused encoder-layer kernel has no ONNX form: export the plain ops.
            torch.backends.mha.set_fastpath_enabled(False)
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the tracer's notes on constant shapes
                torch.onnx.export(
                    serving,
                    (example, example),
                    buffer,
                    input_names=["tokens", "gaps"],
                    output_names=["log_probs"],
                    dynamic_axes={"tokens": {0: "batch"}, "gaps": {0: "batch"}},
                    opset_version=17,
                    dynamo=False,
                )
            options = ort.SessionOptions()
            options.intra_op_num_threads = max(1, torch.get_num_threads())
            options.inter_op_num_threads = 1
            # No spin-waiting between runs: the worker shares its cores (the
            # dataflow, the broker), and a spinning pool takes them between requests.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(
                buffer.getvalue(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - torch serves: slower, never wrong
            log.warning("the sequence model's ONNX export failed (%s): it runs on torch", exc)
            return None
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        return cls(session)

    def log_probs(self, tokens: np.ndarray, gaps: np.ndarray) -> np.ndarray:
        feed = {"tokens": tokens.astype(np.int64), "gaps": gaps.astype(np.int64)}
        return self._session.run(None, feed)[0]  # type: ignore[attr-defined]


def user_sequences(
    users: np.ndarray, items: np.ndarray, ts: np.ndarray, n_users: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-user item and time arrays, in the (time-ordered) order of the events."""
    order = np.argsort(users, kind="stable")
    bounds = np.searchsorted(users[order], np.arange(n_users + 1))
    seqs, times = [], []
    for u in range(n_users):
        rows = order[bounds[u] : bounds[u + 1]]
        seqs.append(items[rows])
        times.append(ts[rows])
    return seqs, times


def p1_training_data(split, valid_users: int, seed: int) -> TrainingData:  # noqa: ANN001
    """Train on the validation fold's histories (each user without the last two
    items); validate on a sample of users' second-to-last item. The test item is
    never seen."""
    fold = split.valid
    ev = fold.train.events
    seqs, times = user_sequences(ev.users, ev.items, ev.ts, len(split.user_ids))
    rng = np.random.default_rng(seed)
    users = rng.choice(len(seqs), size=min(valid_users, len(seqs)), replace=False)
    return TrainingData(
        sequences=seqs,
        times=times,
        valid_history=[(seqs[u], times[u]) for u in users],
        valid_targets=fold.targets[users],
    )
