"""`streamrec finetune-seq` end to end, and the fusion ranker through the real pipeline.

A tiny sequence model is trained on a small generic dataset and its fusion
weights are fitted through the product's own path; then the real broker,
dataflow and worker serve it (`--sequence-model`) and their explicit lists
must equal the in-process ones.
"""

from __future__ import annotations

import json

import pytest

from corpus.datasets import load_dataset
from evaluation.consistency import SCORE_TOLERANCE, check_consistency
from model.finetune_seq import finetune_sequence
from model.fusion import FEATURES
from model.index import build_catalog
from model.sequence import SeqConfig, SequenceModel
from streams.settings import Settings
from tests.helpers import write_generic_dataset


@pytest.fixture(scope="module")
def seq_model(tmp_path_factory, encoder):
    data = write_generic_dataset(tmp_path_factory.mktemp("seq-data"), n_users=60)
    catalog, _ = build_catalog(
        load_dataset(data), encoder, tmp_path_factory.mktemp("seq-cache"), progress=False
    )
    out = tmp_path_factory.mktemp("seq-models")
    cfg = SeqConfig(dim=16, max_len=10, batch_size=16, max_epochs=3, eval_every=1, device="cpu")
    settings = Settings(data=data, catalog=catalog, device="cpu", metrics_port=0)
    path = finetune_sequence(data, out, catalog, settings, cfg=cfg, fusion_users=60, progress=False)
    return out, path


def test_finetune_seq_publishes_a_model_with_fitted_fusion_weights(seq_model) -> None:
    out, path = seq_model
    assert (out / "current").resolve() == path.resolve()
    config = json.loads((path / "config.json").read_text())
    assert config["kind"] == "sequence-model" and config["version"] == path.name
    # The kept model is the best validated epoch (the last entry says which NDCG that was).
    epochs = [h for h in config["history"] if "ndcg@10" in h]
    assert len(epochs) >= 2 and [h["epoch"] for h in epochs][:2] == [0, 1]
    assert config["history"][-1]["best_ndcg@10"] == max(h["ndcg@10"] for h in epochs)
    fusion = json.loads((path / "fusion.json").read_text())
    assert set(fusion["weights"]) == set(FEATURES)
    assert fusion["warm_start"]["users"] > 0
    # The second set, for lists that filter seen items: nothing seen is a
    # candidate there, so the repeat features cannot have learned a weight.
    masked = fusion["masked"]["weights"]
    assert set(masked) == set(FEATURES)
    assert all(masked[f] == 0.0 for f in ("repeat", "repeat_count", "repeat_recency"))
    assert 0.0 <= fusion["warm_start"]["masked_target_in_candidates"] <= 1.0
    model = SequenceModel(out / "current", device="cpu")
    assert model.version == path.name and len(model.item_ids) > 10


@pytest.mark.integration
def test_fusion_lists_through_kafka_equal_the_in_process_ones(
    tmp_path, broker, topics, catalog_path, generic_data, seq_model
) -> None:
    _, path = seq_model
    dataset = load_dataset(generic_data)
    n = 48
    settings = Settings(
        brokers=broker.bootstrap,
        topic_prefix=topics.prefix,
        metrics_port=0,
        device="cpu",
        sequence_model=path,
    )
    report = check_consistency(
        dataset, catalog_path, settings, n, log_dir=tmp_path / "logs", idle_timeout_s=90
    )
    assert report.pipeline_lists == report.in_process_lists == report.compared == n
    assert report.signals_read  # the fusion scorer reads the streamed item signals
    users = len(set(dataset.interactions.user_id[:n]))
    assert report.explicit == report.explicit_compared == report.explicit_identical == users
    assert report.max_score_diff <= SCORE_TOLERANCE
    assert report.ok
