"""Tests for attnbench.stats: against scipy, hand-computed values, and hypothesis properties."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats as sps
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbench.analysis import stats as S

FAST = settings(max_examples=50, deadline=None)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


def lognormal(n, median=1.0, sigma=0.05, seed=0):
    return median * np.random.default_rng(seed).lognormal(0.0, sigma, n)


# --------------------------------------------------------------------------- basics


def test_median_known_arrays():
    assert S.median([3.0, 1.0, 2.0]) == 2.0
    assert S.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert S.median(np.array([7.5])) == 7.5
    assert isinstance(S.median(np.array([1, 2, 3])), float)


def test_iqr_and_cv_match_scipy():
    x = lognormal(101, sigma=0.3, seed=1)
    assert S.iqr(x) == pytest.approx(sps.iqr(x))
    assert S.iqr([1, 2, 3, 4, 5]) == pytest.approx(2.0)
    assert S.cv(x) == pytest.approx(np.std(x, ddof=1) / np.mean(x))
    assert S.cv([2.0, 2.0, 2.0]) == 0.0
    assert S.cv([5.0]) == 0.0
    assert S.cv([1.0, 3.0]) == pytest.approx(math.sqrt(2) / 2)


def test_outlier_fraction():
    x = [1.0] * 4 + [2.0] * 4 + [100.0, -100.0]
    # Q1 = 1, Q3 = 2, IQR = 1 -> fences at -2 and 5 for k=3: two of ten samples are outside.
    assert S.outlier_fraction(x) == pytest.approx(0.2)
    assert S.outlier_fraction([1.0, 1.0, 1.0]) == 0.0
    assert S.outlier_fraction(list(range(20))) == 0.0
    # A smaller k flags more.
    assert S.outlier_fraction([0, 1, 2, 3, 4, 5, 6, 7, 8, 30], k=1.0) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "fn",
    [S.median, S.iqr, S.cv, S.outlier_fraction, S.median_ci, S.median_ci_order, S.relative_halfwidth,
     S.geomean, S.summarize],
)
def test_empty_input_raises(fn):
    with pytest.raises(ValueError, match="empty"):
        fn([])


def test_two_sample_empty_raises():
    for fn in (S.mann_whitney, S.cliffs_delta, S.ratio_ci):
        with pytest.raises(ValueError, match="empty"):
            fn([], [1.0])
        with pytest.raises(ValueError, match="empty"):
            fn([1.0], np.array([]))
    with pytest.raises(ValueError, match="empty"):
        S.geomean_ratio_ci([])


def test_nonfinite_and_nonpositive_rejected():
    with pytest.raises(ValueError):
        S.median([1.0, float("nan")])
    with pytest.raises(ValueError, match="positive"):
        S.ratio_ci([1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        S.geomean([1.0, -1.0])
    with pytest.raises(ValueError):
        S.median_ci([1.0, 2.0], method="student")


# --------------------------------------------------------------------------- median CIs


def test_median_ci_matches_scipy_percentile():
    x = lognormal(60, sigma=0.2, seed=2)
    ref = sps.bootstrap((x,), np.median, n_resamples=300, method="percentile",
                        rng=np.random.default_rng(7)).confidence_interval
    lo, hi = S.median_ci(x, method="percentile", n_resamples=300, seed=7)
    assert lo == pytest.approx(ref.low)
    assert hi == pytest.approx(ref.high)
    assert lo < S.median(x) < hi


def test_median_ci_bca_reproducible_and_sane():
    x = lognormal(80, sigma=0.2, seed=3)
    ci1 = S.median_ci(x, n_resamples=300, seed=1)
    ci2 = S.median_ci(x, n_resamples=300, seed=1)
    assert ci1 == ci2
    assert ci1[0] < S.median(x) < ci1[1]
    # Higher confidence -> wider interval (same resamples).
    wide = S.median_ci(x, confidence=0.99, n_resamples=300, seed=1)
    assert wide[0] <= ci1[0] and wide[1] >= ci1[1]


def test_median_ci_degenerate_cases_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert S.median_ci([4.2]) == (4.2, 4.2)
        assert S.median_ci([3.0] * 10) == (3.0, 3.0)
        # Heavy ties: every leave-one-out median is 1, so BCa's jackknife is degenerate (NaN);
        # the function falls back to the percentile interval, silently.
        x = [1.0, 1.0, 1.0, 1.0, 2.0]
        bca = S.median_ci(x, method="bca", n_resamples=200, seed=0)
        pct = S.median_ci(x, method="percentile", n_resamples=200, seed=0)
    assert all(math.isfinite(v) for v in bca)
    assert bca == pct
    assert bca[0] <= 1.0 <= bca[1]


def test_median_ci_order_hand_values():
    x = np.arange(10.0)[::-1]  # unsorted input
    # n=10: P(B<=1) = 11/1024 <= 0.025 < P(B<=2) = 56/1024 -> ranks 2 and 9 (1-based).
    assert S.median_ci_order(x) == (1.0, 8.0)
    # n=6: P(B<=0) = 1/64 <= 0.025 -> ranks 1 and 6: the full range.
    assert S.median_ci_order([5, 1, 3, 2, 4, 6]) == (1.0, 6.0)
    # Tiny n: full range.
    assert S.median_ci_order([2.0, 1.0]) == (1.0, 2.0)


def test_median_ci_order_coverage():
    rng = np.random.default_rng(4)
    hits = 0
    reps = 400
    for _ in range(reps):
        x = rng.exponential(1.0, 25)  # true median ln 2
        lo, hi = S.median_ci_order(x)
        hits += lo <= math.log(2) <= hi
    # Exact coverage for n=25 is ~0.957 (conservative); allow for Monte-Carlo noise.
    assert hits / reps >= 0.92


def test_relative_halfwidth():
    assert S.relative_halfwidth([1.0, 2.0, 3.0]) == math.inf
    assert S.relative_halfwidth([-1.0] * 10) == math.inf
    x = np.arange(1.0, 11.0)  # median 5.5, CI (2, 9)
    assert S.relative_halfwidth(x) == pytest.approx((9 - 2) / 2 / 5.5)
    tight = lognormal(200, sigma=0.01, seed=5)
    loose = lognormal(200, sigma=0.2, seed=5)
    assert S.relative_halfwidth(tight) < S.relative_halfwidth(loose)


# --------------------------------------------------------------------------- tests and effect sizes


def test_mann_whitney_matches_scipy():
    a = lognormal(30, sigma=0.1, seed=6)
    b = lognormal(40, median=1.05, sigma=0.1, seed=7)
    ref = sps.mannwhitneyu(a, b, alternative="two-sided", method="auto").pvalue
    assert S.mann_whitney(a, b) == pytest.approx(ref)
    assert S.mann_whitney([2.0] * 5, [2.0] * 7) == 1.0
    assert S.mann_whitney(np.arange(10.0), np.arange(10.0) + 100) < 1e-3


def _cliffs_brute(a, b):
    return sum(int(x > y) - int(x < y) for x in a for y in b) / (len(a) * len(b))


def test_cliffs_delta_against_brute_force():
    rng = np.random.default_rng(8)
    for _ in range(5):
        a = rng.integers(0, 20, rng.integers(1, 40)).astype(float)  # integers -> many ties
        b = rng.normal(10, 5, rng.integers(1, 40)).round()
        assert S.cliffs_delta(a, b) == pytest.approx(_cliffs_brute(a, b))
    assert S.cliffs_delta([5, 6, 7], [1, 2]) == 1.0
    assert S.cliffs_delta([1, 2], [5, 6, 7]) == -1.0
    assert S.cliffs_delta([1, 1], [1, 1, 1]) == 0.0


def test_cliffs_magnitude_thresholds():
    assert S.cliffs_magnitude(0.0) == "negligible"
    assert S.cliffs_magnitude(-0.146) == "negligible"
    assert S.cliffs_magnitude(0.147) == "small"
    assert S.cliffs_magnitude(-0.32) == "small"
    assert S.cliffs_magnitude(0.33) == "medium"
    assert S.cliffs_magnitude(0.473) == "medium"
    assert S.cliffs_magnitude(-0.474) == "large"
    assert S.cliffs_magnitude(1.0) == "large"


def test_holm_hand_values():
    assert S.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert S.holm([]) == []
    assert S.holm([0.5]) == [0.5]
    assert S.holm([0.3, 0.6, 0.001]) == pytest.approx([0.6, 0.6, 0.003])
    assert S.holm(np.array([0.9, 0.8])) == pytest.approx([1.0, 1.0])


# --------------------------------------------------------------------------- ratios


def test_ratio_ci_covers_known_ratio():
    true = 1.2
    hits = 0
    reps = 40
    for i in range(reps):
        a = lognormal(100, median=true, sigma=0.1, seed=100 + i)
        b = lognormal(100, median=1.0, sigma=0.1, seed=500 + i)
        r, lo, hi = S.ratio_ci(a, b, n_resamples=400, seed=i)
        assert lo <= r <= hi
        assert lo > 1.0  # a 20% difference with 10% noise is always resolved
        hits += lo <= true <= hi
    assert hits / reps >= 0.85


def test_ratio_ci_constant_and_reproducible():
    assert S.ratio_ci([2.0] * 5, [4.0] * 3) == (0.5, 0.5, 0.5)
    a, b = lognormal(30, seed=9), lognormal(30, seed=10)
    assert S.ratio_ci(a, b, n_resamples=200, seed=3) == S.ratio_ci(a, b, n_resamples=200, seed=3)
    r, lo, hi = S.ratio_ci(a, b, n_resamples=200)
    assert r == pytest.approx(np.median(a) / np.median(b))


def test_geomean_and_geomean_ratio_ci():
    assert S.geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert S.geomean([2.0, 8.0, 4.0]) == pytest.approx(4.0)
    pairs = [([2.0] * 4, [1.0] * 4), ([1.0] * 3, [2.0] * 5)]
    assert S.geomean_ratio_ci(pairs) == pytest.approx((1.0, 1.0, 1.0))
    pairs = [(lognormal(50, 0.8, 0.05, seed=i), lognormal(50, 1.0, 0.05, seed=50 + i)) for i in range(4)]
    g, lo, hi = S.geomean_ratio_ci(pairs, n_resamples=300)
    per_pair = [np.median(a) / np.median(b) for a, b in pairs]
    assert g == pytest.approx(S.geomean(per_pair))
    assert lo <= g <= hi
    assert lo <= 0.8 <= hi
    assert hi < 1.0


# --------------------------------------------------------------------------- verdicts


def _verdict(a, b):
    return S.verdict(a, b, S.mann_whitney(a, b))


def test_verdict_on_constructed_samples():
    base = lognormal(60, median=1.0, sigma=0.02, seed=11)
    assert _verdict(lognormal(60, median=0.9, sigma=0.02, seed=12), base) == S.Verdict.FASTER
    assert _verdict(lognormal(60, median=1.1, sigma=0.02, seed=13), base) == S.Verdict.SLOWER
    assert _verdict(lognormal(60, median=1.0, sigma=0.005, seed=14),
                    lognormal(60, median=1.0, sigma=0.005, seed=15)) == S.Verdict.SAME
    assert _verdict(lognormal(8, median=1.0, sigma=0.3, seed=16),
                    lognormal(8, median=1.0, sigma=0.3, seed=17)) == S.Verdict.INCONCLUSIVE
    # A big speed-up that is not significant after adjustment stays inconclusive.
    fast = lognormal(60, median=0.9, sigma=0.02, seed=12)
    assert S.verdict(fast, base, p_adjusted=0.2) == S.Verdict.INCONCLUSIVE


def test_verdict_from_rule():
    vf = S.verdict_from
    assert vf(0.9, 0.88, 0.92, 0.001) == "faster"
    assert vf(0.99, 0.98, 0.995, 0.001) == "same"      # significant but below the 2% threshold
    assert vf(0.97, 0.95, 1.01, 0.001) == "inconclusive"  # CI crosses 1
    assert vf(1.1, 1.05, 1.15, 0.001) == "slower"
    assert vf(1.1, 1.05, 1.15, 0.5) == "inconclusive"
    assert vf(1.0, 0.98, 1.02, 0.9) == "same"          # bounds inclusive
    assert vf(1.0, 0.97, 1.02, 0.9) == "inconclusive"
    assert vf(1.04, 1.01, 1.07, 0.01, threshold=0.05) == "inconclusive"
    assert set(S.Verdict.ALL) == {"faster", "slower", "same", "inconclusive"}


def test_summarize():
    x = list(lognormal(50, sigma=0.1, seed=18)) + [10.0]
    s = S.summarize(x)
    assert set(s) == {"n", "median", "ci_lo", "ci_hi", "iqr", "cv", "min", "max", "outlier_fraction"}
    assert s["n"] == 51
    assert s["median"] == pytest.approx(np.median(x))
    assert s["ci_lo"] <= s["median"] <= s["ci_hi"]
    assert s["max"] == 10.0 and s["min"] == pytest.approx(min(x))
    assert s["outlier_fraction"] == pytest.approx(1 / 51)
    assert s["iqr"] == pytest.approx(sps.iqr(x))
    assert all(isinstance(v, (int, float)) for v in s.values())


# --------------------------------------------------------------------------- properties


@FAST
@given(st.lists(finite, min_size=1, max_size=30), st.lists(finite, min_size=1, max_size=30))
def test_prop_cliffs_antisymmetric_and_bounded(a, b):
    d = S.cliffs_delta(a, b)
    assert -1.0 <= d <= 1.0
    assert d == -S.cliffs_delta(b, a)
    assert d == pytest.approx(_cliffs_brute(a, b))


@FAST
@given(st.lists(positive, min_size=1, max_size=25), st.lists(positive, min_size=1, max_size=25),
       st.floats(min_value=1e-3, max_value=1e3))
def test_prop_ratio_ci_scale_invariant(a, b, c):
    r0 = S.ratio_ci(a, b, n_resamples=100)
    r1 = S.ratio_ci([c * v for v in a], [c * v for v in b], n_resamples=100)
    assert r1 == pytest.approx(r0, rel=1e-9)
    assert r0[1] <= r0[0] <= r0[2]


@FAST
@given(st.lists(positive, min_size=2, max_size=25), st.lists(positive, min_size=2, max_size=25),
       st.integers(min_value=-20, max_value=20))
def test_prop_verdict_scale_invariant(a, b, k):
    # Powers of two scale exactly in floating point, so the verdict must not change at all
    # (an arbitrary factor could move a ratio sitting exactly on a threshold by one ulp).
    c = 2.0 ** k
    sa, sb = [c * v for v in a], [c * v for v in b]
    p0, p1 = S.mann_whitney(a, b), S.mann_whitney(sa, sb)
    assert p0 == pytest.approx(p1)
    assert S.verdict(a, b, p0) == S.verdict(sa, sb, p0)
    assert S.verdict(a, b, p0) in S.Verdict.ALL


@FAST
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=20))
def test_prop_holm_bounds(p):
    adj = S.holm(p)
    assert len(adj) == len(p)
    for raw, q in zip(p, adj):
        assert raw <= q <= 1.0
    # Adjusted values keep the order of the raw p-values.
    order = np.argsort(p, kind="stable")
    assert all(np.diff(np.asarray(adj)[order]) >= 0)


@FAST
@given(st.lists(finite, min_size=1, max_size=30), st.sampled_from(["bca", "percentile"]))
def test_prop_median_ci_contains_median(x, method):
    lo, hi = S.median_ci(x, method=method, n_resamples=100, seed=0)
    m = S.median(x)
    assert lo <= m <= hi
    assert min(x) <= lo and hi <= max(x)
    olo, ohi = S.median_ci_order(x)
    assert olo <= m <= ohi
