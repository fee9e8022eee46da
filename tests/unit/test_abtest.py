"""A/B statistics: hand-checked numbers, A/A and power simulations, SRM, rendering.

The simulations run the library functions vectorised over 2,000 replicates
(numpy broadcasting), so the whole file takes well under a second.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments.stats import (
    VariantCounts,
    build_report,
    mean_interval,
    msprt,
    proportion_interval,
    render_json,
    render_markdown,
    srm_check,
    two_proportion_ztest,
)

Z95 = 1.959963984540054
REPLICATES = 2000


def _phi_sf(z: float) -> float:
    """1 - Phi(z), written with erfc so the check does not reuse scipy."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_ztest_matches_the_textbook_formulas() -> None:
    xa, na, xb, nb = 100, 1000, 130, 1000
    pa, pb = xa / na, xb / nb
    pooled = (xa + xb) / (na + nb)
    z = (pb - pa) / math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    se = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    se_log = math.sqrt((1 - pa) / xa + (1 - pb) / xb)

    t = two_proportion_ztest(xa, na, xb, nb)

    assert t.z == pytest.approx(z) == pytest.approx(2.1027, abs=1e-4)
    assert t.p_value == pytest.approx(2 * _phi_sf(z)) == pytest.approx(0.03549, abs=1e-5)
    assert (t.diff, t.diff_low, t.diff_high) == pytest.approx(
        (0.03, 0.03 - Z95 * se, 0.03 + Z95 * se)
    )
    assert (t.lift, t.lift_low, t.lift_high) == pytest.approx(
        (0.3, 1.3 * math.exp(-Z95 * se_log) - 1, 1.3 * math.exp(Z95 * se_log) - 1)
    )


def test_ztest_is_symmetric_and_undefined_without_data() -> None:
    ab, ba = two_proportion_ztest(40, 500, 55, 480), two_proportion_ztest(55, 480, 40, 500)
    assert ab.z == pytest.approx(-ba.z)
    assert ab.p_value == pytest.approx(ba.p_value)
    empty = two_proportion_ztest(0, 100, 0, 100)
    assert math.isnan(empty.z) and math.isnan(empty.lift)


def test_wilson_and_normal_intervals() -> None:
    x, n = 10, 100
    p = x / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 / (1 + Z95**2 / n) * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2))
    w = proportion_interval(x, n)
    assert (w.estimate, w.low, w.high) == pytest.approx((p, centre - half, centre + half))
    wald = proportion_interval(x, n, method="normal")
    assert (wald.low, wald.high) == pytest.approx(
        (p - Z95 * math.sqrt(p * (1 - p) / n), p + Z95 * math.sqrt(p * (1 - p) / n))
    )
    zero = proportion_interval(0, 50)
    assert zero.low == pytest.approx(0.0, abs=1e-12) and 0 < zero.high < 0.1
    with pytest.raises(ValueError, match="wilson"):
        proportion_interval(1, 2, method="exact")


def test_mean_interval_from_sufficient_statistics() -> None:
    rng = np.random.default_rng(3)
    x = rng.exponential(20.0, 500) * (rng.random(500) < 0.1)
    ci = mean_interval(len(x), x.sum(), (x**2).sum())
    half = Z95 * x.std(ddof=1) / math.sqrt(len(x))
    assert (ci.estimate, ci.low, ci.high) == pytest.approx(
        (x.mean(), x.mean() - half, x.mean() + half)
    )
    assert math.isnan(mean_interval(1, 5.0, 25.0).low)


def test_msprt_matches_the_mixture_likelihood_ratio() -> None:
    xa, na, xb, nb, tau = 1000, 10000, 1150, 10000, 0.01
    pa, pb = xa / na, xb / nb
    v = pa * (1 - pa) / na + pb * (1 - pb) / nb
    d = pb - pa
    lr = math.sqrt(v / (v + tau**2)) * math.exp(tau**2 * d**2 / (2 * v * (v + tau**2)))
    half = math.sqrt(v * (v + tau**2) / tau**2 * (2 * math.log(20) + math.log((v + tau**2) / v)))

    s = msprt(xa, na, xb, nb, tau=tau)

    assert s.p_value == pytest.approx(1 / lr)
    assert (s.low, s.high) == pytest.approx((d - half, d + half))
    # The always-valid interval is wider than the fixed-horizon one.
    t = two_proportion_ztest(xa, na, xb, nb)
    assert s.low < t.diff_low and s.high > t.diff_high
    # p < alpha exactly when the confidence sequence excludes 0.
    for xb in range(1000, 1300, 7):
        s = msprt(xa, na, xb, nb, tau=tau)
        assert (s.p_value < 0.05) == (s.low > 0 or s.high < 0)


def _cumulative_looks(
    rng: np.random.Generator, p_a: float, p_b: float, n: int, looks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative successes of both arms at ``looks`` equally spaced looks."""
    step = n // looks
    xa = rng.binomial(step, p_a, (REPLICATES, looks)).cumsum(axis=1)
    xb = rng.binomial(step, p_b, (REPLICATES, looks)).cumsum(axis=1)
    return xa, xb, step * np.arange(1, looks + 1)


def _msprt_rejects(xa: np.ndarray, ns: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Reject at any look, with tau as the report sets it (0.1 x the control rate)."""
    return (msprt(xa, ns, xb, ns, tau=0.1 * xa / ns).p_value < 0.05).any(axis=1)


def test_aa_false_positive_rates() -> None:
    rng = np.random.default_rng(20240601)
    p, n = 0.10, 20_000

    xa, xb, ns = _cumulative_looks(rng, p, p, n, looks=20)
    once = float((two_proportion_ztest(xa[:, -1], n, xb[:, -1], n).p_value < 0.05).mean())
    peeking = float((two_proportion_ztest(xa, ns, xb, ns).p_value < 0.05).any(axis=1).mean())
    sequential = float(_msprt_rejects(xa, ns, xb).mean())
    print(
        f"A/A false-positive rate at alpha=0.05 over {REPLICATES} runs: z-test once "
        f"{once:.4f}, z-test peeking 20x {peeking:.4f}, mSPRT peeking 20x {sequential:.4f}"
    )

    assert 0.035 <= once <= 0.065
    assert peeking > 0.05, "peeking at a fixed-horizon test inflates its error rate"
    assert sequential <= 0.05


def test_a_true_lift_is_detected() -> None:
    rng = np.random.default_rng(7)
    p_a, p_b = 0.10, 0.12

    n = 6000  # per arm: about 94% power at alpha = 0.05
    xa, xb = rng.binomial(n, p_a, REPLICATES), rng.binomial(n, p_b, REPLICATES)
    power = float((two_proportion_ztest(xa, n, xb, n).p_value < 0.05).mean())

    xa, xb, ns = _cumulative_looks(rng, p_a, p_b, 20_000, looks=20)
    eventually = float(_msprt_rejects(xa, ns, xb).mean())
    print(f"power: z-test at n={n}/arm {power:.4f}; mSPRT by n=20000/arm {eventually:.4f}")

    assert power > 0.8
    assert eventually > 0.99


def test_srm_passes_a_balanced_split_and_flags_52_48() -> None:
    ok = srm_check({"control": 50_000, "bandit": 50_000}, {"control": 0.5, "bandit": 0.5})
    assert not ok.mismatch and ok.p_value == pytest.approx(1.0)
    assert not srm_check({"control": 5_030, "bandit": 4_970}).mismatch

    bad = srm_check({"control": 52_000, "bandit": 48_000}, {"control": 0.5, "bandit": 0.5})
    assert bad.mismatch and bad.p_value < 1e-30
    assert bad.chi2 == pytest.approx(2 * 2000**2 / 50_000)
    assert "sample ratio mismatch" in bad.message

    unequal = srm_check({"a": 9_000, "b": 1_000}, {"a": 0.9, "b": 0.1})
    assert not unequal.mismatch
    assert srm_check({"a": 9_000, "b": 1_000}).mismatch  # equal weights assumed
    stray = srm_check({"a": 10, "b": 10, "zz": 3}, {"a": 1, "b": 1})
    assert stray.mismatch and "zz" in stray.message
    assert not srm_check({"a": 10}, threshold=0.5).mismatch


def _counts(users: int, ctr: float, conv: float, seed: int) -> VariantCounts:
    rng = np.random.default_rng(seed)
    lists = 3 * users
    buyers = rng.binomial(users, conv)
    revenue = rng.gamma(2.0, 15.0, buyers)
    return VariantCounts(
        users=users,
        lists=lists,
        clicked_lists=int(rng.binomial(lists, ctr)),
        clicks=int(rng.binomial(lists, ctr * 1.1)),
        purchases=int(buyers * 1.2),
        purchasers=int(buyers),
        revenue=float(revenue.sum()),
        revenue_sq=float((revenue**2).sum()),
    )


@pytest.fixture
def report():
    counts = {
        "bandit": _counts(10_100, 0.12, 0.05, 1),
        "control": _counts(10_000, 0.10, 0.04, 2),
        "mmr-0.4": _counts(9_950, 0.10, 0.04, 3),
    }
    return build_report("diversity-v1", counts, {"control": 1, "mmr-0.4": 1, "bandit": 1})


def test_report_structure(report) -> None:
    assert report.control == "control"
    assert [v.name for v in report.variants] == ["control", "mmr-0.4", "bandit"]
    control, _, bandit = report.variants
    assert control.lift == {}
    assert set(bandit.lift) == {"ctr", "conversion"}
    c = bandit.counts
    assert bandit.ctr.estimate == pytest.approx(c.clicked_lists / c.lists)
    assert bandit.conversion.estimate == pytest.approx(c.purchasers / c.users)
    assert bandit.revenue_per_user.estimate == pytest.approx(c.revenue / c.users)
    ctr = bandit.lift["ctr"]
    assert ctr.significant and ctr.z_test.p_value < 1e-6 and ctr.sequential.p_value < 0.05
    assert not report.srm.mismatch
    assert report.variants[1].expected_share == pytest.approx(1 / 3)


def test_control_is_named_or_first_declared() -> None:
    counts = {"a": _counts(1000, 0.1, 0.04, 1), "b": _counts(1000, 0.1, 0.04, 2)}
    assert build_report("e", counts, {"b": 1, "a": 1}).control == "b"
    assert build_report("e", counts).control == "a"
    assert build_report("e", counts, control="b").variants[0].name == "b"
    with pytest.raises(ValueError, match="control"):
        build_report("e", counts, control="zz")


def test_sequential_decides_on_the_msprt() -> None:
    # A lift the z-test calls significant but the always-valid test does not yet.
    counts = {
        "control": VariantCounts(users=2000, lists=2000, clicked_lists=200),
        "b": VariantCounts(users=2000, lists=2000, clicked_lists=240),
    }
    fixed = build_report("e", counts).variants[1].lift["ctr"]
    seq = build_report("e", counts, sequential=True).variants[1].lift["ctr"]
    assert fixed.z_test.p_value < 0.05 < fixed.sequential.p_value
    assert fixed.significant and not seq.significant


def test_markdown_has_a_row_per_variant(report) -> None:
    text = render_markdown([report], notes=["duplicate lists: 0"])
    assert "## Experiment `diversity-v1`" in text
    for v in report.variants:
        assert f"| {v.name} | {v.expected_share:.0%} | {v.counts.users:,} |" in text
    assert "| bandit | CTR |" in text and "| mmr-0.4 | conversion |" in text
    assert "Sample ratio ok" in text and "- duplicate lists: 0" in text
    skewed = {"control": _counts(52_000, 0.1, 0.04, 1), "b": _counts(48_000, 0.1, 0.04, 2)}
    srm = build_report("e", skewed)
    assert "**Warning: sample ratio mismatch" in render_markdown([srm])


def test_json_round_trips(report) -> None:
    text = render_json([report], meta={"lists": 3})
    doc = json.loads(text)
    assert doc == {"experiments": [report.to_dict()], "meta": {"lists": 3}}
    row = doc["experiments"][0]["variants"][2]
    assert row["name"] == "bandit"
    assert row["lift"]["ctr"]["z_test"]["p_value"] == pytest.approx(
        report.variants[2].lift["ctr"].z_test.p_value
    )


def test_json_has_no_nan_for_empty_variants() -> None:
    r = build_report("e", {"control": VariantCounts(users=10, lists=10)}, {"control": 1, "b": 1})
    doc = json.loads(render_json([r]))  # strict JSON: NaN would have raised
    b = doc["experiments"][0]["variants"][1]
    assert b["counts"]["users"] == 0 and b["ctr"]["estimate"] is None
    assert doc["experiments"][0]["srm"]["observed"] == {"control": 10, "b": 0}
