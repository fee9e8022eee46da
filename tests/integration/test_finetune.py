"""Fine-tuning: training data from the P1 training part only, the loss terms, and a
tiny run that publishes a complete, loadable, resumable versioned artifact."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
import torch

from corpus.datasets import load_dataset
from corpus.protocols import leave_last_out
from model.artifact import CURRENT, resolve_artifact
from model.encoder import Encoder
from model.finetune import (
    CheckpointMismatch,
    FinetuneConfig,
    finetune,
    info_nce,
    rank_metrics,
    training_pairs,
    uniformity,
)
from model.index import build_catalog
from model.scoring import history_text
from streams.catalog import Catalog
from streams.state import UserState
from tests.helpers import write_generic_dataset


def test_pairs_come_from_the_training_histories_only(tiny_artifacts) -> None:
    *_, data = tiny_artifacts
    ds = load_dataset(data)
    split = leave_last_out(ds.interactions)
    titles = {i: item.title for i, item in ds.items.items()}
    cfg = FinetuneConfig(history_items=3, recent_n=4)
    pairs = training_pairs(split, titles.get, cfg)
    histories = [split.valid.history(u) for u in range(len(split.user_ids))]
    # One pair per position after the first: no validation or test target in there.
    assert len(pairs) == sum(len(h) - 1 for h in histories)
    last = histories[-1]
    assert pairs.targets[-1] == last[-1]
    window = [split.item_ids[c] for c in last[-5:-1]]  # recent_n = 4 events before it
    expected = history_text(UserState(recent=deque(window)).recent_items(), titles.get, 3)
    assert pairs.contexts[-1] == expected
    assert len(expected.split(" ; ")) <= 3


def test_info_nce_prefers_aligned_pairs_and_uniformity_prefers_spread() -> None:
    eye = torch.eye(4)
    labels = torch.arange(4)
    assert info_nce(eye, eye, labels, 0.05) < info_nce(eye, eye.roll(1, 0), labels, 0.05)
    same = torch.nn.functional.normalize(torch.ones(4, 4), dim=1)
    assert float(uniformity(same)) == pytest.approx(0.0, abs=1e-6)
    assert float(uniformity(eye)) < -3.9
    assert float(uniformity(eye[:1])) == 0.0  # no pair: no term


def test_rank_metrics_counts_rank_over_all_items() -> None:
    items = np.eye(12, dtype=np.float32)
    queries = np.stack([items[0], 0.1 - items[11]])  # target 0 ranks 1st, 11 ranks 12th
    got = rank_metrics(queries, items, np.array([0, 11]))
    assert got["recall@10"] == 0.5 and got["ndcg@10"] == pytest.approx(0.5)


def test_tiny_fine_tune_publishes_a_complete_version(tiny_artifacts) -> None:
    out, a, b, _ = tiny_artifacts
    for result in (a, b):
        root = out / result.version
        for name in ("model.safetensors", "config.json", "tokenizer.json"):
            assert (root / "model" / name).is_file(), name
        for name in ("manifest.json", "items.json", "vectors.npy", "popularity.npy", "index.faiss"):
            assert (root / "catalog" / name).is_file(), name
        assert json.loads((root / "manifest.json").read_text()) == result.manifest
    assert (out / CURRENT).is_symlink() and (out / CURRENT).resolve() == b.path.resolve()
    assert a.version != b.version


def test_manifest_describes_the_run(tiny_artifacts) -> None:
    out, a, _, data = tiny_artifacts
    m = a.manifest
    assert m["version"] == a.version == a.path.name
    assert m["data"]["fingerprint"] == load_dataset(data).fingerprint
    assert m["base_model"]["name"] == "all-MiniLM-L6-v2"
    assert m["hyper_parameters"]["alpha"] == 0.1 and m["hyper_parameters"]["max_steps"] == 2
    assert "leave-last-out" in m["split"]["protocol"] and m["split"]["training_pairs"] > 0
    metrics = m["metrics"]
    assert len(metrics["val_ndcg@10_per_epoch"]) >= 1
    assert metrics["best_val_ndcg@10"] == max(h["ndcg@10"] for h in metrics["validation"])
    assert m["steps"] == 2 and m["stopped"] == "max steps"
    assert m["training_seconds"] > 0 and m["catalog"]["items"] == 40


def test_resuming_continues_the_step_count(tiny_artifacts) -> None:
    _, a, b, _ = tiny_artifacts
    assert b.manifest["resumed_from_step"] == a.manifest["steps"] == 2
    assert b.manifest["steps"] == 4
    # The metrics so far travel with the checkpoint: B's history extends A's.
    before = a.manifest["metrics"]["validation"]
    assert b.manifest["metrics"]["validation"][: len(before)] == before


def test_encoder_and_catalog_load_the_artifact(tiny_artifacts, tmp_path) -> None:
    out, _, b, data = tiny_artifacts
    encoder = Encoder(out / CURRENT, device="cpu")
    assert encoder.name == b.version
    assert encoder.model_dir == b.path.resolve() / "model"
    assert encoder.fingerprint != Encoder(device="cpu").fingerprint
    model_dir, catalog_dir, version, _ = resolve_artifact(out / CURRENT)
    catalog = Catalog.load(catalog_dir)
    assert version == b.version and catalog.version == b.version and len(catalog) == 40
    # The catalog's vectors are the fine-tuned model's embeddings of the titles.
    np.testing.assert_allclose(
        encoder.encode(catalog.titles[:5]), catalog.vectors[:5], atol=1e-4, rtol=0
    )
    # build_catalog (index, demo, evaluate) hands out the artifact's own catalog.
    path, built = build_catalog(load_dataset(data), encoder, tmp_path, progress=False)
    assert (path, built) == (catalog_dir, False)


def test_resume_refuses_a_checkpoint_of_other_data(tiny_artifacts, tmp_path) -> None:
    out, *_ = tiny_artifacts
    other = write_generic_dataset(tmp_path / "other", n_users=60, seed=99)
    cfg = FinetuneConfig(max_steps=1, batch_size=8, epoch_pairs=8, val_users=10, device="cpu")
    with pytest.raises(CheckpointMismatch, match="drop --resume"):
        finetune(other, out, cfg=cfg, resume=True, progress=False)
