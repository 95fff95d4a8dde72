"""Timing: adaptive stopping, warm-up, throttle flags, interleaving (fake timer, no GPU); GPU tests marked."""

import math
import statistics

import numpy as np
import pytest

from attnbench.measure.clocks import ClockReader, open_reader, split_throttled, throttle_mask, throttled
from attnbench.measure.cuda_timers import graph_nodes
from attnbench.errors import UserError
from attnbench.analysis.rounds import batch_precision
from attnbench.analysis.stats import relative_halfwidth
from attnbench.measure.timing import (INTERLEAVE_BATCH_MS, MAX_BATCH_MS, MIN_BATCH_MS, MIN_BATCHES, FakeTimer,
                                      HostTimer, Sample, TimingPolicy, TimingResult, make_timer, measure,
                                      measure_interleaved, policy_from_options)
from tests.virtual_timer import VirtualTimer

ADAPTIVE = dict(warmup_ms=0.0, min_samples=10, max_samples=100_000, max_time_ms=60_000.0, target_precision=0.01)


def noop():
    return None


def sampling_batches(timer: FakeTimer, fn=None) -> list[int]:
    """Batch sizes of the sampling phase (the log after each callable's first call; no warm-up here)."""
    entries = [(f, n) for f, n, _ in timer.log if fn is None or f is fn]
    return [n for _, n in entries[1:]]


# -- adaptive stopping -------------------------------------------------------------------------------


def test_low_noise_converges_and_states_its_precision():
    t = FakeTimer(median_ms=1.0, spread=0.01, seed=1)
    r = measure(t, noop, TimingPolicy(**ADAPTIVE))
    assert r.stop_reason == "converged"
    assert r.precision <= 0.01 and batch_precision(r.samples_ms, r.batch_sizes) == pytest.approx(r.precision)
    assert r.batches >= MIN_BATCHES and sum(r.batch_sizes) == len(r.samples_ms)
    assert len(r.samples_ms) < 200  # 1% noise needs tens of samples, not the 100k limit
    assert statistics.median(r.samples_ms) == pytest.approx(1.0, rel=0.02)


def test_noisy_samples_hit_the_time_limit():
    t = FakeTimer(median_ms=1.0, spread=0.8, seed=2)
    r = measure(t, noop, TimingPolicy(**{**ADAPTIVE, "max_time_ms": 300.0, "target_precision": 0.001}))
    assert r.stop_reason == "time-limit"
    assert r.precision > 0.001
    # The limit is honoured: batches are sized by the time left, so little runs past it.
    assert 300.0 <= r.sampling_ms < 300.0 * 1.5


def test_sample_limit_stops_exactly_at_max_samples():
    t = FakeTimer(median_ms=1.0, spread=0.8, seed=3)
    r = measure(t, noop, TimingPolicy(**{**ADAPTIVE, "max_samples": 57, "target_precision": 0.001}))
    assert r.stop_reason == "sample-limit" and len(r.samples_ms) == 57


def test_fixed_count_without_a_target():
    t = FakeTimer(median_ms=1.0, spread=0.3, seed=4)
    r = measure(t, noop, TimingPolicy(warmup_ms=0.0, min_samples=5, max_samples=37))
    assert r.stop_reason == "fixed" and len(r.samples_ms) == 37
    assert r.precision is not None and r.precision > 0  # a stated precision even for a fixed count


def test_min_samples_and_min_time_are_owed_before_convergence():
    t = FakeTimer(median_ms=1.0, spread=0.0)  # constant: the CI is zero-width from 6 samples on
    r = measure(t, noop, TimingPolicy(**{**ADAPTIVE, "min_samples": 25, "min_time_ms": 100.0}))
    assert r.stop_reason == "converged"
    assert len(r.samples_ms) >= 25 and r.sampling_ms >= 100.0
    assert len(r.samples_ms) <= 110  # and not much more than the minimum time asks for


def test_batches_grow_without_overshooting_much():
    """Few synchronizations (batches) and a stop not far past what the target needs."""
    t = FakeTimer(median_ms=0.05, spread=0.05, seed=5)
    policy = TimingPolicy(**{**ADAPTIVE, "target_precision": 0.003})
    r = measure(t, noop, policy)
    assert r.stop_reason == "converged" and r.precision <= 0.003
    xs = r.samples_ms
    first_ok = next(k for k in range(10, len(xs) + 1) if relative_halfwidth(xs[:k]) <= 0.003)
    # The batch-level half-width (t over ~10 batch medians) is wider and noisier than the sample-level
    # one on independent samples: the price of batch-awareness is bounded.
    assert len(xs) <= 3 * first_ok
    assert MIN_BATCHES <= r.batches <= 20 and sum(r.batch_sizes) == len(xs) == sum(sampling_batches(t))
    sizes = sampling_batches(t)
    lo = MIN_BATCH_MS / 0.05
    assert all(b <= max(1.2 * lo, sum(sizes[:i])) for i, b in enumerate(sizes) if i)  # grows at most x2
    assert all(b >= 0.7 * lo for b in sizes[1:])  # and each later batch lasts >= ~MIN_BATCH_MS


class BurstyTimer(FakeTimer):
    """A FakeTimer whose every batch is moved as a whole by a random level (noise arriving in bursts)."""

    def __init__(self, level_spread: float, **kw):
        super().__init__(**kw)
        self.level_spread = level_spread
        self.levels = np.random.default_rng(99)

    def run(self, fn, n):
        k = float(np.exp(self.levels.normal(0.0, self.level_spread)))
        return [Sample(s.device_ms * k, s.host_ms, s.clock_mhz) for s in super().run(fn, n)]


def test_fixed_counts_are_spread_over_min_batches():
    t = FakeTimer(median_ms=0.1, spread=0.02)
    r = measure(t, noop, TimingPolicy(warmup_ms=1.0, min_samples=10, max_samples=50))
    assert r.stop_reason == "fixed" and r.batch_sizes == [5] * MIN_BATCHES and r.batches == MIN_BATCHES
    r = measure(FakeTimer(), noop, TimingPolicy(warmup_ms=0.0, min_samples=5, max_samples=5))
    assert r.batch_sizes == [1] * 5  # fewer samples than MIN_BATCHES: one per batch
    r = measure(FakeTimer(median_ms=0.1), noop, TimingPolicy(warmup_ms=1.0, max_samples=60, min_batches=20))
    assert r.batch_sizes == [3] * 20  # compare --rounds 20
    with pytest.raises(ValueError, match="min_batches"):
        TimingPolicy(min_batches=0)


def test_min_batches_hold_when_a_limit_binds_first():
    """The sample and time limits leave room for the batches still owed: a sub-microsecond call whose
    shortest batch (MIN_BATCH_MS) is thousands of samples stopped after 3 batches of 4000 at --max-samples
    10000, and a short --max-time-ms after 8 batches, too few for a CI or a verdict over batches."""
    fast = FakeTimer(median_ms=0.0005, spread=0.01, seed=1)
    r = measure(fast, noop, TimingPolicy(**{**ADAPTIVE, "warmup_ms": 25.0, "max_samples": 10_000}))
    assert len(r.samples_ms) <= 10_000 and r.batches >= MIN_BATCHES
    for seed in range(5):
        noisy = FakeTimer(median_ms=1.0, spread=0.2, seed=seed)
        policy = TimingPolicy(**{**ADAPTIVE, "warmup_ms": 5.0, "max_time_ms": 50.0, "target_precision": 0.001})
        r = measure(noisy, noop, policy)
        assert r.stop_reason == "time-limit" and r.batches >= MIN_BATCHES, r.batch_sizes
        assert r.sampling_ms < 50.0 + 10 * 1.0 * 2  # and the limit still holds (a few calls past it)


def test_bursty_noise_needs_more_batches_to_converge_not_larger_ones():
    """Batches moved by 3% as a whole, samples within a batch 0.5% apart: the sample-level half-width is
    under 1% after ten batches, the batch-aware one is not; sampling goes on with batches no larger than
    the average one until the batch medians pin the median down."""
    t = BurstyTimer(0.03, median_ms=0.05, spread=0.005, seed=3)
    r = measure(t, noop, TimingPolicy(**{**ADAPTIVE, "target_precision": 0.01}))
    assert r.stop_reason == "converged"
    cut = sum(r.batch_sizes[:MIN_BATCHES])
    assert relative_halfwidth(r.samples_ms[:cut]) < 0.01  # the old rule would have stopped here
    assert r.batches > 2 * MIN_BATCHES
    assert batch_precision(r.samples_ms, r.batch_sizes) <= 0.01 < batch_precision(r.samples_ms[:cut],
                                                                                  r.batch_sizes[:MIN_BATCHES])
    assert max(r.batch_sizes[MIN_BATCHES:]) <= 2 * max(r.batch_sizes[:MIN_BATCHES])


def test_batches_are_capped_in_time_so_clocks_are_read_often():
    t = FakeTimer(median_ms=1.0, spread=0.01)
    r = measure(t, noop, TimingPolicy(warmup_ms=0.0, min_samples=5, max_samples=1000))
    assert len(r.samples_ms) == 1000
    assert max(sampling_batches(t)) <= MAX_BATCH_MS / 1.0 * 1.1


def test_precision_of_the_policy_is_validated():
    with pytest.raises(ValueError):
        TimingPolicy(target_precision=0.0)
    with pytest.raises(ValueError):
        TimingPolicy(min_time_ms=10.0, max_time_ms=5.0)
    with pytest.raises(ValueError):
        TimingPolicy(min_samples=10, max_samples=5)


def test_cli_policy_is_adaptive_by_default_and_samples_mean_a_fixed_count():
    p = policy_from_options()
    assert p.target_precision == 0.01 and p.max_samples >= 1000
    fixed = policy_from_options(samples=7, min_samples=10)
    assert fixed.target_precision is None and fixed.max_samples == 7 and fixed.min_samples == 7
    assert policy_from_options(target_precision=0).max_samples == 50
    limited = policy_from_options(max_samples=5)  # a limit under the default --min-samples 10 holds
    assert (limited.min_samples, limited.max_samples) == (5, 5)
    with pytest.raises(UserError, match="--max-samples must be at least 1, got 0"):
        policy_from_options(max_samples=0)
    with pytest.raises(UserError, match="not both"):
        policy_from_options(samples=5, target_precision=0.02)
    with pytest.raises(UserError):
        policy_from_options(target_precision=-1)


# -- warm-up and first call --------------------------------------------------------------------------


def test_warmup_is_by_time_not_by_count():
    slow, fast = FakeTimer(median_ms=1.0, spread=0.0), FakeTimer(median_ms=0.1, spread=0.0)
    policy = TimingPolicy(warmup_ms=25.0, min_samples=5, max_samples=5)
    rs, rf = measure(slow, noop, policy), measure(fast, noop, policy)
    assert 25.0 <= rs.warmup_ms < 25.0 + 64 * 1.0 and 25.0 <= rf.warmup_ms < 25.0 + 64 * 0.1
    assert rs.warmup_calls >= 25 and rf.warmup_calls >= 250  # 10x faster call, ~10x the calls
    assert measure(FakeTimer(), noop, TimingPolicy(warmup_ms=0.0, min_samples=3, max_samples=3)).warmup_calls == 0


def test_first_call_is_timed_apart_from_the_samples():
    t = FakeTimer(median_ms=2.0, spread=0.0)
    r = measure(t, noop, TimingPolicy(warmup_ms=0.0, min_samples=4, max_samples=4))
    assert t.log[0][1] == 1 and r.first_call_ms == pytest.approx(2.0)
    assert t.count == 1 + 4 and len(r.samples_ms) == 4


# -- throttling --------------------------------------------------------------------------------------


def test_throttle_flag_is_more_than_ten_percent_below_typical():
    assert throttle_mask([1755.0, 1600.0, 1500.0, None], 1755.0) == [False, False, True, False]
    assert not throttled([1755.0 * 0.9], 1755.0)  # exactly 10% below: not "more than"
    assert throttled([1755.0 * 0.89], 1755.0)
    assert not throttled([100.0], None)  # unknown typical clock: no claim
    assert throttle_mask([1000.0], 1755.0, tolerance=0.5) == [False]


def _throttled_clocks(i: int) -> float:
    return 1300.0 if 31 <= i <= 40 else 1755.0  # call 0 is the first call; samples are calls 1..60


def test_fake_clocks_slow_samples_and_discarding_restores_the_median():
    t = FakeTimer(median_ms=1.0, spread=0.0, clocks=_throttled_clocks)
    r = measure(t, noop, TimingPolicy(warmup_ms=0.0, min_samples=60, max_samples=60))
    assert sum(c == 1300.0 for c in r.clocks_mhz) == 10
    assert max(r.samples_ms) == pytest.approx(1755.0 / 1300.0)  # a throttled sample takes longer
    typical = statistics.median(r.clocks_mhz)
    assert throttled(r.clocks_mhz, typical)
    kept, dropped = split_throttled(r, typical)
    assert len(kept.samples_ms) == 50 and len(dropped["samples_ms"]) == 10
    assert dropped["indices"] == list(range(30, 40)) and set(dropped["clocks_mhz"]) == {1300.0}
    assert max(kept.samples_ms) == pytest.approx(1.0) and len(kept.host_ms) == 50
    assert r.samples_ms == kept.samples_ms[:30] + dropped["samples_ms"] + kept.samples_ms[30:]  # nothing lost


def test_discarding_throttled_samples_restates_the_batch_aware_precision_of_what_is_kept():
    t = FakeTimer(median_ms=1.0, spread=0.02, seed=3, clocks=_throttled_clocks)
    r = measure(t, noop, TimingPolicy(warmup_ms=0.0, min_samples=60, max_samples=60))
    kept, dropped = split_throttled(r, 1755.0)
    assert kept.batch_sizes == [6, 6, 6, 6, 6, 0, 2, 6, 6, 6] and len(dropped["indices"]) == 10
    assert kept.precision == pytest.approx(batch_precision(kept.samples_ms, kept.batch_sizes))
    assert kept.precision > relative_halfwidth(kept.samples_ms)  # not the sample-level one
    from attnbench.impls import resolve
    from attnbench.measure.runner import ClockTrack, measure_cell
    from attnbench.spec import Workload

    w = Workload(batch=1, q_heads=2, kv_heads=2, q_len=32, kv_len=32, head_dim=16, dtype="fp32")
    t = FakeTimer(median_ms=1.0, spread=0.02, seed=3, clocks=_throttled_clocks)
    m = measure_cell(resolve("sdpa-math"), w, "cpu", t, TimingPolicy(warmup_ms=0.0, min_samples=60, max_samples=60),
                     clocks=ClockTrack(), discard_throttled=True)
    assert len(m.samples_ms) == 50  # the stored precision is that of the stored samples, not of all 60
    assert m.extra["precision"] == pytest.approx(batch_precision(m.samples_ms, m.batch_sizes))


def test_split_throttled_never_empties_a_measurement():
    r = TimingResult(mode="fake", samples_ms=[1.0, 1.1], clocks_mhz=[1000.0, 1000.0])
    kept, info = split_throttled(r, 1755.0)
    assert kept.samples_ms == [1.0, 1.1] and info["all_throttled"]
    unknown = TimingResult(mode="fake", samples_ms=[1.0, 1.1], clocks_mhz=[])
    assert split_throttled(unknown, 1755.0) == (unknown, {})
    # an NVML reading that failed for one batch leaves fewer clocks than samples: nothing is dropped, and
    # that is said (it was an empty record, as if nothing had been throttled)
    partial = TimingResult(mode="fake", samples_ms=[1.0, 1.1, 1.2], clocks_mhz=[1000.0, 1755.0])
    kept, info = split_throttled(partial, 1755.0)
    assert kept is partial and info == {"kept": 3, "typical_mhz": 1755.0, "not_per_sample": 2}


def test_runner_flags_and_on_request_discards_throttled_samples():
    from attnbench.impls import resolve
    from attnbench.measure.runner import ClockTrack, measure_cell
    from attnbench.spec import Workload

    w = Workload(batch=1, q_heads=2, kv_heads=2, q_len=32, kv_len=32, head_dim=16, dtype="fp32")
    policy = TimingPolicy(warmup_ms=0.0, min_samples=60, max_samples=60)
    for discard in (False, True):
        t = FakeTimer(median_ms=1.0, spread=0.0, clocks=_throttled_clocks)
        m = measure_cell(resolve("sdpa-math"), w, "cpu", t, policy, clocks=ClockTrack(), discard_throttled=discard)
        assert m.status == "ok" and m.extra["throttled"] is True and m.extra["typical_mhz"] == 1755.0
        if discard:
            assert len(m.samples_ms) == 50 and len(m.extra["discarded_throttled"]["samples_ms"]) == 10
            assert all(c == 1755.0 for c in m.clocks_mhz)
            # Samples 31-40 (calls 31..40, samples 30..39) were set aside: batches 6 and 7 of ten lose them.
            assert m.batch_sizes == (6, 6, 6, 6, 6, 0, 2, 6, 6, 6)
        else:
            assert len(m.samples_ms) == 60 and "discarded_throttled" not in m.extra
            assert m.batch_sizes == (6,) * 10


class _Settling(FakeTimer):
    """A FakeTimer whose call is `step` slower until virtual time `until_ms` (warm-up not over), then steady."""

    def __init__(self, until_ms: float, step: float, **kw):
        super().__init__(**kw)
        self.until_ms, self.step = until_ms, step

    def run(self, fn, n):
        f = 1.0 + self.step if self._now < self.until_ms else 1.0
        return [Sample(s.device_ms * f, s.host_ms, s.clock_mhz) for s in super().run(fn, n)]


def test_a_time_that_changes_during_the_measurement_is_reported_not_averaged_silently():
    """A call 10% slower for its first 10 ms of sampling (after a 25 ms warm-up that was too short) converged
    to a median of the two levels with nothing said; now the cell records the shift and the report shows it."""
    from attnbench.impls import resolve
    from attnbench.measure.runner import measure_cell
    from attnbench.report.tables import timing_note
    from attnbench.spec import Workload

    w = Workload(batch=1, q_heads=2, kv_heads=2, q_len=32, kv_len=32, head_dim=16, dtype="fp32")
    policy = TimingPolicy(**{**ADAPTIVE, "warmup_ms": 25.0, "min_time_ms": 20.0})
    flagged = 0
    for seed in range(10):
        m = measure_cell(resolve("sdpa-math"), w, "cpu", _Settling(35.0, 0.10, median_ms=0.05, spread=0.01,
                                                                        seed=seed), policy)
        assert m.status == "ok" and m.stop_reason == "converged"
        if m.extra.get("shift"):
            flagged += 1
            shift = m.extra["shift"]
            assert shift["change"] == pytest.approx(1 / 1.1 - 1, abs=0.02) and shift["p"] < 0.01
            assert f"SHIFT {100 * shift['change']:+.3g}% after batch {shift['after_batch']}" in timing_note(m, None)
        steady = measure_cell(resolve("sdpa-math"), w, "cpu", FakeTimer(median_ms=0.05, spread=0.01, seed=seed),
                              policy)
        assert "shift" not in steady.extra and "SHIFT" not in timing_note(steady, None)
    assert flagged >= 8


def test_warmup_by_time_keeps_a_slow_start_out_of_the_samples():
    """A call 30% slower for its first 20 ms: a 25 ms warm-up leaves every slow call out of the samples."""
    t = _Settling(20.0, 0.30, median_ms=0.05, spread=0.01, seed=2)
    r = measure(t, noop, TimingPolicy(**{**ADAPTIVE, "warmup_ms": 25.0}))
    assert r.warmup_ms >= 25.0 and max(r.samples_ms) < 1.1 * 0.05
    t = _Settling(20.0, 0.30, median_ms=0.05, spread=0.01, seed=2)
    r = measure(t, noop, TimingPolicy(**{**ADAPTIVE, "warmup_ms": 0.0}))
    assert max(r.samples_ms) > 1.2 * 0.05  # without it they are sampled


def test_the_time_limit_counts_sampling_with_its_overhead_and_waits_for_min_samples():
    class Overhead(FakeTimer):  # 10 us of host work per sample beside a 0.5 us call
        def run(self, fn, n):
            out = super().run(fn, n)
            self._now += 0.01 * n
            return out

    r = measure(Overhead(median_ms=0.0005, spread=0.3), noop,
                TimingPolicy(**{**ADAPTIVE, "warmup_ms": 25.0, "max_time_ms": 50.0, "target_precision": 1e-4}))
    assert r.stop_reason == "time-limit" and 50.0 <= r.sampling_ms < 50.5 and r.batches >= MIN_BATCHES
    # a 5 s call against a 2 s limit: the limit applies once min_samples are in (docs/methods.md)
    slow = measure(FakeTimer(median_ms=5000.0, spread=0.1), noop,
                   TimingPolicy(**{**ADAPTIVE, "warmup_ms": 25.0, "max_time_ms": 2000.0}))
    assert slow.stop_reason == "time-limit" and len(slow.samples_ms) == 10 and slow.warmup_calls == 1
    one = measure(FakeTimer(median_ms=5000.0, spread=0.1), noop,
                  TimingPolicy(**{**ADAPTIVE, "min_samples": 1, "max_time_ms": 2000.0}))
    assert one.stop_reason == "time-limit" and len(one.samples_ms) == 1


def test_report_note_shows_stop_iqr_outliers_clock_and_throttle():
    from attnbench.store import Measurement
    from attnbench.report.tables import timing_note
    from attnbench.spec import Workload

    w = Workload(batch=1, q_heads=2, kv_heads=2, q_len=32, kv_len=32, head_dim=16, dtype="fp32")
    xs = tuple([1.0 + 0.01 * (i % 5) for i in range(40)] + [5.0])  # one far outlier
    m = Measurement(workload=w, impl="x", status="ok", samples_ms=xs, clocks_mhz=(1755.0,) * 30 + (1400.0,) * 11,
                    stop_reason="converged", extra={"precision": 0.004})
    note = timing_note(m, 1755.0)
    assert note.startswith("n=41 converged ±0.4%")
    assert "IQR" in note and "beyond 3 IQR" in note and "1755 MHz" in note and "THROTTLED" in note
    assert "THROTTLED" not in timing_note(m, 1500.0)


# -- interleaving ------------------------------------------------------------------------------------


def _three():
    def a():
        return None

    def b():
        return None

    def c():
        return None

    return a, b, c


def _rounds(timer: FakeTimer, n_calls: int) -> list[list]:
    """The sampling log (after the first calls; no warm-up) split into rounds: a round ends when a
    callable comes back."""
    rounds: list[list] = [[]]
    for f, _, _ in timer.log[n_calls:]:
        if f in rounds[-1]:
            rounds.append([])
        rounds[-1].append(f)
    return rounds


def test_interleaving_gives_each_impl_a_batch_per_round_in_a_seeded_shuffled_order():
    a, b, c = _three()
    policy = TimingPolicy(warmup_ms=0.0, min_samples=5, max_samples=400, max_time_ms=60_000.0, target_precision=1e-4)

    def run(seed):
        t = FakeTimer(spread=0.3, seed=1)  # equal speeds: all three stay in the rotation to the end
        res = measure_interleaved(t, {"a": a, "b": b, "c": c}, policy, seed=seed)
        return t, res

    t, res = run(seed=7)
    rounds = _rounds(t, 3)
    assert len(rounds) >= 6
    # One batch each per round (in the last round, a callable that has stopped is gone).
    assert all(sorted(map(id, r)) == sorted(map(id, (a, b, c))) for r in rounds[:-1])
    orders = {tuple(f.__name__ for f in r) for r in rounds}
    assert len(orders) > 1  # the order changes from round to round
    assert [[f.__name__ for f in r] for r in rounds] == [[f.__name__ for f in r] for r in _rounds(run(7)[0], 3)]
    assert [[f.__name__ for f in r] for r in rounds] != [[f.__name__ for f in r] for r in _rounds(run(8)[0], 3)]
    for name in "abc":
        assert res[name].stop_reason == "sample-limit" and len(res[name].samples_ms) == 400
        assert statistics.median(res[name].samples_ms) == pytest.approx(1.0, rel=0.1)
        assert res[name].info["interleaved"]["rounds"] == sum(f.__name__ == name for r in rounds for f in r)
        assert res[name].info["interleaved"]["rounds"] >= len(rounds) - 1
    assert all(n * 1.0 <= INTERLEAVE_BATCH_MS * 1.5 for n in sampling_batches(t, c))  # short rounds


def test_interleaving_keeps_each_callables_own_speed():
    a, b, c = _three()
    t = FakeTimer(spread=0.05, medians={a: 1.0, b: 2.0, c: 3.0})
    res = measure_interleaved(t, {"a": a, "b": b, "c": c}, TimingPolicy(warmup_ms=5.0, min_samples=20, max_samples=200))
    for name, med in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        assert len(res[name].samples_ms) == 200 and res[name].stop_reason == "fixed"
        assert statistics.median(res[name].samples_ms) == pytest.approx(med, rel=0.03)
        assert res[name].warmup_calls > 0


def test_interleaving_spreads_drift_evenly_across_impls():
    """Two identical kernels on a GPU whose speed drifts 50% per second: measured one after the other the
    second looks ~15% slower; interleaved, both see the same drift."""
    a, b, _ = _three()
    policy = TimingPolicy(warmup_ms=0.0, min_samples=10, max_samples=300)

    seq = FakeTimer(median_ms=1.0, spread=0.01, drift_per_s=0.5)
    ra, rb = measure(seq, a, policy), measure(seq, b, policy)
    sequential = statistics.median(rb.samples_ms) / statistics.median(ra.samples_ms)

    inter = FakeTimer(median_ms=1.0, spread=0.01, drift_per_s=0.5)
    res = measure_interleaved(inter, {"a": a, "b": b}, policy, seed=0)
    interleaved = statistics.median(res["b"].samples_ms) / statistics.median(res["a"].samples_ms)
    assert sequential > 1.1
    assert abs(interleaved - 1.0) < 0.03


def test_interleaving_records_a_failing_impl_and_goes_on():
    a, _, _ = _three()
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("kernel exploded")

    errors: dict = {}
    res = measure_interleaved(FakeTimer(), {"ok": a, "bad": flaky},
                              TimingPolicy(warmup_ms=0.0, min_samples=5, max_samples=20), errors=errors)
    assert set(res) == {"ok"} and len(res["ok"].samples_ms) == 20
    assert "kernel exploded" in str(errors["bad"])
    with pytest.raises(RuntimeError):
        calls["n"] = 0
        measure_interleaved(FakeTimer(), {"bad": flaky}, TimingPolicy(warmup_ms=0.0, min_samples=5, max_samples=20))


def test_runner_interleaves_a_workloads_impls(tmp_path):
    from attnbench.measure.runner import RunConfig, run
    from attnbench.spec import Workload
    from attnbench.store import Store

    w1 = Workload(batch=1, q_heads=2, kv_heads=2, q_len=32, kv_len=32, head_dim=16, dtype="fp32")
    w2 = w1.replace(causal=True)
    config = RunConfig(workloads=[w1, w2], impls=["sdpa-math", "reference", "tests.fixtures.kernels:raises"],
                       device="cpu", policy=TimingPolicy(warmup_ms=0.0, min_samples=5, max_samples=20),
                       interleave=True)
    t = FakeTimer(median_ms=0.5)
    with Store(tmp_path / "r.db") as store:
        rid = run(config, store, timer=t, progress=False)
        ms = store.measurements(rid)
        assert store.run(rid).config.get("interleave") is True
    ok = [m for m in ms if m.status == "ok"]
    assert len(ms) == 6 and len(ok) == 4  # the raising plugin fails before timing, on its own
    assert all(m.extra["timing"]["interleaved"]["of"] == 2 for m in ok)
    # The first workload's two impls are timed together, round by round, before the second workload's.
    fns = [f for f, _, _ in t.log]
    w1 = list(dict.fromkeys(fns))[:2]
    cut = max(i for i, f in enumerate(fns) if f in w1) + 1
    assert set(fns[:cut]) == set(w1) and not set(fns[cut:]) & set(w1)
    sampling = fns[2:cut]  # after the two first calls: one batch each per round
    assert len(sampling) >= 4 and all(set(sampling[i:i + 2]) == set(w1) for i in range(0, len(sampling), 2))


# -- timers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["cold", "warm", "graph", "graph-warm"])
def test_cuda_modes_are_refused_on_the_cpu(mode):
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        make_timer(mode, "cpu")


def test_make_timer_on_the_cpu():
    assert isinstance(make_timer("auto", "cpu"), HostTimer) and make_timer("host", "cpu").mode == "host"
    with pytest.raises(UserError, match="unknown timer"):
        make_timer("fast", "cpu")


def test_host_timer_measures_real_cpu_work():
    def work():
        return sum(i * i for i in range(20_000))

    r = measure(HostTimer("cpu"), work, TimingPolicy(warmup_ms=5.0, min_samples=10, max_samples=2000,
                                                      max_time_ms=500.0, target_precision=0.05))
    assert r.mode == "host" and r.stop_reason in ("converged", "time-limit")
    assert len(r.samples_ms) >= 10 and all(x > 0 for x in r.samples_ms) and r.host_ms == r.samples_ms
    assert r.warmup_calls >= 1 and r.first_call_ms > 0 and r.clocks_mhz == []
    assert r.sampling_ms < 500.0 + 200.0


def test_graph_node_listing_from_cuda_dot_output():
    dot = ('digraph dot {\n"graph_1_node_0"[label="{KERNEL\\n| {ID | 0 | void flash_fwd_kernel<...>}}"];\n'
           '"graph_1_node_1"[label="{MEMSET\\n| {ID | 1}}"];\n"graph_1_node_0" -> "graph_1_node_1";\n}')
    assert graph_nodes(dot) == {"graph_nodes": 2, "kernel_nodes": 1}
    assert graph_nodes('"graph_0_node_0"[label="{MEMSET}"];') == {"graph_nodes": 1, "kernel_nodes": 0}
    assert graph_nodes("something else") == {}


def _bench(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


NCU_CSV = """==PROF== Connected to process 123 (/usr/bin/python3)
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Device","CC","gpu__time_duration.sum","sm__cycles_elapsed.max"
"","","","","","","","","","nsecond","cycle"
"0","123","python3","h","spin_kernel","1","7","0","9.0","1,024","1,900"
"1","123","python3","h","flash_fwd_kernel","1","7","0","9.0","11,040","19,800"
"2","123","python3","h","flash_fwd_kernel","1","7","0","9.0","11,200","20,000"
"3","123","python3","h","flash_fwd_kernel","1","7","0","9.0","12,300","21,000"
"4","123","python3","h","at::cuda::spin_kernel(long)","1","7","0","9.0","1,000","1,900"
"5","123","python3","h","prep","1","7","0","9.0","2,000","3,000"
"6","123","python3","h","main","1","7","0","9.0","40,000","70,000"
"7","123","python3","h","prep","1","7","0","9.0","2,000","3,000"
"8","123","python3","h","main","1","7","0","9.0","41,000","71,000"
"9","123","python3","h","prep","1","7","0","9.0","2,000","3,000"
"10","123","python3","h","main","1","7","0","9.0","42,000","72,000"
==PROF== Disconnected from process 123
"""


def test_timer_accuracy_reads_ncu_csv_and_sums_a_calls_kernels():
    ta = _bench("timer_accuracy")
    rows = ta.parse_ncu_csv(NCU_CSV)
    assert len(rows) == 11 and rows[1] == {"name": "flash_fwd_kernel", "ns": 11040.0, "cycles": 19800.0}
    got = ta.per_call(rows, [["a", "sdpa-flash", True], ["b", "flex", True]])
    assert got[("a", "sdpa-flash")]["ms"] == pytest.approx(0.0112) and got[("a", "sdpa-flash")]["cycles"] == 20000
    assert got[("b", "flex")]["kernels_per_call"] == 2 and got[("b", "flex")]["ms"] == pytest.approx(0.043)
    assert got[("b", "flex")]["cycles"] == 74000  # prep + main, summed per call
    assert ta.parse_ncu_csv("==ERROR== ERR_NVGPUCTRPERM") == []
    # The targets: cold within 3% cycles and 8% time (>= 20 us); graph within 10% (~10 us).
    long = {"ncu": {"ms": 0.05, "cycles": 90_000}, "timers": {"cold": {"ms": 0.052, "mhz": 1900.0}}}
    assert ta.verdict(long)["met"] is False  # 4% high in time (fine) but 0.052 ms x 1900 MHz is 9.8% high in cycles
    long["timers"]["cold"]["mhz"] = 1731.0  # 0.052 ms x 1731 MHz = 90,012 cycles: within 3%
    assert ta.verdict(long)["met"] is True
    long["timers"]["cold"]["ms"] = 0.056  # 12% high in time: missed whatever the cycles say
    assert ta.verdict(long)["met"] is False
    short = {"ncu": {"ms": 0.011, "cycles": 20_000}, "timers": {"graph": {"ms": 0.0125}}}
    assert ta.verdict(short)["met"] is False and ta.verdict({"ncu": None, "timers": {}})["met"] is None


class _FakeNvml:
    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1755

    def nvmlDeviceGetMaxClockInfo(self, h, kind):
        return 1980

    def nvmlDeviceGetTemperature(self, h, kind):
        return 54

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700_000

    def nvmlDeviceGetPowerUsage(self, h):
        raise RuntimeError("not supported")


def test_clock_reader_converts_units_and_tolerates_missing_readings():
    r = ClockReader(_FakeNvml(), handle=object())
    assert r.sm_mhz() == 1755.0 and r.max_sm_mhz() == 1980.0
    cond = r.conditions()
    assert cond == {"temperature_c": 54, "power_limit_w": 700.0, "max_sm_mhz": 1980.0}
    assert open_reader("cpu") is None


# -- the CUDA timers' control flow, on a fake CUDA (a virtual GPU queue; no device needed) ---------------


class FakeGPU:
    """A virtual GPU: ops advance the queue's clock (ms) and are traced; a capturing graph takes them."""

    def __init__(self):
        self.t = 0.0
        self.trace: list[str] = []
        self.capturing = None

    def op(self, what: str, ms: float) -> None:
        if self.capturing is not None:
            self.capturing.nodes.append((what, ms))
        else:
            self.t += ms
            self.trace.append(what)


@pytest.fixture
def fake_cuda(monkeypatch):
    import contextlib
    import types
    import warnings

    import torch

    gpu = FakeGPU()

    class Event:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = gpu.t
            gpu.trace.append("record")

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return other.t - self.t

    class Buf:
        def __init__(self, n):
            self.n = n

        def numel(self):
            return self.n

        def sum(self):
            gpu.op("flush", 0.035)

    class Graph:
        def __init__(self, keep_graph=False):
            self.nodes = []

        def capture_begin(self, *a, **k):
            gpu.capturing = self

        def capture_end(self):
            gpu.capturing = None
            if getattr(self, "invalid", False):
                raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
            if not self.nodes:
                warnings.warn("The CUDA Graph is empty. This usually means that the graph was attempted to be "
                              "captured on wrong device or stream.")

        def instantiate(self):
            pass

        def debug_dump(self, path):
            with open(path, "w") as f:
                f.write("digraph {\n" + "".join(f'"graph_1_node_{i}"[label="{{KERNEL | {w}}}"];\n'
                                                for i, (w, _) in enumerate(self.nodes)) + "}\n")

        def replay(self):
            for what, ms in self.nodes:
                gpu.op(what, ms)

    zeros = torch.zeros
    cuda = torch.cuda
    monkeypatch.setattr(torch, "zeros", lambda n, dtype=None, device=None: Buf(n) if "cuda" in str(device)
                        else zeros(n, dtype=dtype, device=device))
    monkeypatch.setattr(cuda, "Event", Event)
    monkeypatch.setattr(cuda, "_sleep", lambda cycles: gpu.op("spin", cycles / 2000.0 / 1e3))
    monkeypatch.setattr(cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cuda, "get_device_properties", lambda i: types.SimpleNamespace(L2_cache_size=50 * 2**20))
    monkeypatch.setattr(cuda, "device", lambda i: contextlib.nullcontext())
    monkeypatch.setattr(cuda, "Stream", lambda *a, **k: types.SimpleNamespace(wait_stream=lambda s: None))
    monkeypatch.setattr(cuda, "current_stream", lambda *a: types.SimpleNamespace(wait_stream=lambda s: None))
    monkeypatch.setattr(cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(cuda, "CUDAGraph", Graph)
    return gpu


class _Clock:
    def __init__(self):
        self.reads = 0

    def sm_mhz(self):
        self.reads += 1
        return 1700.0 + self.reads

    def max_sm_mhz(self):
        return 2000.0

    def conditions(self):
        return {"temperature_c": 50}


def test_cold_timer_times_only_the_call_with_flush_and_spin_outside_the_window(fake_cuda, monkeypatch):
    from attnbench.measure import cuda_timers
    from attnbench.measure.cuda_timers import CudaEventTimer

    # A spin far longer than any host stall, so no sample is retaken (a retake reads the clock again): on a loaded
    # machine a 10 us pad let a stalled enqueue count as exposed, and the reading count below came out 12, not 11.
    monkeypatch.setattr(cuda_timers, "SPIN_PAD_US", 1e5)
    monkeypatch.setattr(cuda_timers, "SPIN_CAP_US", 1e6)
    gpu = fake_cuda
    clock = _Clock()
    timer = CudaEventTimer("cuda", cold=True, clock=clock)

    def call():
        gpu.op("kernel", 0.010)

    r = measure(timer, call, TimingPolicy(warmup_ms=0.0, min_samples=10, max_samples=150))
    assert r.mode == "cold" and len(r.samples_ms) == 150 and not r.info.get("retaken")
    assert all(x == pytest.approx(0.010) for x in r.samples_ms)  # no flush, spin or launch in the window
    i = gpu.trace.index("kernel", 20)
    assert gpu.trace[i - 3:i + 2] == ["flush", "spin", "record", "kernel", "record"]
    assert r.info["flush_mb"] == 100.0 and r.info["spin_us"] >= 10.0 and r.info["gpu"] == {"temperature_c": 50}
    # one reading per batch (the first call's included), shared by the batch's samples
    assert r.batches >= 2 and clock.reads == r.batches + 1 and len(set(r.clocks_mhz)) == r.batches
    # a keep-alive spin follows each batch's last end event, so the next batch does not start on an idle GPU
    assert gpu.trace[-2:] == ["record", "spin"]


def test_warm_timer_does_not_flush(fake_cuda):
    from attnbench.measure.cuda_timers import CudaEventTimer

    gpu = fake_cuda
    r = measure(CudaEventTimer("cuda", cold=False), lambda: gpu.op("kernel", 0.02),
                TimingPolicy(warmup_ms=0.0, min_samples=5, max_samples=5))
    assert r.mode == "warm" and "flush" not in gpu.trace and r.info["flush_mb"] == 0
    assert all(x == pytest.approx(0.02) for x in r.samples_ms) and r.clocks_mhz == []


def test_graph_timer_replays_a_checked_capture(fake_cuda):
    from attnbench.measure.cuda_timers import CudaGraphTimer

    gpu = fake_cuda
    calls = []

    def call():
        calls.append(gpu.capturing is not None)
        gpu.op("kernel", 0.010)

    timer = CudaGraphTimer("cuda", cold=True)
    r = measure(timer, call, TimingPolicy(warmup_ms=0.0, min_samples=20, max_samples=20))
    assert r.mode == "graph" and all(x == pytest.approx(0.010) for x in r.samples_ms)
    assert calls.count(True) == 1  # captured once; samples are replays, not calls
    assert r.info["graph_nodes"] == 1 and r.info["kernel_nodes"] == 1
    assert r.info["replay_probe_ms"] == pytest.approx(0.010) == r.info["eager_probe_ms"]
    assert timer._graphs == {}  # released after the measurement


def test_graph_capture_failures_are_clear_errors(fake_cuda):
    from attnbench.measure.cuda_timers import CudaGraphTimer, GraphCaptureError

    gpu = fake_cuda
    policy = TimingPolicy(warmup_ms=0.0, min_samples=5, max_samples=5)

    def syncs():
        gpu.op("kernel", 0.01)
        if gpu.capturing is not None:
            gpu.capturing.invalid = True
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    with pytest.raises(GraphCaptureError, match="cannot capture the call in a CUDA graph: RuntimeError: CUDA "
                                                "error: operation not permitted.*then RuntimeError"):
        measure(CudaGraphTimer("cuda"), syncs, policy)
    assert gpu.capturing is None

    with pytest.raises(GraphCaptureError, match="empty"):
        measure(CudaGraphTimer("cuda"), lambda: None, policy)  # host-only work: nothing captured

    def half_elsewhere():  # most of the work bypasses the capture (another stream, say)
        gpu.t += 0.02
        gpu.op("kernel", 0.002)

    with pytest.raises(GraphCaptureError, match="misses work"):
        measure(CudaGraphTimer("cuda"), half_elsewhere, policy)


# -- GPU (run by scripts/gpu_check.sh; skipped without CUDA) ---------------------------------------------

GPU_POLICY = dict(warmup_ms=10.0, min_samples=10, max_samples=5000, min_time_ms=10.0, max_time_ms=1000.0,
                  target_precision=0.02)


def _sdpa_call(seq=512, backend=None):
    import torch
    import torch.nn.functional as F

    q, k, v = (torch.randn(32, 8, seq, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    if backend is None:
        return lambda: F.scaled_dot_product_attention(q, k, v)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def call():
        with sdpa_kernel(getattr(SDPBackend, backend)):
            return F.scaled_dot_product_attention(q, k, v)

    return call


def _check_gpu_result(r: TimingResult, mode: str) -> float:
    med = statistics.median(r.samples_ms)
    assert r.mode == mode and r.stop_reason in ("converged", "time-limit", "sample-limit")
    assert 0.005 < med < 5.0, med  # SDPA fp16 32x8x512x64 takes ~50-150 us on a data-center GPU
    assert len(r.host_ms) == len(r.samples_ms) and all(h > 0 for h in r.host_ms)
    if _has_nvml():
        assert len(r.clocks_mhz) == len(r.samples_ms) and all(100 < c < 4000 for c in r.clocks_mhz)
        assert "gpu" in r.info and r.info["gpu"].get("max_sm_mhz")
    return med


def _has_nvml() -> bool:
    return open_reader("cuda") is not None


@pytest.mark.gpu
def test_gpu_cold_timer_measures_sdpa():
    r = measure(make_timer("cold", "cuda"), _sdpa_call(), TimingPolicy(**GPU_POLICY))
    _check_gpu_result(r, "cold")
    assert r.info["flush_mb"] > 0 and r.info["spin_us"] >= 10.0


@pytest.mark.gpu
def test_gpu_warm_timer_is_not_slower_than_cold():
    call = _sdpa_call()
    cold = _check_gpu_result(measure(make_timer("cold", "cuda"), call, TimingPolicy(**GPU_POLICY)), "cold")
    warm_r = measure(make_timer("warm", "cuda"), call, TimingPolicy(**GPU_POLICY))
    warm = _check_gpu_result(warm_r, "warm")
    assert warm_r.info["flush_mb"] == 0 and warm <= cold * 1.1


@pytest.mark.gpu
def test_gpu_graph_timer_captures_checks_and_replays_sdpa():
    call = _sdpa_call()
    cold = _check_gpu_result(measure(make_timer("cold", "cuda"), call, TimingPolicy(**GPU_POLICY)), "cold")
    r = measure(make_timer("graph", "cuda"), call, TimingPolicy(**GPU_POLICY))
    graph = _check_gpu_result(r, "graph")
    assert r.info["replay_probe_ms"] > 0 and r.info["eager_probe_ms"] > 0
    assert r.info.get("kernel_nodes", 1) != 0 and r.info.get("graph_nodes", 1) >= 1
    assert 0.6 * cold < graph < 1.4 * cold  # the same kernel, launch hidden in both


@pytest.mark.gpu
def test_gpu_graph_timer_replays_several_calls_on_input_copies():
    """A 10 us kernel: a replay holds many calls, each on its own inputs, so the window's fixed cost is
    shared out; the per-call time stays close to the cold eager one and not above it."""
    from attnbench.impls import make_call, make_inputs, resolve
    from attnbench.spec import Workload

    w = Workload(batch=32, q_heads=8, kv_heads=8, q_len=128, kv_len=128, head_dim=64, dtype="fp16")
    impl = resolve("sdpa-flash")
    call = make_call(impl.build(w, "cuda", {}), w, make_inputs(w, "cuda", 0))
    with impl.context():
        cold = statistics.median(measure(make_timer("cold", "cuda"), call, TimingPolicy(**GPU_POLICY)).samples_ms)
        r = measure(make_timer("graph", "cuda"), call, TimingPolicy(**GPU_POLICY))
    graph = statistics.median(r.samples_ms)
    assert r.info["graph_calls"] > 1 and r.info["flush_mb"] > 0
    assert 0.6 * cold < graph < 1.05 * cold, (graph, cold)


@pytest.mark.gpu
def test_gpu_graph_warm_timer_replays_sdpa():
    r = measure(make_timer("graph-warm", "cuda"), _sdpa_call(), TimingPolicy(**GPU_POLICY))
    _check_gpu_result(r, "graph-warm")
    assert r.info["flush_mb"] == 0


@pytest.mark.gpu
def test_gpu_host_timer_on_cuda_includes_the_device_time():
    call = _sdpa_call()
    cold = _check_gpu_result(measure(make_timer("cold", "cuda"), call, TimingPolicy(**GPU_POLICY)), "cold")
    host = _check_gpu_result(measure(make_timer("host", "cuda"), call, TimingPolicy(**GPU_POLICY)), "host")
    assert host > 0.8 * cold  # call + synchronize cannot beat the kernel (warm cache aside)


@pytest.mark.gpu
def test_gpu_graph_capture_failure_is_a_clear_error_and_cuda_still_works():
    import torch

    from attnbench.measure.cuda_timers import GraphCaptureError

    x = torch.randn(1024, device="cuda")
    with pytest.raises(GraphCaptureError, match="cannot capture the call in a CUDA graph"):
        measure(make_timer("graph", "cuda"), lambda: x.sum().item(), TimingPolicy(**GPU_POLICY))
    assert torch.ones(4, device="cuda").sum().item() == 4.0
    r = measure(make_timer("cold", "cuda"), _sdpa_call(seq=128), TimingPolicy(**GPU_POLICY))
    assert r.samples_ms and all(math.isfinite(v) for v in r.samples_ms)


@pytest.mark.gpu
def test_gpu_graph_of_host_only_work_is_rejected():
    import torch

    from attnbench.measure.cuda_timers import GraphCaptureError

    cpu = torch.randn(256)
    with pytest.raises(GraphCaptureError, match="empty|no kernel|misses"):
        measure(make_timer("graph", "cuda"), lambda: cpu.sum(), TimingPolicy(**GPU_POLICY))


@pytest.mark.gpu
def test_gpu_runner_records_a_graph_capture_failure_as_status_error():
    import torch.nn.functional as F

    from attnbench.impls.base import Impl
    from attnbench.measure.runner import measure_cell
    from attnbench.spec import Workload

    class Syncs(Impl):
        name = "syncs"

        def build(self, workload, device, params):
            def fn(q, k, v):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=workload.causal)
                if out.float().abs().sum().item() < 0:  # a host synchronization: capture forbids it
                    raise AssertionError
                return out

            return fn

    w = Workload(batch=2, q_heads=4, kv_heads=4, q_len=128, kv_len=128, head_dim=64, dtype="fp16")
    m = measure_cell(Syncs(), w, "cuda", make_timer("graph", "cuda"), TimingPolicy(**GPU_POLICY))
    assert m.status == "error" and "CUDA graph" in m.reason and m.reason.startswith("timing:")
    ok = measure_cell(Syncs(), w, "cuda", make_timer("cold", "cuda"), TimingPolicy(**GPU_POLICY))
    assert ok.status == "ok" and ok.timer == "cold"


@pytest.mark.gpu
def test_gpu_clock_reader_reads_a_plausible_sm_clock():
    pytest.importorskip("pynvml")
    reader = open_reader("cuda")
    assert reader is not None
    assert 100 < reader.sm_mhz() <= reader.max_sm_mhz() + 1
    assert "temperature_c" in reader.conditions()


class _GuardProbe:
    """A CudaEventTimer without CUDA: `_timed` replays scripted batches (device ms, exposed?)."""

    def __new__(cls, script, cap_hit=False):
        from attnbench.measure import cuda_timers

        t = object.__new__(cuda_timers.CudaEventTimer)
        t.index, t.mhz, t._spin, t._guard = -1, 1000.0, {}, {}
        t._exposed, t._enqueue_us = [], 0.0
        t.cycles_seen = []

        def timed(call, n, cycles, read_clock=True):
            t.cycles_seen.append(cycles)
            batch = script.pop(0)[:n]
            t._exposed = [bad for _, bad in batch]
            t._enqueue_us = 500.0
            return [Sample(device_ms=ms) for ms, _ in batch]

        t._timed = timed
        t._spin_cycles = lambda fn, call: 100_000
        t._target = lambda fn: fn
        return t


def test_spin_guard_drops_uncovered_samples_grows_the_spin_and_retakes():
    fast, slow = 0.010, 0.080  # a covered sample; one whose window held host time
    t = _GuardProbe([[(fast, False), (slow, True), (fast, False), (slow, True)], [(fast, False), (fast, False)]])
    fn = lambda: None  # noqa: E731
    out = t.run(fn, 4)
    assert [s.device_ms for s in out] == [fast] * 4
    assert t.cycles_seen[0] == 100_000 and t.cycles_seen[1] > 100_000  # the retake ran with a longer spin
    assert t._guard[id(fn)] == {"retaken": 2, "exposed_kept": 0}


def test_spin_guard_keeps_and_counts_what_a_capped_spin_cannot_cover():
    from attnbench.measure import cuda_timers

    t = _GuardProbe([[(0.08, True)]] * (cuda_timers.RETAKES + 1))
    fn = lambda: None  # noqa: E731
    out = t.run(fn, 1)
    assert [s.device_ms for s in out] == [0.08]
    assert t._guard[id(fn)] == {"retaken": cuda_timers.RETAKES, "exposed_kept": 1}
    assert max(t.cycles_seen) <= int(cuda_timers.SPIN_CAP_US * t.mhz)


def test_graph_calls_fill_the_window_within_the_cap_and_the_memory_budget():
    from attnbench.measure.cuda_timers import GRAPH_WINDOW_US, MAX_GRAPH_CALLS, graph_calls

    assert graph_calls(10.0, 16 * 2**20) == math.ceil(GRAPH_WINDOW_US / 10.0)  # a 10 us call: 20 per replay
    assert graph_calls(GRAPH_WINDOW_US, 2**20) == 1 and graph_calls(5000.0, 2**20) == 1  # long calls alone
    assert graph_calls(0.5, 2**20) == MAX_GRAPH_CALLS
    assert graph_calls(10.0, 2**30, budget=2**31) == 3  # the original and two copies fit the budget
    assert graph_calls(None, 2**20) == 1 and graph_calls(10.0, None) == 20


def test_a_call_makes_the_same_call_on_a_copy_of_its_inputs():
    import torch

    from attnbench.impls import make_call, make_inputs
    from attnbench.spec import Workload

    seen = []

    def fn(q, k, v):
        seen.append(q.data_ptr())
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    w = Workload(batch=1, q_heads=2, kv_heads=2, q_len=8, kv_len=8, head_dim=4, dtype="fp32")
    inputs = make_inputs(w, "cpu", 0)
    call = make_call(fn, w, inputs)
    assert call.copy_bytes == 2 * 3 * 1 * 2 * 8 * 4 * 4  # q, k, v (fp32), and as much again written
    other = call.on_copy()
    assert torch.equal(call(), other())  # the same values ...
    assert seen[0] != seen[1]            # ... in other memory


class _BatchNoiseTimer(VirtualTimer):
    """Timer protocol on a virtual clock: every batch (run call) gets its own level exp(N(0, batch_sd)) and,
    with probability p_burst, a burst exp(|N(0, 0.05)|); samples inside vary by 1%."""

    def __init__(self, seed: int, batch_sd: float = 0.0, p_burst: float = 0.0):
        super().__init__()
        self.rng, self.batch_sd, self.p_burst = np.random.default_rng(seed), batch_sd, p_burst

    def run(self, fn, n):
        rng = self.rng
        level = math.exp(rng.normal(0.0, self.batch_sd)) if self.batch_sd else 1.0
        if rng.random() < self.p_burst:
            level *= math.exp(abs(rng.normal(0.0, 0.05)))
        return self.emit(0.1 * level * math.exp(e) for e in rng.normal(0.0, 0.01, n))


def test_converged_precision_covers_the_true_median():
    """Adaptive stopping at 1%: when it says `converged`, median +- precision holds the true median at about
    the 95% it claims, also when the batches disagree (between-batch noise 2%: stopped after ~20 batches).
    Simulated with 400 seeds: 88% (between-batch 2%; stopping when the estimate happens to be small
    costs a few points), 96% (bursts), 99% (iid); the reported block-bootstrap CI 92-96%. A sample-level
    precision (ignoring batches) would stop after ~10 batches and cover far less."""
    from attnbench.analysis.rounds import block_median_ci

    def truth(**kw):
        t = _BatchNoiseTimer(999, **kw)
        return statistics.median(s.device_ms for _ in range(20_000) for s in t.run(None, 10))

    policy = TimingPolicy(target_precision=0.01, min_samples=10, max_samples=10_000, min_time_ms=20.0)
    for kw, floor in (({"batch_sd": 0.02}, 0.8), ({"p_burst": 0.3}, 0.88)):
        true = truth(**kw)
        hit = ci_hit = 0
        for seed in range(60):
            r = measure(_BatchNoiseTimer(seed, **kw), lambda: None, policy)
            med = statistics.median(r.samples_ms)
            assert r.stop_reason == "converged" and r.precision <= 0.01
            hit += abs(med - true) <= r.precision * med
            lo, hi = block_median_ci(r.samples_ms, r.batch_sizes, n_resamples=300)
            ci_hit += lo <= true <= hi
        assert hit >= floor * 60 and ci_hit >= floor * 60, (kw, hit, ci_hit)
