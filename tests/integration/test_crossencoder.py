"""The cross-encoder stage (training, rescoring contract) and the model bench."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.bench import bench_model, bench_requests, render_table
from model.crossencoder import CrossConfig, CrossEncoder, CrossEncoderScorer, train_cross_encoder
from model.encoder import Encoder
from model.scoring import TwoTowerScorer
from streams.catalog import Catalog
from streams.settings import Settings


@pytest.fixture(scope="module")
def cross_dir(tiny_artifacts, tmp_path_factory):
    out, _, b, data = tiny_artifacts
    path = tmp_path_factory.mktemp("cross") / "cross"
    cfg = CrossConfig(max_steps=1, groups_per_step=2, train_pairs=8, mine_top=8, device="cpu")
    return train_cross_encoder(data, path, first_stage=b.path, cfg=cfg, progress=False)


def test_training_writes_a_model_and_a_manifest(cross_dir) -> None:
    manifest = json.loads((cross_dir / "manifest.json").read_text())
    assert manifest["kind"] == "cross-encoder" and manifest["steps"] == 1
    assert (cross_dir / "model" / "model.safetensors").is_file()


def test_scorer_rescores_the_top_n_with_probabilities(cross_dir, tiny_artifacts) -> None:
    _, _, b, _ = tiny_artifacts
    catalog = Catalog.load(b.path / "catalog")
    base = TwoTowerScorer(Encoder(b.path, device="cpu"), catalog, history_items=3)
    scorer = CrossEncoderScorer(base, CrossEncoder(cross_dir, device="cpu"), top_n=7)
    requests = bench_requests(catalog, 3, history=3, candidates=20)
    cold = requests[0].model_copy(update={"recent_items": []})
    scored = scorer.score([*requests, cold])
    cross = scorer.cross
    for request, (rows, scores), (base_rows, base_scores) in zip(
        requests, scored[:3], base.score(requests), strict=True
    ):
        # The kept rows carry the cross-encoder's probability of (history text, title).
        text = base.history_text(request.recent_items)
        expected = cross.score([text] * len(rows), [catalog.titles[r] for r in rows.tolist()])
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)
        assert len(rows) == 7 and set(rows) <= set(base_rows)
        top = base_rows[np.argsort(-base_scores, kind="stable")[:7]]
        assert set(rows) == set(top)
    assert len(scored[3][0]) == 20  # no history text: the two-tower scores stay


def test_bench_reports_every_path_against_the_reference(cross_dir, tiny_artifacts) -> None:
    _, _, b, _ = tiny_artifacts
    settings = Settings(artifact=b.path, device="cpu", cross_top_n=5)
    report = bench_model(
        settings, Catalog.load(b.path / "catalog"), cross_dir, batch_size=4, batches=1, items=16
    )
    paths = {p["path"]: p for p in report["paths"]}
    assert list(paths) == ["two-tower fp32", "two-tower int8", "cross-encoder top 5"]
    assert paths["two-tower fp32"]["requests_ratio"] == 1.0
    assert all(p["requests_per_s"] > 0 and p["p99_batch_ms"] > 0 for p in paths.values())
    assert paths["cross-encoder top 5"]["item_encodes_per_s"] is None
    assert render_table(report).row_count == 3
