"""How long: warm-up by time, adaptive stopping and interleaving, over any Timer.

A Timer turns "call fn n times" into n Samples (one synchronize per batch). `measure` owns the policy:
a first call timed on its own (compilation, graph capture, autotuning), warm-up by time, then batches
of samples until the policy stops, with the stop reason recorded:

- `converged`: at least `min_samples`, `min_time_ms` and `min_batches` batches, and the 95% CI
  half-width of the median is under `target_precision`. The half-width is batch-aware
  (`rounds.batch_precision`): the sample-level one (order statistics) widened by how much the batches
  disagree (the median's cluster-robust variance over its variance for independent samples), so noise
  that moves whole batches (bursts, clock changes) keeps the measurement going instead of being
  averaged away as if every sample were independent;
- `sample-limit` / `time-limit`: `max_samples` reached, or `max_time_ms` of sampling spent (the time
  limit applies only once `min_samples` are in: a few samples are the least a median needs);
- `fixed`: no target; exactly `max_samples` (unless the time limit came first).
- `interrupted`: Ctrl-C during sampling; the KeyboardInterrupt carries the completed batches as `timings`
  (the runner stores them).

Batches are the unit of evidence downstream (a run's CI resamples them; compare pairs interleaved
cells round by round), so every measurement is spread over at least `min_batches` (MIN_BATCHES = 10
by default) batches when its sample count allows: the samples still owed are divided over the batches
still owed. Beyond that, each batch lasts at least MIN_BATCH_MS (so the per-batch synchronize and
statistics cost stay small) and at most MAX_BATCH_MS (the SM clock is read once per batch), and asks
only for the samples the current precision predicts are missing (the half-width shrinks like
1/sqrt(n)), so a converged measurement overshoots by little. It grows at most by doubling the samples
taken so far; when the batches disagree more than their samples predict (between-batch noise
dominates: the batch-aware half-width above 1.5x the sample-level one) it grows no larger than the
average batch, since then only more batches, not larger ones, narrow the interval. The size of every
batch is recorded (`TimingResult.batch_sizes`).

The vocabulary (TimingPolicy, Sample, TimingResult, the Timer protocol) lives in `protocol`, the host and
fake timers in `timers`, the CUDA timers (cold / warm / graph) in `cuda_timers`, the NVML clock reader in
`clocks`; this module re-exports them, so `from attnbench.measure.timing import ...` reaches all of them.
"""

from __future__ import annotations

import math
import uuid
from typing import Any, Callable, Mapping

import numpy as np

from ..analysis.rounds import batch_precision
from ..analysis.stats import relative_halfwidth
from ..errors import UserError
from .clocks import split_throttled, throttle_mask, throttled  # noqa: F401  (public here too)
from .protocol import Sample, Timer, TimingPolicy, TimingResult  # noqa: F401  (public here too)
from .timers import TIMER_MODES, TIMER_TEXT, FakeTimer, HostTimer, make_timer  # noqa: F401  (public here too)

MIN_BATCH_MS = 2.0         # shortest batch of samples (wall time) once the cost per sample is known
MAX_BATCH_MS = 100.0       # longest batch: one clock reading per batch, so this is the clock's resolution
INTERLEAVE_BATCH_MS = 25.0 # longest batch when interleaving: short rounds spread drift evenly
MAX_WARMUP_CALLS = 10_000
PREDICT_MARGIN = 1.1       # ask for 10% more samples than the 1/sqrt(n) prediction
MIN_BATCHES = TimingPolicy().min_batches  # every measurement spread over at least this many batches, by default
BETWEEN_BATCH = 1.5        # batch-level half-width over the sample-level one above which batches stop growing


def check_time_flags(*, warmup_ms: float | None = None, max_time_ms: float | None = None,
                     min_time_ms: float | None = None) -> None:
    """The CLI's time flags, checked under their own names before a TimingPolicy (whose ValueError names its
    fields) is built from them."""
    if warmup_ms is not None and not warmup_ms >= 0:
        raise UserError(f"--warmup-ms must be >= 0, got {warmup_ms}")
    if max_time_ms is not None and not max_time_ms >= 0:
        raise UserError(f"--max-time-ms must be >= 0, got {max_time_ms}")
    if min_time_ms is not None and not 0 <= min_time_ms <= (max_time_ms if max_time_ms is not None else math.inf):
        raise UserError(f"--min-time-ms must be between 0 and --max-time-ms ({max_time_ms}), got {min_time_ms}")


def policy_from_options(*, samples: int | None = None, min_samples: int = 10, max_samples: int = 10_000,
                        warmup_ms: float = 25.0, min_time_ms: float = 20.0, max_time_ms: float = 2000.0,
                        target_precision: float | None = None) -> TimingPolicy:
    """The CLI's policy: adaptive stopping at 1% by default; `samples` (or a target of 0) is a fixed count."""
    check_time_flags(warmup_ms=warmup_ms, max_time_ms=max_time_ms,
                     min_time_ms=min_time_ms if target_precision != 0 and samples is None else None)
    if samples is not None and target_precision:
        raise UserError("give --samples (a fixed count) or --target-precision (adaptive stopping), not both")
    if target_precision is None:
        target_precision = 0.0 if samples is not None else 0.01
    if samples is not None and samples < 1 or min_samples < 1:
        raise UserError("--samples and --min-samples must be at least 1")
    if max_samples < 1:
        raise UserError(f"--max-samples must be at least 1, got {max_samples}")
    if target_precision < 0:
        raise UserError(f"--target-precision must be >= 0 (0: a fixed count), got {target_precision}")
    try:
        if target_precision == 0:
            n = samples or 50
            return TimingPolicy(warmup_ms=warmup_ms, min_samples=min(min_samples, n), max_samples=n,
                                max_time_ms=max_time_ms)
        # --max-samples is a limit: a --min-samples above it is lowered to it, as a fixed count lowers it
        return TimingPolicy(warmup_ms=warmup_ms, min_samples=min(min_samples, max_samples), max_samples=max_samples,
                            min_time_ms=min_time_ms, max_time_ms=max_time_ms, target_precision=target_precision)
    except ValueError as exc:
        raise UserError(f"timing options: {exc}") from None


def __getattr__(name: str):  # the CUDA timers, for `from attnbench.timing import CudaEventTimer`
    if name in ("CudaEventTimer", "CudaGraphTimer", "GraphCaptureError"):
        from . import cuda_timers

        return getattr(cuda_timers, name)
    raise AttributeError(name)


def _precision(xs: list[float], sizes: list[int]) -> float:
    try:
        return batch_precision(xs, sizes)
    except ValueError:  # empty or non-finite samples: never "converged"
        return math.inf


class _Sampler:
    """The sampling state of one callable: first call, warm-up, then one batch per step()."""

    def __init__(self, timer: Timer, fn: Callable[[], object], policy: TimingPolicy,
                 max_batch_ms: float = MAX_BATCH_MS):
        self.timer, self.fn, self.p = timer, fn, policy
        self.max_batch_ms = max_batch_ms
        self.samples: list[Sample] = []
        self.sizes: list[int] = []    # samples per batch, in order
        self.elapsed = 0.0            # wall ms spent in this callable's sample batches
        self.per_ms: float | None = None
        self.precision = math.inf     # batch-aware (rounds.batch_precision)
        self.sample_precision = math.inf
        self.reason = ""
        self.first_ms: float | None = None
        self.warm_ms = 0.0
        self.warm_calls = 0

    @property
    def batches(self) -> int:
        return len(self.sizes)

    def first_call(self) -> None:
        t0 = self.timer.now_ms()
        first = self.timer.run(self.fn, 1)[0]
        self.timer.sync()
        self.first_ms = max(first.device_ms, self.timer.now_ms() - t0)

    def warmup(self) -> None:
        t = self.timer
        start = t.now_ms()
        batch = 1
        while t.now_ms() - start < self.p.warmup_ms and self.warm_calls < MAX_WARMUP_CALLS:
            t.run(self.fn, batch)
            self.warm_calls += batch
            batch = min(batch * 2, 64)
        self.warm_ms = t.now_ms() - start
        if self.warm_calls:
            self.per_ms = self.warm_ms / self.warm_calls

    def next_batch(self) -> int:
        p, n, per = self.p, len(self.samples), self.per_ms
        left = p.max_samples - n
        spread = max(1, p.min_batches - self.batches)  # batches still owed: what is owed is divided over them
        owed = max(p.min_samples - n, 0)             # min_samples are owed whatever the growth rule
        if not per:
            return max(1, min(left, math.ceil(max(owed, 1) / spread)))
        if self.elapsed < p.min_time_ms:
            owed = max(owed, math.ceil((p.min_time_ms - self.elapsed) / per))
        floor = max(1, math.ceil(owed / spread))
        hi_time = max(1, math.ceil((p.max_time_ms - self.elapsed) / per))
        if p.target_precision is None:
            b = max(floor, math.ceil(min(left, hi_time) / spread))
        else:
            lo = max(1, math.ceil(MIN_BATCH_MS / per))
            if self.precision > BETWEEN_BATCH * self.sample_precision and math.isfinite(self.precision):
                cap = max(lo, math.ceil(n / max(1, self.batches)))   # more batches, not larger ones
            else:
                cap = max(lo, n)                                     # at most double
            if math.isfinite(self.precision) and n:
                need = math.ceil(n * ((self.precision / p.target_precision) ** 2 - 1.0) * PREDICT_MARGIN)
            else:
                need = max(6 - n, n)
            b = max(floor, min(max(math.ceil(need / spread), lo), cap, hi_time))
        if self.batches < p.min_batches:  # leave room under both limits for the batches still owed
            b = min(b, max(1, left // spread), max(1, hi_time // spread))
        return max(1, min(left, b, int(self.max_batch_ms / per)))

    def step(self) -> bool:
        """Take one batch; True when the policy says stop (self.reason says why)."""
        b = self.next_batch()
        t0 = self.timer.now_ms()
        got = self.timer.run(self.fn, b)
        dt = self.timer.now_ms() - t0
        self.samples.extend(got)
        self.sizes.append(len(got))
        self.elapsed += dt
        if got:
            self.per_ms = dt / len(got)
        if self.p.target_precision is not None:
            self._update_precision()
        self.reason = self._stop()
        return bool(self.reason)

    def _update_precision(self) -> None:
        xs = [s.device_ms for s in self.samples]
        try:
            self.sample_precision = relative_halfwidth(xs)
            self.precision = batch_precision(xs, self.sizes)
        except ValueError:  # empty or non-finite samples: never "converged"
            self.sample_precision = self.precision = math.inf

    def _stop(self) -> str:
        p, n = self.p, len(self.samples)
        if p.target_precision is None:
            if n >= p.max_samples:
                return "fixed"
        else:
            enough = n >= p.min_samples and self.elapsed >= p.min_time_ms and self.batches >= p.min_batches
            if enough and self.precision <= p.target_precision:
                return "converged"
            if n >= p.max_samples:
                return "sample-limit"
        if self.elapsed >= p.max_time_ms and n >= p.min_samples:
            return "time-limit"
        return ""

    def result(self) -> TimingResult:
        s = self.samples
        xs = [x.device_ms for x in s]
        info: dict[str, Any] = {}
        if hasattr(self.timer, "info"):
            info.update(self.timer.info(self.fn))
        if hasattr(self.timer, "conditions"):
            cond = self.timer.conditions()
            if cond:
                info["gpu"] = cond
        return TimingResult(
            mode=self.timer.mode, samples_ms=xs,
            host_ms=[x.host_ms for x in s if x.host_ms is not None],
            clocks_mhz=[x.clock_mhz for x in s if x.clock_mhz is not None],
            stop_reason=self.reason, first_call_ms=self.first_ms, warmup_ms=self.warm_ms,
            warmup_calls=self.warm_calls, precision=_precision(xs, self.sizes) if xs else None,
            sampling_ms=self.elapsed, batches=self.batches, batch_sizes=list(self.sizes), info=info)


def _interrupted(samplers: Mapping[str, "_Sampler"]) -> dict[str, TimingResult]:
    """Ctrl-C (or SIGTERM: cli.Terminated) during sampling: each callable's completed batches, stop reason
    'interrupted', by name ('' for `measure`); a callable with no completed batch is left out, and the batch in
    progress is lost. The KeyboardInterrupt is re-raised as it was (its type tells Ctrl-C from SIGTERM), with
    these as its `timings` attribute; the runner stores them, so an interruption keeps what was measured."""
    out = {}
    for name, s in samplers.items():
        if s.samples:
            s.reason = "interrupted"
            out[name] = s.result()
    return out


def _release(timer: Timer, fn: Callable) -> None:
    if hasattr(timer, "release"):
        timer.release(fn)


def measure(timer: Timer, fn: Callable[[], object], policy: TimingPolicy = TimingPolicy()) -> TimingResult:
    """First call (timed alone), warm-up by time, then batches of samples until the policy stops."""
    s = _Sampler(timer, fn, policy)
    try:
        s.first_call()
        s.warmup()
        try:
            while not s.step():
                pass
        except KeyboardInterrupt as exc:
            if s.samples and not hasattr(exc, "timings"):
                exc.timings = _interrupted({"": s})
            raise
        return s.result()
    finally:
        _release(timer, fn)


def measure_interleaved(timer: Timer, calls: Mapping[str, Callable[[], object]],
                        policy: TimingPolicy = TimingPolicy(), seed: int = 0,
                        errors: dict[str, BaseException] | None = None) -> dict[str, TimingResult]:
    """Measure several callables round by round, so slow drift (clocks, heat, neighbours) hits all alike.

    Google Benchmark's random interleaving: each round gives every unfinished callable one batch (of
    at most INTERLEAVE_BATCH_MS), in an order shuffled per round by a generator seeded with `seed`.
    First calls, then warm-ups, come first; each callable stops by its own policy and then leaves the
    rotation, so batch k of every callable was taken in round k (`TimingResult.batch_sizes`; compare pairs
    rounds on that). info['interleaved'] holds the rounds taken, the seed, the number of callables and a
    `session` id shared by the callables of this call (pairing by round is valid only within one session).
    With `errors` given, a callable that raises is dropped, its exception stored there under its name;
    otherwise it raises.
    """
    rng = np.random.default_rng(seed)
    session = uuid.uuid4().hex[:12]
    samplers = {name: _Sampler(timer, fn, policy, INTERLEAVE_BATCH_MS) for name, fn in calls.items()}
    rounds: dict[str, int] = {name: 0 for name in samplers}

    def guarded(name: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as exc:
            if errors is None:
                raise
            errors[name] = exc
            samplers.pop(name, None)
            return None

    try:
        for name in list(samplers):
            guarded(name, samplers[name].first_call)
        names = list(samplers)
        for i in rng.permutation(len(names)):  # warm-ups in a shuffled order too
            if names[i] in samplers:
                guarded(names[i], samplers[names[i]].warmup)
        active = list(samplers)
        try:
            while active:
                for i in rng.permutation(len(active)):
                    name = active[i]
                    if name in samplers:
                        rounds[name] += 1
                        guarded(name, samplers[name].step)
                active = [n for n in active if n in samplers and not samplers[n].reason]
        except KeyboardInterrupt as exc:
            if not hasattr(exc, "timings"):
                # a callable that had already stopped keeps its own stop reason
                done = {n: s.result() for n, s in samplers.items() if s.reason}
                partial = {**_interrupted({n: s for n, s in samplers.items() if not s.reason}), **done}
                for name, r in partial.items():
                    r.info["interleaved"] = {"rounds": rounds[name], "seed": seed, "of": len(calls),
                                             "session": session}
                exc.timings = partial
            raise
        out = {}
        for name, s in samplers.items():
            r = s.result()
            r.info["interleaved"] = {"rounds": rounds[name], "seed": seed, "of": len(calls), "session": session}
            out[name] = r
        return out
    finally:
        for fn in calls.values():
            _release(timer, fn)
