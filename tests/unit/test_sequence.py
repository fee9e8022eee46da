"""The sequence model (model.sequence) and the fusion ranker (model.fusion), offline."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import model.sequence as sequence_module
from model.fusion import FEATURES, FusionScorer, fit_weights
from model.sequence import (
    SeqConfig,
    SequenceModel,
    TrainingData,
    gap_buckets,
    save,
    train_sequence_model,
)
from streams.catalog import Catalog
from streams.contracts import RankRequest, WeightSet, encode_vector

N_ITEMS = 12


def test_doctests() -> None:
    assert doctest.testmod(sequence_module).failed == 0


def test_gap_buckets_mark_baskets_and_grow_with_the_gap() -> None:
    ts = np.array([0.0, 30.0, 30.0 + 7200, 30.0 + 7200 + 40 * 86400.0])
    b = gap_buckets(ts)
    assert b[1] == 0  # same basket
    assert b[2] < b[3]
    assert gap_buckets(np.zeros(0)).shape == (0,)


def _cyclic_data(users: int = 40, length: int = 30) -> TrainingData:
    """Each user walks the cycle 0 -> 1 -> ... -> 11 -> 0 from a random start."""
    rng = np.random.default_rng(0)
    seqs, times = [], []
    for _ in range(users):
        start = int(rng.integers(N_ITEMS))
        seqs.append((start + np.arange(length)) % N_ITEMS)
        times.append(np.arange(length, dtype=np.float64) * 3600.0)
    hist = [(s[:-1], t[:-1]) for s, t in zip(seqs[:10], times[:10], strict=True)]
    return TrainingData(seqs, times, hist, np.array([s[-1] for s in seqs[:10]]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    vectors = np.random.default_rng(1).normal(size=(N_ITEMS, 8)).astype(np.float32)
    cfg = SeqConfig(dim=16, max_len=10, batch_size=16, max_epochs=30, eval_every=5, device="cpu")
    model, history = train_sequence_model(vectors, _cyclic_data(), cfg, progress=False)
    path = tmp_path_factory.mktemp("seq") / "model"
    save(model, [f"i{j}" for j in range(N_ITEMS)], path, {"history": history})
    return SequenceModel(path, device="cpu"), history


def test_it_learns_an_order_that_a_bag_of_items_cannot_see(trained) -> None:
    model, history = trained
    assert history[-1]["best_ndcg@10"] > 0.9
    # The same set of items, in two orders: the next item follows the order.
    lp = model.log_probs([["i3", "i4", "i5"], ["i5", "i4", "i3"]], [[0.0, 3600.0, 7200.0]] * 2)
    assert int(np.argmax(lp[0])) == 6
    assert not np.allclose(lp[0], lp[1], atol=1e-3)


def test_unknown_items_are_skipped_and_an_empty_history_still_scores(trained) -> None:
    model, _ = trained
    lp = model.log_probs([["nope", "i3"], [], ["i3"]], [[0.0, 1.0], [], [1.0]])
    assert np.isfinite(lp).all()
    assert np.allclose(lp[0], lp[2], atol=1e-5)
    assert np.allclose(np.exp(lp).sum(1), 1.0, atol=1e-4)


def test_onnx_runtime_serves_the_same_log_probs_as_torch(trained) -> None:
    model, _ = trained
    path = model.path
    onnx, plain = SequenceModel(path, device="cpu"), SequenceModel(path, runtime="torch")
    rng = np.random.default_rng(5)
    # Empty, short, and longer than max_len (10): every window shape serving sees.
    lengths = [0, 1, 3, 10, 25]
    seqs = [[f"i{j}" for j in rng.integers(0, N_ITEMS, n)] for n in lengths]
    times = [np.cumsum(rng.exponential(3600.0, n)).tolist() for n in lengths]
    expected = plain.log_probs(seqs, times)
    for batch in (seqs, seqs[3:4]):  # a batch, and one request alone
        got = onnx.log_probs(batch, times[: len(batch)] if batch is seqs else times[3:4])
        want = expected if batch is seqs else expected[3:4]
        assert np.allclose(got, want, atol=1e-4)
    assert (onnx.runtime, plain.runtime) == ("onnxruntime", "torch")


def test_fit_weights_finds_the_feature_that_picks_the_target() -> None:
    rng = np.random.default_rng(3)
    groups = []
    for _ in range(200):
        x = rng.normal(size=(20, len(FEATURES))).astype(np.float32)
        target = int(np.argmax(x[:, FEATURES.index("repeat_count")]))
        groups.append((x, target))
    groups.append((x, -1))  # target not retrieved: skipped
    w = fit_weights(groups)
    weights = w["weights"]
    assert weights["repeat_count"] == max(weights.values())
    assert w["fitted_on"] == {"groups": 200, "skipped": 1}


def _catalog() -> Catalog:
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(N_ITEMS, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Catalog(
        item_ids=[f"i{j}" for j in range(N_ITEMS)],
        titles=[f"item {j}" for j in range(N_ITEMS)],
        categories=[None] * N_ITEMS,
        vectors=vectors,
        popularity=np.ones(N_ITEMS, dtype=np.float32),
    )


def _request(**kw) -> RankRequest:
    # Retrieval finds i1 (the user vector is i1's own, m = 1) and the repeat
    # candidate i7 (bought three times, a day before the user's last event).
    base = dict(
        request_id="r1",
        user_id="u1",
        k=5,
        m=1,
        user_vector=encode_vector(_catalog().vectors[1]),
        counts={"i7": (3.0, 7200.0 - 86400.0)},
        last_ts=7200.0,
        sequence=["i3", "i4", "i5"],
        sequence_ts=[0.0, 3600.0, 7200.0],
        recent_items=["i5", "i4", "i3"],
        arrival_ts=7200.0,
        created_ts=7200.0,
    )
    return RankRequest(**{**base, **kw})


def test_fusion_merges_sources_and_respects_exclude(trained) -> None:
    model, _ = trained
    scorer = FusionScorer(_catalog(), None, model, seq_candidates=4)
    ((rows, x),) = scorer.featurize([_request(exclude=["i6"])])
    items = [f"i{r}" for r in rows]
    assert len(items) == len(set(items))
    assert "i6" not in items  # the sequence model's top item, but excluded
    assert {"i1", "i7"} <= set(items)
    col = {f: j for j, f in enumerate(FEATURES)}
    seven = items.index("i7")
    assert x[seven, col["repeat"]] == 1.0
    assert x[seven, col["repeat_count"]] == pytest.approx(np.log1p(3.0))
    assert x[seven, col["repeat_recency"]] == pytest.approx(0.5)
    assert x[items.index("i1"), col["repeat"]] == 0.0


def test_fusion_scores_are_the_linear_form_of_the_features(trained) -> None:
    model, _ = trained
    weights = {"bias": 0.5, "weights": {"seq": 2.0, "repeat_count": 1.0}}
    scorer = FusionScorer(_catalog(), None, model, weights, seq_candidates=4)
    ((rows, scores, x),) = scorer.score_with_features([_request()])
    col = {f: j for j, f in enumerate(FEATURES)}
    expected = 0.5 + 2.0 * x[:, col["seq"]] + x[:, col["repeat_count"]]
    assert np.allclose(scores, expected, atol=1e-5)
    scorer.set_weights({"bias": 0.0, "weights": {"repeat_count": 1.0}})
    ((_, again),) = scorer.score([_request()])
    assert np.allclose(again, x[:, col["repeat_count"]])


def test_requests_with_the_seen_filter_use_the_masked_weights(trained) -> None:
    model, _ = trained
    weights = {
        "bias": 0.0,
        "weights": {"repeat_count": 1.0},
        "masked": {"bias": 0.0, "weights": {"seq": 1.0}},
    }
    scorer = FusionScorer(_catalog(), None, model, weights, seq_candidates=4)
    col = {f: j for j, f in enumerate(FEATURES)}
    plain, masked = scorer.score_with_features([_request(), _request(filter_seen=True)])
    assert np.allclose(plain[1], plain[2][:, col["repeat_count"]])
    assert np.allclose(masked[1], masked[2][:, col["seq"]])
    # A published online set replaces only the slot it names.
    scorer.set_weights({"bias": 1.0, "weights": {}, "filter_seen": True})
    assert scorer.weights.masked == WeightSet(bias=1.0, weights={})
    assert scorer.weights.weights == {"repeat_count": 1.0}


def test_candidate_ranks_match_a_stable_descending_argsort() -> None:
    from model.fusion import _ranks

    rng = np.random.default_rng(5)
    values = rng.integers(0, 30, size=400).astype(np.float32)  # many ties
    order = np.argsort(-values, kind="stable")
    expected = np.empty(len(values), dtype=np.float32)
    expected[order] = np.arange(len(values))
    at = rng.integers(0, len(values), size=120)
    np.testing.assert_array_equal(_ranks(values, np.sort(values), at), expected[at])


def test_the_serving_path_equals_the_full_forward_at_the_last_position(trained) -> None:
    """Last layer for the last position only, shared left padding cut: the same
    state as the whole window through every layer."""
    import torch

    model, _ = trained
    net = model.model
    rng = np.random.default_rng(3)
    tokens = np.zeros((6, net.cfg.max_len), dtype=np.int64)
    for row, n in enumerate([0, 1, 3, 5, 7, 2]):
        if n:
            tokens[row, -n:] = rng.integers(1, len(model.item_ids) + 1, size=n)
    gaps = rng.integers(0, 3, size=tokens.shape)
    with torch.no_grad():
        full = net.forward(torch.as_tensor(tokens), torch.as_tensor(gaps))[:, -1]
        start = net.cfg.max_len - 7
        cut = net.user(
            torch.as_tensor(tokens[:, start:]), torch.as_tensor(gaps[:, start:]), start=start
        )
    np.testing.assert_allclose(cut.numpy(), full.numpy(), rtol=1e-4, atol=1e-5)
