"""Round-level statistics: batches of samples (rounds, when interleaved) as the unit of evidence."""

# Why: noise on a benchmark machine arrives in bursts (a neighbour process, a clock or power change)
# that move a whole batch of samples at once, so samples within a batch are not independent. A CI or
# a test that resamples single samples then counts one burst as many independent observations and is
# too sure of itself. Here the unit is the batch: a measurement's samples are split into its batches
# (`sizes`, in time order; in an interleaved measurement batch k of every cell is round k), and
# every interval resamples whole batches, every test works on one summary (the median) per batch.
# The sample-level functions in `stats` stay for one-batch data and for comparison.

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _sps

from .stats import Verdict, _as_array, _check_confidence, mann_whitney, verdict_from

# A verdict (faster, slower or same) needs at least this many rounds (paired) or batches per side.
# Why 8: the exact signed-rank test of R rounds can reach p = 2 / 2**R at best, 0.031 at R = 6
# (nothing left for a Holm correction over even two rows) and 0.0078 at R = 8 (room for Holm over up
# to six rows when every round agrees); and a bootstrap over fewer than 8 blocks has so few distinct
# resamples that its tails are mostly ties. The sampler spreads every measurement over at least
# measure.timing.MIN_BATCHES (10) batches, so a measurement that ran to its end has enough.
MIN_ROUNDS = 8
# Samples stored without their batch structure (before schema 2) are split into this many contiguous
# blocks in time order: the sampler's own minimum number of batches.
DEFAULT_BLOCKS = 10
_CHUNK_ELEMS = 2_000_000   # floats per bootstrap chunk (resamples x samples)
_EXACT_MAX = 200           # signed-rank rounds up to which the exact null distribution is enumerated


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def contiguous_blocks(n: int, k: int = DEFAULT_BLOCKS) -> tuple[int, ...]:
    """Sizes of min(k, n) contiguous blocks covering n samples, as equal as possible (larger first)."""
    if n < 0 or k < 1:
        raise ValueError(f"need n >= 0 and k >= 1, got n={n}, k={k}")
    k = min(k, n)
    if k == 0:
        return ()
    q, r = divmod(n, k)
    return tuple(q + 1 if i < r else q for i in range(k))


def block_sizes(n: int, sizes: Sequence[int] | None) -> tuple[int, ...]:
    """The batch sizes to use for n samples: `sizes` when given (checked: non-negative, summing to n), else
    `contiguous_blocks(n)` (structure unknown)."""
    if sizes is None or len(sizes) == 0:
        return contiguous_blocks(n)
    out = tuple(int(s) for s in sizes)
    if any(s < 0 for s in out) or sum(out) != n:
        raise ValueError(f"batch sizes {list(out)[:8]}... must be >= 0 and sum to the {n} samples")
    return out


def split(x: Sequence[float] | np.ndarray, sizes: Sequence[int] | None) -> list[np.ndarray]:
    """The samples of each batch, in order (empty arrays for empty batches)."""
    arr = np.asarray(x, dtype=float).ravel()
    cuts = np.cumsum(block_sizes(arr.size, sizes))[:-1]
    return np.split(arr, cuts) if arr.size else []


def block_medians(x: Sequence[float] | np.ndarray, sizes: Sequence[int] | None) -> np.ndarray:
    """The median of every non-empty batch, in order: the per-round summaries."""
    return np.array([float(np.median(b)) for b in split(_as_array(x), sizes) if b.size])


def paired_round_medians(xa, sizes_a, xb, sizes_b) -> tuple[np.ndarray, np.ndarray]:
    """Per-round medians of A and B over the rounds both ran with samples in them (round k = batch k of each
    side, as in one interleaved measurement); rounds past the shorter side, or empty on a side, are left out."""
    ba, bb = _paired_common(xa, sizes_a, xb, sizes_b)
    return np.array([float(np.median(b)) for b in ba]), np.array([float(np.median(b)) for b in bb])


def _paired_common(xa, sizes_a, xb, sizes_b) -> tuple[list[np.ndarray], list[np.ndarray]]:
    ba, bb = split(_as_array(xa, "a"), sizes_a), split(_as_array(xb, "b"), sizes_b)
    keep = [k for k in range(min(len(ba), len(bb))) if ba[k].size and bb[k].size]
    if not keep:
        raise ValueError("A and B share no round with samples on both sides")
    return [ba[k] for k in keep], [bb[k] for k in keep]


# ---------------------------------------------------------------------------------------------
# The bootstrap over blocks
# ---------------------------------------------------------------------------------------------


class _Blocked:
    """Samples sorted once, with the block of each, so that a resample of blocks is a weight vector. Blocks
    may be empty (a round in which one side took no samples); at least one must not be."""

    def __init__(self, blocks: Sequence[np.ndarray]):
        blocks = [np.sort(b) for b in blocks]
        full = [b for b in blocks if b.size]
        x = np.concatenate(full)
        ids = np.repeat(np.arange(len(blocks)), [b.size for b in blocks])
        order = np.argsort(x, kind="stable")
        self.x, self.ids, self.k = x[order], ids[order], len(blocks)
        self.sizes = np.array([b.size for b in blocks], dtype=np.int64)
        # The two middle samples of any union of copies of the blocks lie between the lowest lower-middle
        # and the highest upper-middle sample of a block (fewer than half of each block lies outside), so
        # cumulative counts are needed only over that window of the sorted samples.
        low = min(float(b[(b.size - 1) // 2]) for b in full)
        high = max(float(b[b.size // 2]) for b in full)
        self.i0 = int(np.searchsorted(self.x, low, side="left"))
        self.i1 = int(np.searchsorted(self.x, high, side="right"))
        self.below = np.bincount(self.ids[:self.i0], minlength=self.k).astype(np.int64)

    def medians(self, counts: np.ndarray) -> np.ndarray:
        """The median of the samples of each resample, where counts[i, j] is how often block j was drawn
        (NaN for a resample that drew only empty blocks)."""
        out = self._medians(np.asarray(counts, dtype=np.int64))
        out[np.asarray(counts, dtype=np.int64) @ self.sizes == 0] = np.nan
        return out

    def _medians(self, c: np.ndarray) -> np.ndarray:
        xw, ids = self.x[self.i0:self.i1], self.ids[self.i0:self.i1]
        total = c @ self.sizes
        if c.shape[0] * xw.size > _CHUNK_ELEMS and self.k * xw.size <= 10_000_000:   # a table of at most 40 MB
            # Per-block cumulative counts over the window, then a binary search per resample: O(k log n)
            # per resample instead of O(n).
            table = np.zeros((self.k, xw.size), dtype=np.int32)
            table[ids, np.arange(xw.size)] = 1
            table = np.cumsum(table, axis=1, dtype=np.int32) + self.below[:, None].astype(np.int32)
            lo = self._search(table, c, total, strict=False)   # position (N-1)//2 of the N drawn samples
            hi = self._search(table, c, total, strict=True)    # position N//2
            return (xw[lo] + xw[hi]) / 2.0
        out = np.empty(c.shape[0])
        step = max(1, _CHUNK_ELEMS // max(1, xw.size))
        for s in range(0, c.shape[0], step):
            cs = c[s:s + step]
            twice = 2 * (np.cumsum(cs[:, ids], axis=1) + (cs @ self.below)[:, None])
            t = total[s:s + step, None]
            out[s:s + step] = (xw[np.argmax(twice >= t, axis=1)] + xw[np.argmax(twice > t, axis=1)]) / 2.0
        return out

    @staticmethod
    def _search(table: np.ndarray, c: np.ndarray, total: np.ndarray, strict: bool) -> np.ndarray:
        """Per resample, the first window position whose drawn count below-or-at reaches half the total."""
        lo = np.zeros(c.shape[0], dtype=np.int64)
        hi = np.full(c.shape[0], table.shape[1] - 1, dtype=np.int64)
        while np.any(lo < hi):
            mid = (lo + hi) // 2
            twice = 2 * np.einsum("ij,ji->i", c, table[:, mid])
            ok = twice > total if strict else twice >= total
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid + 1)
        return lo


def _counts(rng: np.random.Generator, k: int, n_resamples: int) -> np.ndarray:
    """How often each of k blocks is drawn in each of n_resamples resamples of k blocks with replacement."""
    idx = rng.integers(0, k, size=(n_resamples, k)) + (np.arange(n_resamples) * k)[:, None]
    return np.bincount(idx.ravel(), minlength=n_resamples * k).reshape(n_resamples, k)


def expanded_alpha(confidence: float, k: int) -> float:
    """Two-sided tail mass for the percentiles of an "expanded percentile" interval from k blocks.

    A percentile bootstrap over k independent units is too narrow for small k: it uses the plug-in
    variance (divisor k, not k-1) and normal rather than t tails. Hesterberg's expanded percentile
    interval (Hesterberg 2015, "What teachers should know about the bootstrap", The American
    Statistician 69:4) corrects both by taking the bootstrap percentiles at alpha' with
    z_{alpha'/2} = sqrt(k/(k-1)) t_{alpha/2, k-1}: at 95% and k = 10 the 0.86% and 99.14% percentiles.
    """
    _check_confidence(confidence)
    if k < 2:
        return 0.0
    z = math.sqrt(k / (k - 1.0)) * float(_sps.t.ppf(1.0 - (1.0 - confidence) / 2.0, k - 1))
    return float(2.0 * _sps.norm.sf(z))


def min_blocks(confidence: float = 0.95) -> int:
    """The fewest blocks from which a bootstrap interval can reach `confidence`: 6 at 95%.

    Every resample's median lies between the lowest and the highest batch median (a median of a union of
    blocks cannot leave the range of the blocks' medians), and k batch medians hold the true median between
    them with probability at most 1 - 2^(1-k) (each is above it with probability about 1/2): 0.5 with two
    blocks, 0.94 with five, whatever the percentiles. Below that, the intervals here are the samples' range.
    """
    _check_confidence(confidence)
    return 1 + math.ceil(math.log2(1.0 / (1.0 - confidence)) - 1e-9)


def _interval(values: np.ndarray, confidence: float, k: int) -> tuple[float, float]:
    a = expanded_alpha(confidence, k)
    lo, hi = np.nanpercentile(values, [100.0 * a / 2.0, 100.0 * (1.0 - a / 2.0)])
    return float(lo), float(hi)


def block_median_ci(x, sizes: Sequence[int] | None, confidence: float = 0.95, n_resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """CI of the median of all samples by a bootstrap over batches (expanded percentile, seeded).

    Each resample draws the measurement's non-empty batches with replacement, keeping each batch's
    samples together, and takes the median of the drawn samples; so noise that moved a whole batch
    widens the interval as it should. With fewer than two batches nothing is known about
    between-batch variation, and with fewer than `min_blocks` (6 at 95%) too little for the level: the
    interval is then the samples' range. Constant data give (v, v); the
    interval always contains the sample median and lies within [min, max].
    """
    _check_confidence(confidence)
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    arr = _as_array(x)
    med = float(np.median(arr))
    lo_x, hi_x = float(arr.min()), float(arr.max())
    if lo_x == hi_x:
        return med, med
    blocked = _Blocked([b for b in split(arr, sizes) if b.size])  # an empty batch is no evidence: not a block
    if blocked.k < min_blocks(confidence):
        return lo_x, hi_x
    boot = blocked.medians(_counts(np.random.default_rng(seed), blocked.k, n_resamples))
    lo, hi = _interval(boot, confidence, blocked.k)
    return max(min(lo, med), lo_x), min(max(hi, med), hi_x)


def design_effect(x, sizes: Sequence[int] | None) -> float:
    """How much batching inflates the variance of the median: sum_j s_j^2 / n, where s_j is batch j's sum of
    sign(x_i - median) (samples above minus samples below the median of all samples).

    This is the cluster-robust (sandwich) variance of the median, the estimating equation
    sum_i sign(x_i - m) = 0 summed by batch (as in quantile regression with clustered data, Parente and
    Santos Silva 2016, Journal of Econometric Methods 5:1), over the variance the same samples would
    have if independent. About 1 when batches do not differ; up to the mean batch size when every batch
    lies wholly above or below the median. Each batch counts at most its own size, so one wild batch
    (a process descheduled for a second) weighs like any other shifted batch, not like its distance.
    """
    arr = _as_array(x)
    sz = block_sizes(arr.size, sizes)
    signs = np.sign(arr - np.median(arr))
    cum = np.concatenate([[0.0], np.cumsum(signs)])
    per = np.diff(cum[np.concatenate([[0], np.cumsum(sz)])])
    return float(np.sum(per ** 2) / arr.size)


def batch_precision(x, sizes: Sequence[int] | None, confidence: float = 0.95) -> float:
    """Relative half-width of the median's CI that adaptive stopping reads (no resampling: cheap enough after
    every batch): the sample-level one (`stats.relative_halfwidth`, order statistics) widened by the
    batches, i.e. multiplied by sqrt(k/(k-1) x `design_effect`) x t_{k-1} / z over the k non-empty
    batches (never narrower than the sample-level one). The factor follows what `block_median_ci` shows:
    the bootstrap over batches sees the same between-batch variance, expanded for few batches.
    inf with fewer than 6 samples or 2 non-empty batches.
    """
    from .stats import relative_halfwidth

    arr = _as_array(x)
    sample = relative_halfwidth(arr, confidence)
    sz = block_sizes(arr.size, sizes)
    k = sum(1 for s in sz if s)
    if k < 2 or not math.isfinite(sample):
        return math.inf
    q = 1.0 - (1.0 - confidence) / 2.0
    factor = math.sqrt(k / (k - 1.0) * design_effect(arr, sz)) * float(_sps.t.ppf(q, k - 1) / _sps.norm.ppf(q))
    return sample * max(1.0, factor)


@dataclass(frozen=True)
class Shift:
    """A change of level within one measurement (`batch_shift`): `change` is the median of the samples after
    batch `at` over the median of those before it, minus 1 (-0.2: 20% faster after the change); `p` the
    permutation p-value of Pettitt's statistic over the batch medians; `batches` the non-empty batches seen."""

    change: float
    p: float
    at: int
    batches: int


def batch_shift(x, sizes: Sequence[int] | None, n_permutations: int = 2000, seed: int = 0) -> Shift:
    """Did the time change during the measurement (warm-up not over, a clock or power change, a neighbour that
    started or stopped)? Pettitt's rank change-point test on the batch medians, in time order.

    U_t = 2 x (sum of the ranks of the first t batch medians) - t (k + 1), K = max_t |U_t| (Pettitt 1979,
    Applied Statistics 28:2); K is large when the batches before some point rank consistently above or below
    those after it, and rank-based, so one wild batch counts as one. Its p-value is by seeded permutations of
    the batch order (Pettitt's closed form is far off for the 10-40 batches of a measurement); bursts that
    come and go leave batch order exchangeable and are not a shift. `at` is the split with the largest
    |U_t|, counted in non-empty batches; with fewer than 6 of them nothing can be shown: change 0 and p 1.
    A rank test of k batches cannot tell a shift of a few batches from as many bursts: 2 shifted batches of
    10 reach p 0.04 at best, so a measurement that converges that early keeps such a start unflagged.
    """
    arr = _as_array(x)
    blocks = [b for b in split(arr, sizes) if b.size]
    k = len(blocks)
    if k < 6:
        return Shift(0.0, 1.0, 0, k)
    ranks = _sps.rankdata([float(np.median(b)) for b in blocks])

    def stat(r: np.ndarray) -> np.ndarray:
        t = np.arange(1, k)
        return np.abs(2.0 * np.cumsum(r, axis=-1)[..., :-1] - t * (k + 1.0)).max(axis=-1)

    observed = float(stat(ranks))
    rng = np.random.default_rng(seed)
    hits, step = 0, max(1, _CHUNK_ELEMS // k)  # permutations in chunks: memory stays bounded for long runs
    for start in range(0, n_permutations, step):
        perms = rng.permuted(np.broadcast_to(ranks, (min(step, n_permutations - start), k)), axis=1)
        hits += int(np.sum(stat(perms) >= observed - 1e-9))
    p = (1.0 + hits) / (n_permutations + 1.0)
    t = np.arange(1, k)
    at = int(t[np.argmax(np.abs(2.0 * np.cumsum(ranks)[:-1] - t * (k + 1.0)))])
    before, after = np.concatenate(blocks[:at]), np.concatenate(blocks[at:])
    return Shift(float(np.median(after) / np.median(before) - 1.0), p, at, k)


# ---------------------------------------------------------------------------------------------
# Tests on per-round summaries
# ---------------------------------------------------------------------------------------------


def _midranks_doubled(a: np.ndarray) -> np.ndarray:
    """2 x the midranks of a (1-based), as integers: ties share the mean of their ranks."""
    return np.rint(2.0 * _sps.rankdata(a)).astype(np.int64)


def signed_rank_p(d: Sequence[float] | np.ndarray) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test that d is symmetric about 0.

    Zeros are dropped (Wilcoxon's convention). Up to _EXACT_MAX non-zero values the null distribution
    is exact: the sum of the positive ranks over all 2^n sign patterns, by convolution, with midranks
    for ties (so ties need no normal approximation); above that, the normal approximation with the
    tie-corrected variance. 1.0 when no value is non-zero.
    """
    arr = np.asarray(d, dtype=float).ravel()
    if not np.all(np.isfinite(arr)):
        raise ValueError("differences contain NaN or infinite values")
    arr = arr[arr != 0.0]
    n = arr.size
    if n == 0:
        return 1.0
    r2 = _midranks_doubled(np.abs(arr))         # doubled ranks: integers even with ties
    t_plus = int(r2[arr > 0].sum())
    total = int(r2.sum())
    if n <= _EXACT_MAX:
        dist = np.zeros(total + 1)
        dist[0] = 1.0
        for r in r2:                             # each rank joins the positive sum with probability 1/2
            new = 0.5 * dist
            new[r:] += 0.5 * dist[:-r]
            dist = new
        lower = float(dist[:min(t_plus, total - t_plus) + 1].sum())
        return min(1.0, 2.0 * lower)
    ranks = r2 / 2.0
    mean = ranks.sum() / 2.0
    var = float(np.sum(ranks ** 2)) / 4.0
    z = (t_plus / 2.0 - mean) / math.sqrt(var)
    return float(min(1.0, 2.0 * _sps.norm.sf(abs(z))))


@dataclass(frozen=True)
class RatioTest:
    """A vs B from batches: ratio = median(A) / median(B) (times: below 1 means A is faster), its CI, a p-value
    and the number of units behind them (paired rounds, or the fewer of each side's batches)."""

    ratio: float
    lo: float
    hi: float
    p: float
    rounds: int
    paired: bool

    @property
    def unit(self) -> str:
        return "rounds" if self.paired else "batches"


def _range_ratio(xa: np.ndarray, xb: np.ndarray, r: float) -> tuple[float, float]:
    return min(r, float(xa.min() / xb.max())), max(r, float(xa.max() / xb.min()))


def paired_ratio(xa, sizes_a, xb, sizes_b, confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> RatioTest:
    """A and B measured in one interleaved run, paired by round (batch k of each side is round k).

    Everything is over the rounds both sides ran (`rounds`): the ratio of the medians of their samples;
    its CI by a bootstrap over those rounds (each resample draws rounds with replacement and takes both
    sides' samples of the drawn rounds, so drift that hit a whole round cancels; expanded percentile; below
    `min_blocks` rounds the range of the samples' ratios); and the exact Wilcoxon signed-rank test on the
    per-round log ratios log(median A_k / median B_k).

    Why not the rounds in which only one side still sampled (each side stops by its own policy): they
    are not paired, so drift since the other side stopped, or a side running alone (a warmer cache, no
    switch between kernels), moves that side only. In simulated adaptive interleaved A/A runs (a 3%
    penalty for switching kernels, or a 1% per-round random-walk drift) counting them left the 95% CI
    covering the true ratio in 84% and 70% of runs; over the rounds both ran, 100% and 97.5%.

    Why the signed-rank test: interleaving shuffles A and B within every round with a fair seeded coin,
    so when A and B do not differ, each round's log ratio is as likely to be +d as -d whatever the
    machine did during that round: the sign-flip test of the per-round differences is exact by design,
    with no assumption on the noise (bursts, drift, autocorrelation). Ranks keep one wild round from
    dominating, as it would a t-test on the same differences. Its price is a floor on p (2 / 2^R), hence
    MIN_ROUNDS.
    """
    _check_confidence(confidence)
    a, b = _as_array(xa, "a"), _as_array(xb, "b")
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("times must be strictly positive: ratios of medians are undefined otherwise")
    ca, cb = _paired_common(a, sizes_a, b, sizes_b)
    k = len(ca)
    d = np.log([float(np.median(x)) for x in ca]) - np.log([float(np.median(x)) for x in cb])
    p = signed_rank_p(d)
    a, b = np.concatenate(ca), np.concatenate(cb)
    r = float(np.median(a) / np.median(b))
    if k < min_blocks(confidence):   # too few rounds for the level: the range of the samples' ratios
        lo, hi = _range_ratio(a, b, r)
        return RatioTest(r, lo, hi, p, k, True)
    if a.min() == a.max() and b.min() == b.max():
        return RatioTest(r, r, r, p, k, True)
    counts = _counts(np.random.default_rng(seed), k, n_resamples)
    boot = _Blocked(ca).medians(counts) / _Blocked(cb).medians(counts)
    lo, hi = _interval(boot, confidence, k)
    return RatioTest(r, min(lo, r), max(hi, r), p, k, True)


def unpaired_ratio(xa, sizes_a, xb, sizes_b, confidence: float = 0.95, n_resamples: int = 2000,
                   seed: int = 0) -> RatioTest:
    """A and B measured apart (two stored runs, a baseline and now): each side's batches are independent
    blocks. Ratio of the medians of all samples; its CI by an independent bootstrap over each side's
    batches (expanded percentile for the fewer of the two counts; below `min_blocks`, the range of the
    samples' ratios); Mann-Whitney U on the two sides' batch
    medians. Nothing here covers what moved between the two runs as a whole (another process, another
    day): that is the job of a noise floor from repeated measurements (gate) or of interleaving (compare).
    """
    _check_confidence(confidence)
    a, b = _as_array(xa, "a"), _as_array(xb, "b")
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("times must be strictly positive: ratios of medians are undefined otherwise")
    ba = [x for x in split(a, sizes_a) if x.size]
    bb = [x for x in split(b, sizes_b) if x.size]
    r = float(np.median(a) / np.median(b))
    k = min(len(ba), len(bb))
    p = mann_whitney([float(np.median(x)) for x in ba], [float(np.median(x)) for x in bb])
    if k < min_blocks(confidence):   # too few rounds for the level: the range of the samples' ratios
        lo, hi = _range_ratio(a, b, r)
        return RatioTest(r, lo, hi, p, k, False)
    if a.min() == a.max() and b.min() == b.max():
        return RatioTest(r, r, r, p, k, False)
    rng = np.random.default_rng(seed)
    boot = (_Blocked(ba).medians(_counts(rng, len(ba), n_resamples))
            / _Blocked(bb).medians(_counts(rng, len(bb), n_resamples)))
    lo, hi = _interval(boot, confidence, k)
    return RatioTest(r, min(lo, r), max(hi, r), p, k, False)


@dataclass(frozen=True)
class Blocked:
    """One row of a suite for `geomean_ratio`: A's and B's samples with their batch sizes, paired or not."""

    a: Sequence[float]
    sizes_a: Sequence[int] | None
    b: Sequence[float]
    sizes_b: Sequence[int] | None
    paired: bool


def geomean_ratio(rows: Sequence[Blocked], confidence: float = 0.95, n_resamples: int = 2000,
                  seed: int = 0) -> tuple[float, float, float]:
    """(geomean, lo, hi) of the rows' ratios of medians median(A)/median(B), with a bootstrap over rounds.

    Each resample redraws every row's rounds (paired rows: one draw of the rounds both sides ran, as in
    `paired_ratio`, whose ratio a paired row's is; unpaired rows: each side's batches apart) independently
    of the other rows, since each row was measured in its own rounds; the rows themselves are fixed (the
    suite is not a sample of workloads). Expanded percentile for the fewest rounds of any row; with a row of
    fewer than `min_blocks` rounds, the interval is the geometric mean of the rows' ranges.
    """
    _check_confidence(confidence)
    if not rows:
        raise ValueError("rows is empty: need at least one (A, B) row")
    rng = np.random.default_rng(seed)
    logs, boot, ks, ranges = [], np.zeros(n_resamples), [], []
    for row in rows:
        if row.paired:
            ba, bb = _paired_common(row.a, row.sizes_a, row.b, row.sizes_b)   # as paired_ratio: both sides' rounds
        else:
            ba = [x for x in split(_as_array(row.a, "a"), row.sizes_a) if x.size]
            bb = [x for x in split(_as_array(row.b, "b"), row.sizes_b) if x.size]
        xa, xb = np.concatenate(ba), np.concatenate(bb)
        if np.any(xa <= 0) or np.any(xb <= 0):
            raise ValueError("times must be strictly positive")
        r = float(np.median(xa) / np.median(xb))
        logs.append(math.log(r))
        ranges.append(_range_ratio(xa, xb, r))
        if row.paired:
            k = len(ba)
            ca = cb = _counts(rng, k, n_resamples)
        else:
            k = min(len(ba), len(bb))
            ca, cb = _counts(rng, len(ba), n_resamples), _counts(rng, len(bb), n_resamples)
        ks.append(k)
        boot += np.log(_Blocked(ba).medians(ca)) - np.log(_Blocked(bb).medians(cb))
    g = float(np.exp(np.mean(logs)))
    if min(ks) < min_blocks(confidence):
        lo = float(np.exp(np.mean([math.log(a) for a, _ in ranges])))
        hi = float(np.exp(np.mean([math.log(b) for _, b in ranges])))
        return g, min(lo, g), max(hi, g)
    lo, hi = _interval(np.exp(boot / len(rows)), confidence, min(ks))  # NaN (a side drew nothing) left out
    return g, min(lo, g), max(hi, g)


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------


def round_verdict(test: RatioTest, p_adjusted: float, threshold: float = 0.02, alpha: float = 0.05,
                  min_rounds: int = MIN_ROUNDS) -> str:
    """`stats.verdict_from` on a RatioTest, except that with fewer than min_rounds units it is inconclusive."""
    if test.rounds < min_rounds:
        return Verdict.INCONCLUSIVE
    return verdict_from(test.ratio, test.lo, test.hi, p_adjusted, threshold=threshold, alpha=alpha)


def verdict_label(verdict: str, rounds: int, unit: str = "rounds", min_rounds: int = MIN_ROUNDS) -> str:
    """The verdict as shown: 'inconclusive: 4 rounds' when too few rounds decided it, else the verdict."""
    if verdict == Verdict.INCONCLUSIVE and rounds < min_rounds:
        one = {"rounds": "round", "batches": "batch"}.get(unit, unit)
        return f"inconclusive: {rounds} {unit if rounds != 1 else one}"
    return verdict
