"""A/B test statistics: intervals, the z-test, the mSPRT, the SRM check, the report.

Pure functions over counts (no Kafka, no torch). :mod:`experiments.report` reads
the topics and aggregates them into :class:`VariantCounts`;
:func:`build_report` turns those into an :class:`ExperimentReport`, which
renders as Markdown or JSON. The interval and test functions accept numpy
arrays as well as scalars (they broadcast), so simulations run this very code
vectorised over thousands of replicates.

Which p-value to read
---------------------
The two-proportion z-test is a fixed-horizon test: valid when the sample size
was chosen in advance and the result is read once. Reading it every day and
stopping when it "turns green" inflates its false-positive rate (20 looks at
alpha = 0.05 give about 20-25%). For teams that peek, the report also gives
the mixture sequential probability ratio test (mSPRT; Johari, Pekelis and
Walsh 2017, "Always valid inference"): an always-valid p-value and confidence
sequence that may be read after every record and still keep the
false-positive rate under alpha, at the price of wider intervals. We chose it
over group-sequential designs (alpha spending) because it needs no planned
number of looks: that suits a streaming report that anyone can run at any time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "Interval",
    "ZTest",
    "SequentialTest",
    "SrmCheck",
    "VariantCounts",
    "Comparison",
    "VariantReport",
    "ExperimentReport",
    "proportion_interval",
    "mean_interval",
    "two_proportion_ztest",
    "msprt",
    "srm_check",
    "choose_control",
    "build_report",
    "render_markdown",
    "render_json",
]

ArrayLike = float | np.ndarray


def _z(confidence: float) -> float:
    """The two-sided normal quantile: 1.96 for 95%."""
    return float(stats.norm.ppf(0.5 + confidence / 2.0))


def _out(x: Any) -> Any:
    """numpy 0-d results as Python floats; arrays stay arrays."""
    arr = np.asarray(x, dtype=float)
    return float(arr) if arr.ndim == 0 else arr


@dataclass(frozen=True)
class Interval:
    """An estimate and its two-sided interval ``[low, high]``."""

    estimate: ArrayLike
    low: ArrayLike
    high: ArrayLike


def proportion_interval(
    successes: ArrayLike, n: ArrayLike, confidence: float = 0.95, method: str = "wilson"
) -> Interval:
    """Interval for a proportion ``successes / n``.

    ``method="wilson"`` (the default) is the Wilson score interval: it stays
    inside [0, 1] and keeps its coverage for small counts and rates near 0,
    which is where click and purchase rates live. ``"normal"`` is the Wald
    interval ``p +- z sqrt(p(1-p)/n)``. ``n = 0`` gives NaN.

    Examples
    --------
    >>> ci = proportion_interval(10, 100)
    >>> round(ci.estimate, 3), round(ci.low, 4), round(ci.high, 4)
    (0.1, 0.0552, 0.1744)
    >>> ci = proportion_interval(10, 100, method="normal")
    >>> round(ci.low, 4), round(ci.high, 4)
    (0.0412, 0.1588)
    """
    if method not in ("wilson", "normal"):
        raise ValueError(f"method must be 'wilson' or 'normal', not {method!r}")
    x = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    z = _z(confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = x / n
        if method == "normal":
            half = z * np.sqrt(p * (1 - p) / n)
            return Interval(_out(p), _out(p - half), _out(p + half))
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return Interval(_out(p), _out(centre - half), _out(centre + half))


def mean_interval(
    n: ArrayLike, total: ArrayLike, total_sq: ArrayLike, confidence: float = 0.95
) -> Interval:
    """Normal-approximation interval for a mean, from sufficient statistics.

    Takes ``n``, the sum and the sum of squares of the values (for revenue
    per user: one value per user, zeros included), so a stream can aggregate
    without keeping every value. Uses the sample variance (ddof = 1); the
    interval is NaN below two values. Revenue is heavily skewed: the normal
    approximation needs many users (thousands), which an A/B test has.

    Examples
    --------
    >>> x = np.array([0.0, 0.0, 10.0, 0.0, 25.0, 0.0, 0.0, 5.0])
    >>> ci = mean_interval(len(x), x.sum(), (x**2).sum())
    >>> round(ci.estimate, 3), round(ci.low, 3), round(ci.high, 3)
    (5.0, -1.142, 11.142)
    """
    n = np.asarray(n, dtype=float)
    total = np.asarray(total, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / n
        var = np.maximum(np.asarray(total_sq, dtype=float) - n * mean**2, 0.0) / (n - 1)
        half = _z(confidence) * np.sqrt(var / n)
        half = np.where(n >= 2, half, np.nan)
    return Interval(_out(mean), _out(mean - half), _out(mean + half))


@dataclass(frozen=True)
class ZTest:
    """Two-proportion z-test of B against A.

    ``diff`` = p_B - p_A with its interval ``[diff_low, diff_high]``;
    ``lift`` = p_B / p_A - 1 with ``[lift_low, lift_high]``.
    """

    z: ArrayLike
    p_value: ArrayLike
    diff: ArrayLike
    diff_low: ArrayLike
    diff_high: ArrayLike
    lift: ArrayLike
    lift_low: ArrayLike
    lift_high: ArrayLike


def two_proportion_ztest(
    x_a: ArrayLike, n_a: ArrayLike, x_b: ArrayLike, n_b: ArrayLike, confidence: float = 0.95
) -> ZTest:
    """Pooled two-proportion z-test (two-sided) with lift intervals.

    The test statistic uses the pooled rate (the variance under H0: p_A = p_B);
    the interval for the absolute difference uses the unpooled standard error
    ``sqrt(p_A(1-p_A)/n_A + p_B(1-p_B)/n_B)`` (the variance where the rates
    differ). The relative lift's interval is the delta-method interval on
    ``log(p_B / p_A)``, exponentiated, so it is asymmetric and never below
    -100%. Undefined quantities (no successes at all, p_A = 0) are NaN.

    Examples
    --------
    >>> t = two_proportion_ztest(100, 1000, 130, 1000)
    >>> round(t.z, 3), round(t.p_value, 4)
    (2.103, 0.0355)
    >>> round(t.diff, 3), round(t.diff_low, 4), round(t.diff_high, 4)
    (0.03, 0.0021, 0.0579)
    >>> round(t.lift, 3), round(t.lift_low, 3), round(t.lift_high, 3)
    (0.3, 0.017, 0.662)
    """
    x_a, n_a, x_b, n_b = (np.asarray(v, dtype=float) for v in (x_a, n_a, x_b, n_b))
    z_crit = _z(confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_a, p_b = x_a / n_a, x_b / n_b
        diff = p_b - p_a
        pooled = (x_a + x_b) / (n_a + n_b)
        z = diff / np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
        p_value = 2 * stats.norm.sf(np.abs(z))
        half = z_crit * np.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
        lift = p_b / p_a - 1
        log_ratio = np.log(p_b / p_a)
        se_log = np.sqrt((1 - p_a) / x_a + (1 - p_b) / x_b)
        lift_low = np.exp(log_ratio - z_crit * se_log) - 1
        lift_high = np.exp(log_ratio + z_crit * se_log) - 1
    return ZTest(
        z=_out(z),
        p_value=_out(p_value),
        diff=_out(diff),
        diff_low=_out(diff - half),
        diff_high=_out(diff + half),
        lift=_out(lift),
        lift_low=_out(lift_low),
        lift_high=_out(lift_high),
    )


@dataclass(frozen=True)
class SequentialTest:
    """mSPRT of p_B - p_A = 0: always-valid p-value and confidence sequence.

    ``tau`` is the standard deviation of the normal mixing distribution that
    was used, in the units of the difference.
    """

    p_value: ArrayLike
    diff: ArrayLike
    low: ArrayLike
    high: ArrayLike
    tau: ArrayLike


def msprt(
    x_a: ArrayLike,
    n_a: ArrayLike,
    x_b: ArrayLike,
    n_b: ArrayLike,
    tau: ArrayLike,
    alpha: float = 0.05,
) -> SequentialTest:
    """Mixture SPRT for two proportions (normal approximation, Johari et al. 2017).

    With the observed difference ``d = p_B - p_A``, its variance
    ``V = p_A(1-p_A)/n_A + p_B(1-p_B)/n_B`` and a normal mixing distribution
    N(0, tau^2) over the true difference, the mixture likelihood ratio of
    "difference ~ N(0, tau^2)" against "difference = 0" is::

        Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

    Under H0 it is a (nonnegative) martingale, so by Ville's inequality
    P(Lambda ever exceeds 1/alpha) <= alpha: ``p = min(1, 1/Lambda)`` is an
    always-valid p-value at any look, chosen however the looks were chosen.
    (Keeping the running minimum of ``p`` over the looks, ``np.minimum.
    accumulate``, is valid too and never larger.) Inverting the same test
    gives the confidence sequence ``d +- sqrt(V (V + tau^2) / tau^2 *
    (2 log(1/alpha) + log((V + tau^2) / V)))``; it contains 0 exactly when
    ``p >= alpha``.

    ``tau`` tunes where the test is most sensitive: a difference around
    ``tau`` is detected soonest, much smaller ones later, much larger ones
    somewhat later than a tuned test would. Choose it from the effects past
    experiments saw; :func:`build_report` uses ``tau_relative`` (default 0.1,
    a 10% relative lift) times the control rate. ``tau = 0`` never rejects.

    Examples
    --------
    >>> t = msprt(1000, 10000, 1150, 10000, tau=0.01)
    >>> round(t.p_value, 4), round(t.low, 4), round(t.high, 4)
    (0.0182, 0.0016, 0.0284)
    >>> float(msprt(1000, 10000, 1000, 10000, tau=0.01).p_value)
    1.0
    """
    x_a, n_a, x_b, n_b = (np.asarray(v, dtype=float) for v in (x_a, n_a, x_b, n_b))
    tau2 = np.asarray(tau, dtype=float) ** 2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p_a, p_b = x_a / n_a, x_b / n_b
        diff = p_b - p_a
        var = p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b
        # log Lambda, so a large statistic does not overflow exp().
        log_lr = 0.5 * np.log(var / (var + tau2)) + tau2 * diff**2 / (2 * var * (var + tau2))
        p_value = np.where((var > 0) & (tau2 > 0), np.minimum(1.0, np.exp(-log_lr)), 1.0)
        half = np.sqrt(
            var * (var + tau2) / tau2 * (2 * math.log(1 / alpha) + np.log((var + tau2) / var))
        )
        half = np.where((var > 0) & (tau2 > 0), half, np.inf)
    return SequentialTest(
        p_value=_out(p_value),
        diff=_out(diff),
        low=_out(diff - half),
        high=_out(diff + half),
        tau=_out(np.sqrt(tau2)),
    )


@dataclass(frozen=True)
class SrmCheck:
    """Sample ratio mismatch: chi-square goodness of fit of users per variant."""

    chi2: float
    df: int
    p_value: float
    threshold: float
    observed: dict[str, int]
    expected_share: dict[str, float]
    mismatch: bool
    message: str


def srm_check(
    observed: Mapping[str, int],
    weights: Mapping[str, float] | None = None,
    threshold: float = 0.001,
) -> SrmCheck:
    """Chi-square test of observed users per variant against the configured weights.

    A mismatch (``p < threshold``; 0.001 by default, because the check runs
    on every report and a false alarm on a healthy experiment is costly)
    means the assignment or the logging is broken: the comparison between
    variants cannot be trusted, whatever its p-values say. ``weights`` need
    not sum to 1; ``None`` means equal weights over the observed variants. A
    variant observed but absent from ``weights`` is a mismatch by itself.

    Examples
    --------
    >>> srm_check({"control": 5020, "bandit": 4980}).mismatch
    False
    >>> s = srm_check({"control": 52000, "bandit": 48000}, {"control": 1, "bandit": 1})
    >>> s.mismatch, round(s.chi2, 1)
    (True, 160.0)
    """
    names = list(weights) if weights is not None else sorted(observed)
    unknown = sorted(set(observed) - set(names))
    counts = {name: int(observed.get(name, 0)) for name in [*names, *unknown]}
    raw = {name: float(weights[name]) if weights is not None else 1.0 for name in names}
    total_w = sum(raw.values())
    shares = {name: w / total_w for name, w in raw.items()}
    shares.update({name: 0.0 for name in unknown})
    n = sum(counts.values())
    if unknown and any(counts[u] for u in unknown):
        return SrmCheck(
            chi2=math.inf,
            df=len(counts) - 1,
            p_value=0.0,
            threshold=threshold,
            observed=counts,
            expected_share=shares,
            mismatch=True,
            message=f"sample ratio mismatch: variants {unknown} are not among the "
            f"configured ones {names}; check the assignment and the weights given",
        )
    if n == 0 or len(names) < 2:
        chi2, p = 0.0, 1.0
    else:
        expected = [shares[name] * n for name in names]
        chi2, p = stats.chisquare([counts[name] for name in names], expected)
        chi2, p = float(chi2), float(p)
    mismatch = p < threshold
    shown = ", ".join(f"{k} {counts[k]} ({shares[k]:.1%} expected)" for k in names)
    message = (
        f"sample ratio mismatch (p = {p:.2g} < {threshold:g}): {shown}; the assignment "
        "or the logging is broken, do not trust the comparison"
        if mismatch
        else f"sample ratio ok (p = {p:.2g}): {shown}"
    )
    return SrmCheck(
        chi2=chi2,
        df=max(len(names) - 1, 0),
        p_value=p,
        threshold=threshold,
        observed=counts,
        expected_share=shares,
        mismatch=mismatch,
        message=message,
    )


@dataclass(frozen=True)
class VariantCounts:
    """What :mod:`experiments.report` aggregates per (experiment, variant).

    ``users`` received at least one list; ``clicked_lists`` are lists with at
    least one attributed click; ``purchasers`` are users with at least one
    attributed purchase; ``revenue`` is the sum of attributed purchase revenue
    and ``revenue_sq`` the sum over users of (that user's revenue)^2.
    """

    users: int = 0
    lists: int = 0
    clicked_lists: int = 0
    clicks: int = 0
    purchases: int = 0
    purchasers: int = 0
    revenue: float = 0.0
    revenue_sq: float = 0.0


@dataclass(frozen=True)
class Comparison:
    """One metric of a variant against the control."""

    metric: str
    z_test: ZTest
    sequential: SequentialTest
    significant: bool


@dataclass(frozen=True)
class VariantReport:
    """One row of the report; ``lift`` is empty for the control."""

    name: str
    expected_share: float
    counts: VariantCounts
    ctr: Interval
    conversion: Interval
    revenue_per_user: Interval
    lift: dict[str, Comparison] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentReport:
    """Per-variant metrics, lifts against the control, and the SRM check.

    ``sequential`` says which p-value decides ``significant``: the mSPRT's
    (always valid under peeking) or the z-test's (one planned look).
    """

    experiment: str
    control: str
    alpha: float
    sequential: bool
    tau_relative: float
    variants: tuple[VariantReport, ...]
    srm: SrmCheck

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; NaN and infinities become None."""
        return _clean(asdict(self))


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def choose_control(variants: Sequence[str], declared: Sequence[str] = ()) -> str:
    """The variant named ``control``, else the first declared, else the first by name.

    >>> choose_control(["b", "a"]), choose_control(["b", "a"], declared=["b", "a"])
    ('a', 'b')
    """
    if "control" in variants:
        return "control"
    for name in declared:
        if name in variants:
            return name
    if not variants:
        raise ValueError("an experiment report needs at least one variant")
    return sorted(variants)[0]


def build_report(
    experiment: str,
    counts: Mapping[str, VariantCounts],
    weights: Mapping[str, float] | None = None,
    *,
    control: str | None = None,
    alpha: float = 0.05,
    sequential: bool = False,
    tau_relative: float = 0.1,
    srm_threshold: float = 0.001,
) -> ExperimentReport:
    """Per-variant metrics, lifts against the control and the SRM check.

    Definitions (each interval at ``1 - alpha``):

    - CTR = lists with >= 1 attributed click / lists shown (Wilson interval);
    - conversion = users with >= 1 attributed purchase / users (Wilson);
    - revenue per user = attributed purchase revenue / users, every user who
      received a list counting, zeros included (normal approximation).

    Each non-control variant gets a pooled z-test and an mSPRT (mixing sd
    ``tau = tau_relative x`` the control's rate) for CTR and conversion.
    Variants are ordered control first, then as declared in ``weights``, then
    by name; a declared variant with no data shows up with zero counts (and
    trips the SRM check). The CTR test treats lists as independent; when users
    see many lists each, their clicks correlate and its p-value is optimistic;
    conversion, per user (the unit of assignment), has no such caveat.

    Examples
    --------
    >>> r = build_report("div", {"control": VariantCounts(users=1000, lists=3000,
    ...     clicked_lists=300, clicks=320, purchasers=50, purchases=60, revenue=900.0,
    ...     revenue_sq=40000.0), "bandit": VariantCounts(users=1010, lists=3050,
    ...     clicked_lists=360, clicks=390, purchasers=55, purchases=70, revenue=1000.0,
    ...     revenue_sq=45000.0)})
    >>> [v.name for v in r.variants], r.srm.mismatch
    (['control', 'bandit'], False)
    >>> lift = r.variants[1].lift["ctr"]
    >>> round(lift.z_test.lift, 3), round(lift.z_test.p_value, 4), lift.significant
    (0.18, 0.0245, True)
    """
    declared = list(weights) if weights is not None else []
    names = [*declared, *sorted(set(counts) - set(declared))]
    control = control if control is not None else choose_control(names, declared)
    if control not in names:
        raise ValueError(f"control variant {control!r} is not among the variants {names}")
    names.remove(control)
    names.insert(0, control)
    data = {name: counts.get(name, VariantCounts()) for name in names}
    srm = srm_check({k: v.users for k, v in data.items()}, weights, srm_threshold)
    confidence = 1 - alpha
    base = data[control]
    rows = []
    for name, c in data.items():
        lift: dict[str, Comparison] = {}
        if name != control:
            for metric, xa, na, xb, nb in (
                ("ctr", base.clicked_lists, base.lists, c.clicked_lists, c.lists),
                ("conversion", base.purchasers, base.users, c.purchasers, c.users),
            ):
                z = two_proportion_ztest(xa, na, xb, nb, confidence)
                rate = xa / na if na else 0.0
                seq = msprt(xa, na, xb, nb, tau=tau_relative * rate, alpha=alpha)
                p = seq.p_value if sequential else z.p_value
                lift[metric] = Comparison(metric, z, seq, bool(p < alpha))
        rows.append(
            VariantReport(
                name=name,
                expected_share=srm.expected_share[name],
                counts=c,
                ctr=proportion_interval(c.clicked_lists, c.lists, confidence),
                conversion=proportion_interval(c.purchasers, c.users, confidence),
                revenue_per_user=mean_interval(c.users, c.revenue, c.revenue_sq, confidence),
                lift=lift,
            )
        )
    return ExperimentReport(
        experiment=experiment,
        control=control,
        alpha=alpha,
        sequential=sequential,
        tau_relative=tau_relative,
        variants=tuple(rows),
        srm=srm,
    )


def _pct(x: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.2%}" if signed else f"{x:.2%}"


def _ci(est: float, low: float, high: float, fmt: Any) -> str:
    if not math.isfinite(est):
        return "n/a"
    bounds = f" [{fmt(low)}, {fmt(high)}]" if math.isfinite(low) and math.isfinite(high) else ""
    return fmt(est) + bounds


def _num(x: float) -> str:
    return f"{x:,.2f}" if math.isfinite(x) else "n/a"


def _p(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.2g}" if x >= 1e-4 else "<1e-4"


def _markdown_one(r: ExperimentReport) -> list[str]:
    level = f"{1 - r.alpha:.0%}"
    decided = (
        f"mSPRT, always valid under peeking (tau = {r.tau_relative:g} x control rate)"
        if r.sequential
        else "z-test, fixed horizon (read once, at the planned sample size)"
    )
    lines = [
        f"## Experiment `{r.experiment}`",
        "",
        f"Control: `{r.control}`; {level} intervals; significance at alpha = {r.alpha:g} "
        f"by the {decided}.",
        "",
        f"| variant | share | users | lists | clicks | purchases | CTR [{level} CI] "
        f"| conversion [{level} CI] | revenue/user [{level} CI] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in r.variants:
        c, rpu = v.counts, v.revenue_per_user
        lines.append(
            f"| {v.name} | {v.expected_share:.0%} | {c.users:,} | {c.lists:,} | {c.clicks:,} "
            f"| {c.purchases:,} | {_ci(v.ctr.estimate, v.ctr.low, v.ctr.high, _pct)} "
            f"| {_ci(v.conversion.estimate, v.conversion.low, v.conversion.high, _pct)} "
            f"| {_ci(rpu.estimate, rpu.low, rpu.high, _num)} |"
        )
    compared = [v for v in r.variants if v.lift]
    if compared:
        ci_name = "always-valid CI" if r.sequential else "CI"
        lines += [
            "",
            f"Lift against `{r.control}`:",
            "",
            f"| variant | metric | difference [{level} {ci_name}] | relative lift [{level} CI] "
            "| z | p (z-test) | p (mSPRT) | significant |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for v in compared:
            for cmp in v.lift.values():
                z, s = cmp.z_test, cmp.sequential
                low, high = (s.low, s.high) if r.sequential else (z.diff_low, z.diff_high)
                diff = _ci(z.diff, low, high, lambda x: f"{x * 100:+.2f} pp")
                rel = _ci(z.lift, z.lift_low, z.lift_high, lambda x: _pct(x, signed=True))
                zs = f"{z.z:.2f}" if math.isfinite(z.z) else "n/a"
                lines.append(
                    f"| {v.name} | {cmp.metric.upper() if cmp.metric == 'ctr' else cmp.metric} "
                    f"| {diff} | {rel} | {zs} | {_p(z.p_value)} | {_p(s.p_value)} "
                    f"| {'yes' if cmp.significant else 'no'} |"
                )
    srm = r.srm
    lines += [
        "",
        f"**Warning: {srm.message}**" if srm.mismatch else srm.message[0].upper() + srm.message[1:],
    ]
    return lines


_DEFINITIONS = (
    "CTR = lists with at least one attributed click / lists shown. Conversion = users with "
    "at least one attributed purchase / users who received a list. Revenue/user = attributed "
    "purchase revenue (price x quantity) / users who received a list."
)


def render_markdown(reports: Sequence[ExperimentReport], notes: Sequence[str] = ()) -> str:
    """The reports as Markdown: one section per experiment, definitions, notes."""
    lines = ["# A/B experiment report", ""]
    if not reports:
        lines += ["No experiment traffic found.", ""]
    for r in reports:
        lines += [*_markdown_one(r), ""]
    lines.append(_DEFINITIONS)
    lines += ["", *(f"- {n}" for n in notes)] if notes else []
    return "\n".join(lines) + "\n"


def render_json(reports: Sequence[ExperimentReport], meta: Mapping[str, Any] | None = None) -> str:
    """The reports as strict JSON (no NaN): ``{"experiments": [...], "meta": {...}}``."""
    doc = {"experiments": [r.to_dict() for r in reports], "meta": _clean(dict(meta or {}))}
    return json.dumps(doc, indent=2, allow_nan=False)
