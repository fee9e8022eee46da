"""A reason for every item (``RankedItem.reason``, model/reasons.py): the fusion
ranker's name real sources, features and history items of the ranked
candidates; the two-tower ranker's a simpler one; the contract carries both."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from corpus.datasets import load_dataset
from model.fusion import FEATURES, FusionScorer
from model.ranker import Ranker
from model.reasons import SOURCES, most_similar_recent
from model.rerank import MMR
from model.scoring import TwoTowerScorer
from model.sequence import SeqConfig, SequenceModel, TrainingData, save, train_sequence_model
from streams.catalog import Catalog
from streams.contracts import (
    NO_EXPERIMENT,
    DeadLetter,
    RankedItem,
    RankRequest,
    Recommendation,
    ServedPolicy,
    encode_vector,
    parse,
)
from streams.retrieval import retrieve
from streams.signals import SignalsConfig, SignalsFeed, records

# Every feature weighs in, so every kind of reason can come up.
WEIGHTS = {
    "bias": 0.0,
    "weights": {
        "seq": 0.8,
        "seq_rank": 0.5,
        "lm": 1.0,
        "repeat": 0.5,
        "repeat_count": 1.0,
        "repeat_recency": -0.5,
        "last_item": -1.0,
        "covis": 0.6,
        "trend": 2.0,
        "popularity": -0.05,
        "category": 0.3,
        "last_category": 0.2,
    },
}


def _histories(dataset) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = defaultdict(list)
    inter = dataset.interactions
    for i in range(len(inter)):
        out[inter.user_id[i]].append((inter.item_id[i], float(inter.ts[i])))
    return out


@pytest.fixture(scope="module")
def world(generic_data, catalog_path, tmp_path_factory):
    """The generic dataset's catalog, a tiny sequence model trained on its users'
    orders, the item signals its events give, and one rank request per user."""
    catalog = Catalog.load(catalog_path)
    dataset = load_dataset(generic_data)
    histories = _histories(dataset)
    seqs = [np.array([catalog.row[i] for i, _ in h]) for h in histories.values()]
    times = [np.array([t for _, t in h]) for h in histories.values()]
    valid = [(s[:-1], t[:-1]) for s, t in zip(seqs[:4], times[:4], strict=True)]
    data = TrainingData(seqs, times, valid, np.array([s[-1] for s in seqs[:4]]))
    cfg = SeqConfig(dim=16, max_len=8, batch_size=8, max_epochs=4, eval_every=2, device="cpu")
    net, _ = train_sequence_model(catalog.vectors, data, cfg, progress=False)
    path = tmp_path_factory.mktemp("reasons-seq") / "model"
    save(net, catalog.item_ids, path, {})
    sequence = SequenceModel(path, device="cpu")

    feed = SignalsFeed(SignalsConfig())
    inter = dataset.interactions
    so_far: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for i in range(len(inter)):
        user, item, ts = inter.user_id[i], inter.item_id[i], float(inter.ts[i])
        feed.add(records(so_far[user], item, ts, window=5))
        so_far[user].append((item, ts))
    table = feed.flush()

    requests = []
    for user, h in histories.items():
        items = [i for i, _ in h]
        counts: dict[str, tuple[float, float]] = {}
        for item, ts in h:
            counts[item] = (counts.get(item, (0.0, 0.0))[0] + 1.0, ts)
        mix: dict[str, float] = defaultdict(float)
        for item in items:
            mix[catalog.categories[catalog.row[item]]] += 1.0
        vector = catalog.vectors[[catalog.row[i] for i in items]].mean(axis=0)
        vector /= np.linalg.norm(vector)
        last = h[-1][1]
        requests.append(
            RankRequest(
                request_id=f"r-{user}",
                user_id=user,
                k=8,
                m=10,
                user_vector=encode_vector(vector),
                counts=counts,
                last_ts=last,
                sequence=items,
                sequence_ts=[t for _, t in h],
                recent_items=list(dict.fromkeys(reversed(items))),
                category_mix=dict(mix),
                arrival_ts=last,
                created_ts=last,
            )
        )
    return catalog, sequence, table, requests


def _fusion_ranker(world, reasons: bool = True) -> tuple[Ranker, FusionScorer]:
    catalog, sequence, table, _ = world
    scorer = FusionScorer(
        catalog,
        None,
        sequence,
        WEIGHTS,
        seq_candidates=6,
        covis_candidates=6,
        trending_candidates=3,
    )
    scorer.signals = table
    return Ranker(scorer, MMR(), catalog, 0.7, "test", reasons=reasons), scorer


def _proposers(world, scorer: FusionScorer, request: RankRequest) -> dict[str, set[str]]:
    """Item -> the sources that proposed it, recomputed from each source on its own."""
    catalog, sequence, table, _ = world
    out: dict[str, set[str]] = defaultdict(set)
    (found,) = retrieve(catalog, [request], scorer.repeat_n)
    for row, source in zip(found.rows.tolist(), found.sources, strict=True):
        for name in source.split("+"):
            out[catalog.item_ids[row]].add({"ann": "retrieval"}.get(name, name))
    (lp,) = sequence.log_probs([request.sequence], [request.sequence_ts])
    for j in np.argsort(-lp, kind="stable")[: scorer.seq_candidates].tolist():
        out[sequence.item_ids[j]].add("seq")
    view = table.view(request.recent_items, request.sequence_ts[-1])
    for c in view.candidates(scorer.covis_candidates, scorer.trending_candidates):
        for name in c.source.split("+"):
            out[c.item_id].add(name)
    return out


def test_fusion_reasons_name_real_sources_features_and_history_items(world) -> None:
    catalog, _, table, requests = world
    ranker, scorer = _fusion_ranker(world)
    weights = WEIGHTS["weights"]
    seen_sources: set[str] = set()
    named_features = 0
    for request, rec in zip(requests, ranker.recommend(requests), strict=True):
        proposers = _proposers(world, scorer, request)
        history = set(request.sequence) | set(request.recent_items) | set(request.counts)
        assert len(rec.items) == request.k
        for item in rec.items:
            reason = item.reason
            assert reason is not None and set(reason) == {"source", "because", "top"}
            source = reason["source"]
            # The source is one of those that proposed this very candidate.
            assert source in SOURCES
            assert source in proposers[item.item_id], (item.item_id, source)
            seen_sources.add(source)
            # The named features are the item's own (w * x != 0), largest first.
            top = reason["top"]
            assert len(top) <= 3
            x = item.features or {}
            for name, contribution in top.items():
                assert name in FEATURES
                assert weights[name] * x.get(name, 0.0) != 0, (name, x)
                assert contribution > 0 and contribution == round(contribution, 3)
            assert list(top.values()) == sorted(top.values(), reverse=True)
            named_features += len(top)
            # Because: an item of the user's history, the one the source implies.
            because = reason["because"]
            assert because is None or because in history
            if source == "repeat":
                assert because == item.item_id
            elif source == "seq":
                assert because == request.sequence[-1]
            elif source == "covis":
                neighbours = dict(table.rows[because].neighbours)
                assert item.item_id in neighbours
            elif source == "retrieval":
                assert because in request.recent_items and because != item.item_id
            else:
                assert because is None
    # Not vacuous: the lists mix several sources and name features.
    assert len(seen_sources) >= 3, seen_sources
    assert named_features > 0


def test_the_strongest_source_wins_and_contributions_are_centred(world) -> None:
    """The reason's numbers are the scorer's: contributions w * (x - mean x), and
    the chosen source has the largest own-feature contribution of the proposers."""
    _, _, _, requests = world
    _, scorer = _fusion_ranker(world)
    request = requests[0]
    ((rows, scores, x, evidence),) = scorer.score_with_reasons([request])
    pos = np.argsort(-scores, kind="stable")[:5]
    w = np.array([WEIGHTS["weights"][f] for f in FEATURES], dtype=np.float32)
    contrib = (x[pos] - x.mean(axis=0)) * w
    for j, reason in enumerate(evidence.reasons(pos)):
        for name, c in reason["top"].items():
            assert c == pytest.approx(float(contrib[j, FEATURES.index(name)]), abs=1e-3)


def test_reasons_off_leave_the_lists_and_the_features_unchanged(world, monkeypatch) -> None:
    _, _, _, requests = world
    on, _ = _fusion_ranker(world, reasons=True)
    off, _ = _fusion_ranker(world, reasons=False)
    with_reasons = on.recommend(requests)
    without = off.recommend(requests)
    for a, b in zip(with_reasons, without, strict=True):
        assert [(i.item_id, i.score, i.features) for i in a.items] == [
            (i.item_id, i.score, i.features) for i in b.items
        ]
        assert all(i.reason is None for i in b.items)
    # The default follows the setting (STREAMREC_REASONS).
    monkeypatch.setenv("STREAMREC_REASONS", "false")
    assert Ranker(None, MMR(), None, 0.7, "t").reasons is False  # type: ignore[arg-type]
    monkeypatch.setenv("STREAMREC_REASONS", "true")
    assert Ranker(None, MMR(), None, 0.7, "t").reasons is True  # type: ignore[arg-type]


def test_two_tower_reasons_are_retrieval_or_repeat_with_the_most_similar_item(
    world, encoder
) -> None:
    catalog, _, _, requests = world
    ranker = Ranker(TwoTowerScorer(encoder, catalog), MMR(), catalog, 0.7, "t", reasons=True)
    cold = requests[0].model_copy(update={"user_vector": None, "counts": {}, "request_id": "c"})
    sources = set()
    asked = [*requests[:4], cold]
    for request, rec in zip(asked, ranker.recommend(asked), strict=True):
        for item in rec.items:
            reason = item.reason
            assert reason is not None and reason["top"] == {}
            sources.add(reason["source"])
            if reason["source"] == "repeat":
                assert item.item_id in request.counts and reason["because"] == item.item_id
            elif reason["source"] == "retrieval":
                row = catalog.row[item.item_id]
                (like,) = most_similar_recent(catalog, request.recent_items, np.array([row]))
                assert reason["because"] == like and like in request.recent_items
            else:
                assert reason["source"] == "popular" and request is cold
    assert {"repeat", "retrieval", "popular"} <= sources


def test_a_recommendation_with_and_without_reasons_round_trips() -> None:
    def rec(reason: dict | None) -> Recommendation:
        return Recommendation(
            rec_id="rec-1",
            request_id=None,
            user_id="u1",
            items=[
                RankedItem(item_id="i1", score=1.5, rank=1, features={"covis": 1.2}, reason=reason),
                RankedItem(item_id="i2", score=1.0, rank=2),
            ],
            experiment=NO_EXPERIMENT,
            policy=ServedPolicy(reranker="mmr", arm="mmr:0.7", trade_off=0.7),
            model_version="m",
            trigger_event_id=None,
            created_ts=1.0,
            latency_ms=2.0,
        )

    reason = {"source": "covis", "because": "i9", "top": {"covis": 1.23, "seq": 0.8}}
    for original in (rec(reason), rec(None)):
        back = parse(Recommendation, original.to_bytes())
        assert not isinstance(back, DeadLetter)
        assert back == original
        assert back.items[1].reason is None
    assert parse(Recommendation, rec(reason).to_bytes()).items[0].reason == reason
    # A list written before the field existed still parses.
    old = rec(None).to_bytes().replace(b',"reason":null', b"")
    assert b"reason" not in old
    assert parse(Recommendation, old) == rec(None)
    # Anything but an object (or null) is refused, not passed on.
    bad = rec(None).to_bytes().replace(b'"reason":null', b'"reason":"because"', 1)
    assert isinstance(parse(Recommendation, bad), DeadLetter)


def test_the_demo_report_prints_each_example_items_reason(generic_data) -> None:
    from rich.console import Console

    from streamrec.demo import DemoReport, _print_report

    dataset = load_dataset(generic_data)
    user = dataset.interactions.user_id[0]
    inter = dataset.interactions
    mine = [i for u, i in zip(inter.user_id, inter.item_id, strict=True) if u == user]
    reasons = [
        {"source": "covis", "because": mine[0], "top": {"covis": 1.2, "seq": 0.4}},
        {"source": "repeat", "because": mine[-1], "top": {"repeat_count": 0.9}},
        {"source": "seq", "because": mine[-1], "top": {}},
        {"source": "trending", "because": None, "top": {"trend": 0.7}},
    ]
    items = [
        {"item_id": i, "score": 1.0, "rank": r + 1, "reason": why}
        for r, (i, why) in enumerate(zip(["k1", "k2", "l1", "b1"], reasons, strict=True))
    ]
    report = DemoReport(events_in=len(dataset.interactions))
    report.lists[user] = {"items": items, "policy": {"arm": "mmr@0.7", "mode": "fixed"}}
    console = Console(record=True, width=220)
    _print_report(report, dataset, console)
    text = console.export_text()
    title = dataset.items[mine[0]].title
    assert "why" in text
    assert f"bought with {title[:20]}" in text and "(covis, seq)" in text
    assert "you bought it before (repeat_count)" in text
    assert f"next after {dataset.items[mine[-1]].title[:20]}" in text
    assert "trending (trend)" in text
    # Lists without reasons (STREAMREC_REASONS=false) print the two columns only.
    for x in items:
        x["reason"] = None
    console = Console(record=True, width=220)
    _print_report(report, dataset, console)
    text = console.export_text()
    assert "BLUE ENAMEL MUG" in text and "why" not in text
