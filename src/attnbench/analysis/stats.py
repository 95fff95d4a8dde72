"""Robust statistics for timing samples: medians, confidence intervals, tests, effect sizes and verdicts."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Union

import numpy as np
from scipy import stats as _sps

ArrayLike = Union[Sequence[float], np.ndarray]

# Cap on the number of floats materialised per bootstrap chunk (index matrix rows x sample size).
_CHUNK_ELEMS = 2_000_000


def _as_array(x: ArrayLike, name: str = "x") -> np.ndarray:
    """1-D float array; ValueError on empty or non-finite input."""
    arr = np.asarray(x, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty: need at least one sample")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _positive(x: ArrayLike, name: str) -> np.ndarray:
    arr = _as_array(x, name)
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be strictly positive (times): ratios of medians are undefined otherwise")
    return arr


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _is_constant(arr: np.ndarray) -> bool:
    return bool(arr.max() == arr.min())


# ---------------------------------------------------------------------------------------------
# Location, spread, outliers
# ---------------------------------------------------------------------------------------------


def median(x: ArrayLike) -> float:
    """Sample median (mean of the two middle values for even n)."""
    return float(np.median(_as_array(x)))


def iqr(x: ArrayLike) -> float:
    """Interquartile range Q3 - Q1 with linear interpolation between order statistics (numpy's default)."""
    q1, q3 = np.percentile(_as_array(x), [25.0, 75.0])
    return float(q3 - q1)


def cv(x: ArrayLike) -> float:
    """Coefficient of variation std/mean (ddof=1).

    0.0 for constant data (including a single sample); inf when the mean is 0 but the data vary.
    Sensitive to outliers by construction: use `iqr`/`median` for a robust view of spread.
    """
    arr = _as_array(x)
    if arr.size < 2 or _is_constant(arr):
        return 0.0
    mean = float(arr.mean())
    sd = float(arr.std(ddof=1))
    if mean == 0.0:
        return math.inf
    return sd / mean


def outlier_fraction(x: ArrayLike, k: float = 3.0) -> float:
    """Fraction of samples outside [Q1 - k*IQR, Q3 + k*IQR] (Tukey fences; k=3 flags "far out" points).

    Fences from quartiles are robust to the outliers they detect, unlike mean +- z*std.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k!r}")
    arr = _as_array(x)
    q1, q3 = np.percentile(arr, [25.0, 75.0])
    spread = q3 - q1
    out = (arr < q1 - k * spread) | (arr > q3 + k * spread)
    return float(np.mean(out))


# ---------------------------------------------------------------------------------------------
# Confidence intervals of the median
# ---------------------------------------------------------------------------------------------


def median_ci(
    x: ArrayLike,
    confidence: float = 0.95,
    method: str = "bca",
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap confidence interval of the median via `scipy.stats.bootstrap` (seeded, reproducible).

    BCa corrects the percentile interval for bias and skew (better coverage on skewed timing data)
    but needs a jackknife, which is degenerate when many samples tie (all leave-one-out medians
    equal): then scipy returns NaN and we fall back to the plain percentile interval. Constant
    data and single samples give (v, v) without calling scipy. The interval is finally widened,
    if needed, to contain the sample median (a bootstrap interval of a discrete statistic can in
    rare skewed cases miss the point estimate, which would be nonsense to report) and clipped to
    [min(x), max(x)].
    """
    _check_confidence(confidence)
    meth = method.lower()
    if meth not in ("bca", "percentile"):
        raise ValueError(f"method must be 'bca' or 'percentile', got {method!r}")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    arr = _as_array(x)
    med = float(np.median(arr))
    if arr.size < 2 or _is_constant(arr):
        return med, med

    def _run(scipy_method: str) -> tuple[float, float]:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", _sps.DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            res = _sps.bootstrap(
                (arr,),
                np.median,
                n_resamples=n_resamples,
                confidence_level=confidence,
                method=scipy_method,
                vectorized=True,
                batch=max(1, min(n_resamples, _CHUNK_ELEMS // arr.size)),
                rng=np.random.default_rng(seed),
            )
        ci = res.confidence_interval
        return float(ci.low), float(ci.high)

    lo, hi = _run("BCa" if meth == "bca" else "percentile")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = _run("percentile")
    # Resampled medians lie within [min, max]; clip interpolation round-off (one ulp) back into it.
    lo = max(min(lo, med), float(arr.min()))
    hi = min(max(hi, med), float(arr.max()))
    return lo, hi


def median_ci_order(x: ArrayLike, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI of the median from order statistics (no resampling: fast).

    The number of samples below the true median is Binomial(n, 1/2), so [x_(l), x_(n-l+1)]
    (1-based order statistics) covers it with probability 1 - 2*P(B <= l-1). We take the largest
    l keeping that coverage >= confidence, so the interval is conservative (exact coverage is
    discrete). For tiny n (n < 6 at 95%) no such l exists and the full range [min, max] is
    returned, whose coverage is below the requested level.
    """
    _check_confidence(confidence)
    arr = np.sort(_as_array(x))
    n = arr.size
    alpha = 1.0 - confidence
    cdf = _sps.binom.cdf(np.arange(n + 1), n, 0.5)
    # l = number of j with P(B <= j) <= alpha/2, i.e. the largest l with P(B <= l-1) <= alpha/2.
    l = int(np.count_nonzero(cdf <= alpha / 2 + 1e-12))
    l = min(l, (n + 1) // 2)  # keep lo <= hi
    if l == 0:
        return float(arr[0]), float(arr[-1])
    return float(arr[l - 1]), float(arr[n - l])


def relative_halfwidth(x: ArrayLike, confidence: float = 0.95) -> float:
    """Half-width of `median_ci_order` divided by the median: the precision target of adaptive stopping.

    inf when n < 6 (the order-statistic interval is not informative yet) or the median is <= 0.
    """
    arr = _as_array(x)
    if arr.size < 6:
        return math.inf
    med = float(np.median(arr))
    if med <= 0:
        return math.inf
    lo, hi = median_ci_order(arr, confidence)
    return (hi - lo) / 2.0 / med


# ---------------------------------------------------------------------------------------------
# Two-sample tests and effect sizes
# ---------------------------------------------------------------------------------------------


def mann_whitney(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sided Mann-Whitney U p-value (scipy, method="auto": exact for small tie-free samples).

    Rank based, so insensitive to outliers and to any monotone rescaling of the data. Returns 1.0
    when every value of both samples is the same (no evidence of a difference; scipy's normal
    approximation has zero variance there).
    """
    xa = _as_array(a, "a")
    xb = _as_array(b, "b")
    both = np.concatenate([xa, xb])
    if _is_constant(both):
        return 1.0
    res = _sps.mannwhitneyu(xa, xb, alternative="two-sided", method="auto")
    p = float(res.pvalue)
    return 1.0 if math.isnan(p) else min(1.0, p)


def cliffs_delta(a: ArrayLike, b: ArrayLike) -> float:
    """Cliff's delta P(a > b) - P(a < b) over all pairs, in [-1, 1]; positive means a tends to be larger.

    Computed in O((n + m) log m) by sorting b and counting, for each a_i, the b values strictly
    below (searchsorted left) and strictly above (searchsorted right); ties count for neither.
    """
    xa = _as_array(a, "a")
    xb = np.sort(_as_array(b, "b"))
    m = xb.size
    below = np.searchsorted(xb, xa, side="left")          # count of b < a_i
    above = m - np.searchsorted(xb, xa, side="right")     # count of b > a_i
    d = (int(below.sum()) - int(above.sum())) / (xa.size * m)
    return float(d)


def cliffs_magnitude(d: float) -> str:
    """Romano et al. (2006) labels for |delta|: negligible < 0.147 <= small < 0.33 <= medium < 0.474 <= large."""
    ad = abs(float(d))
    if math.isnan(ad):
        raise ValueError("delta is NaN")
    if ad < 0.147:
        return "negligible"
    if ad < 0.33:
        return "small"
    if ad < 0.474:
        return "medium"
    return "large"


def holm(pvalues: ArrayLike) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    Sort ascending; the i-th smallest (0-based) becomes (m - i) * p, made monotone with a running
    maximum and capped at 1. Controls the family-wise error rate like Bonferroni, uniformly more
    powerful, with no independence assumption.
    """
    p = np.asarray(pvalues, dtype=float).ravel()
    if p.size == 0:
        return []
    if np.any(np.isnan(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError("p-values must lie in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adj_sorted = np.minimum(1.0, np.maximum.accumulate(scaled))
    out = np.empty(m)
    out[order] = adj_sorted
    return [float(v) for v in out]


# ---------------------------------------------------------------------------------------------
# Ratios of medians
# ---------------------------------------------------------------------------------------------


def _boot_medians(arr: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of n_resamples bootstrap resamples of arr (index matrices, chunked to bound memory)."""
    n = arr.size
    out = np.empty(n_resamples)
    step = max(1, _CHUNK_ELEMS // n)
    for start in range(0, n_resamples, step):
        stop = min(n_resamples, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = np.median(arr[idx], axis=1)
    return out


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    lo, hi = np.percentile(values, [100.0 * alpha / 2, 100.0 * (1 - alpha / 2)])
    return float(lo), float(hi)


def ratio_ci(
    a: ArrayLike,
    b: ArrayLike,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(median(a)/median(b), lo, hi): percentile-bootstrap CI of a ratio of medians.

    a and b are resampled independently (unpaired samples), vectorized with index matrices. The
    percentile method is transformation-respecting (the CI of b/a is the reciprocal) and needs no
    jackknife, at the cost of BCa's skew correction. Samples must be positive (times). The
    interval is widened if needed to contain the point ratio; constant samples give (r, r, r).
    """
    _check_confidence(confidence)
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    xa = _positive(a, "a")
    xb = _positive(b, "b")
    r = float(np.median(xa) / np.median(xb))
    if _is_constant(xa) and _is_constant(xb):
        return r, r, r
    rng = np.random.default_rng(seed)
    ratios = _boot_medians(xa, n_resamples, rng) / _boot_medians(xb, n_resamples, rng)
    lo, hi = _percentile_ci(ratios, confidence)
    return r, min(lo, r), max(hi, r)


def geomean(x: ArrayLike) -> float:
    """Geometric mean exp(mean(log x)) of positive values: the right average for ratios (symmetric in a/b)."""
    arr = _as_array(x)
    if np.any(arr <= 0):
        raise ValueError("geomean needs strictly positive values")
    return float(np.exp(np.mean(np.log(arr))))


def geomean_ratio_ci(
    pairs: Sequence[tuple[ArrayLike, ArrayLike]],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Suite-level geometric mean of per-pair median ratios median(a)/median(b), with a bootstrap CI.

    Each resample redraws every pair's a and b independently (the pairs themselves are fixed: the
    suite is not treated as a sample of workloads), takes the geomean of the resampled ratios, and
    the percentile interval of those geomeans is returned. Interval widened to contain the estimate.
    """
    _check_confidence(confidence)
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    if len(pairs) == 0:
        raise ValueError("pairs is empty: need at least one (a, b) pair")
    arrs = [(_positive(a, f"pairs[{i}][0]"), _positive(b, f"pairs[{i}][1]")) for i, (a, b) in enumerate(pairs)]
    logs = np.array([math.log(float(np.median(xa)) / float(np.median(xb))) for xa, xb in arrs])
    g = float(np.exp(np.mean(logs)))
    if all(_is_constant(xa) and _is_constant(xb) for xa, xb in arrs):
        return g, g, g
    rng = np.random.default_rng(seed)
    log_sum = np.zeros(n_resamples)
    for xa, xb in arrs:
        log_sum += np.log(_boot_medians(xa, n_resamples, rng)) - np.log(_boot_medians(xb, n_resamples, rng))
    boot = np.exp(log_sum / len(arrs))
    lo, hi = _percentile_ci(boot, confidence)
    return g, min(lo, g), max(hi, g)


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------


class Verdict:
    """String constants returned by `verdict` / `verdict_from`."""

    FASTER = "faster"
    SLOWER = "slower"
    SAME = "same"
    INCONCLUSIVE = "inconclusive"
    ALL = (FASTER, SLOWER, SAME, INCONCLUSIVE)


def verdict_from(
    r: float,
    lo: float,
    hi: float,
    p_adjusted: float,
    threshold: float = 0.02,
    alpha: float = 0.05,
) -> str:
    """Classify a time ratio r = candidate/baseline with CI [lo, hi] and a (multiplicity-adjusted) p-value.

    - "faster": p_adjusted < alpha, hi < 1 and r < 1 - threshold (significant and practically relevant);
    - "slower": p_adjusted < alpha, lo > 1 and r > 1 + threshold;
    - "same":   the whole CI lies inside [1 - threshold, 1 + threshold] (equivalence, no p needed);
    - otherwise "inconclusive" (more samples needed, or a real but sub-threshold change).
    """
    if p_adjusted < alpha and hi < 1.0 and r < 1.0 - threshold:
        return Verdict.FASTER
    if p_adjusted < alpha and lo > 1.0 and r > 1.0 + threshold:
        return Verdict.SLOWER
    if 1.0 - threshold <= lo and hi <= 1.0 + threshold:
        return Verdict.SAME
    return Verdict.INCONCLUSIVE


def verdict(
    a: ArrayLike,
    b: ArrayLike,
    p_adjusted: float,
    threshold: float = 0.02,
    alpha: float = 0.05,
    confidence: float = 0.95,
    seed: int = 0,
) -> str:
    """Compare candidate times a against baseline times b (smaller is faster) with `ratio_ci` + `verdict_from`."""
    r, lo, hi = ratio_ci(a, b, confidence=confidence, seed=seed)
    return verdict_from(r, lo, hi, p_adjusted, threshold=threshold, alpha=alpha)


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def summarize(x: ArrayLike, confidence: float = 0.95, seed: int = 0) -> dict:
    """One-sample summary: n, median with BCa bootstrap CI (ci_lo, ci_hi), iqr, cv, min, max, outlier_fraction."""
    arr = _as_array(x)
    lo, hi = median_ci(arr, confidence=confidence, seed=seed)
    return {
        "n": int(arr.size),
        "median": float(np.median(arr)),
        "ci_lo": lo,
        "ci_hi": hi,
        "iqr": iqr(arr),
        "cv": cv(arr),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "outlier_fraction": outlier_fraction(arr),
    }
