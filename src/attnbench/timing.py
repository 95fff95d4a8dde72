"""How long: Timer protocol, CUDA-event / host / fake timers, warm-up by time and the sampling loop.

A Timer turns "call fn n times" into n Samples. `measure` owns the policy: one first call (compile,
autotune, handle creation) timed on its own, warm-up by time, then batches of samples until the
policy says stop, with the stop reason recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np


@dataclass(frozen=True)
class TimingPolicy:
    warmup_ms: float = 25.0          # warm-up by time, after the first (compile) call
    min_samples: int = 10
    max_samples: int = 100           # fixed count when target_precision is None
    min_time_ms: float = 0.0         # keep sampling at least this long (sum of samples' wall time)
    max_time_ms: float = 2000.0      # stop here whatever the precision
    target_precision: float | None = None  # relative half-width of the median's 95% CI (adaptive)

    def __post_init__(self) -> None:
        if self.min_samples < 1 or self.max_samples < self.min_samples:
            raise ValueError("need 1 <= min_samples <= max_samples")


@dataclass(frozen=True)
class Sample:
    device_ms: float                 # the timed quantity (host wall time for the host timer)
    host_ms: float | None = None     # host-side cost of the call (enqueue time for CUDA timers)
    clock_mhz: float | None = None


@dataclass
class TimingResult:
    mode: str
    samples_ms: list[float]
    host_ms: list[float] = field(default_factory=list)
    clocks_mhz: list[float] = field(default_factory=list)
    stop_reason: str = ""
    first_call_ms: float | None = None
    warmup_ms: float = 0.0
    warmup_calls: int = 0


class Timer(Protocol):
    mode: str

    def now_ms(self) -> float:
        """The clock that warm-up and time limits are read on."""

    def run(self, fn: Callable[[], object], n: int) -> list[Sample]:
        """Call fn n times and return one Sample per call."""

    def sync(self) -> None:
        """Wait for queued device work."""


class HostTimer:
    """Wall time of call + synchronize: what the caller waits for. The only timer on a CPU."""

    mode = "host"

    def __init__(self, device: str = "cpu"):
        self.device = device

    def now_ms(self) -> float:
        return time.perf_counter() * 1e3

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def run(self, fn, n):
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            self.sync()
            ms = (time.perf_counter() - t0) * 1e3
            out.append(Sample(device_ms=ms, host_ms=ms))
        return out


class CudaEventTimer:
    """Device time per call by CUDA events; cold L2 by default (an L2-sized buffer is rewritten
    between samples, outside the timed window); one synchronize per batch of samples."""

    def __init__(self, device: str = "cuda", cold: bool = True):
        import torch

        self.device = device
        self.cold = cold
        self.mode = "cold" if cold else "warm"
        self._flush = None
        if cold:
            props = torch.cuda.get_device_properties(torch.device(device))
            l2 = int(getattr(props, "L2_cache_size", 0) or 64 * 2**20)
            # Twice the L2, so nothing of the previous call's data can survive the rewrite.
            self._flush = torch.empty(2 * l2 // 4, dtype=torch.int32, device=device)

    def now_ms(self) -> float:
        return time.perf_counter() * 1e3

    def sync(self) -> None:
        import torch

        torch.cuda.synchronize()

    def run(self, fn, n):
        import torch

        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        host = []
        for i in range(n):
            if self._flush is not None:
                self._flush.zero_()
            starts[i].record()
            t0 = time.perf_counter()
            fn()
            host.append((time.perf_counter() - t0) * 1e3)
            ends[i].record()
        torch.cuda.synchronize()
        return [Sample(device_ms=s.elapsed_time(e), host_ms=h) for s, e, h in zip(starts, ends, host)]


class FakeTimer:
    """Seeded synthetic samples on a virtual clock, for tests: the pipeline runs end to end with no GPU.

    `fn` is still called (so failures surface) unless call=False. Times are lognormal around
    `median_ms` (or `medians[name]` picked by the caller) with relative spread `spread`.
    """

    mode = "fake"

    def __init__(self, median_ms: float = 1.0, spread: float = 0.02, seed: int = 0,
                 call: bool = True, clock_mhz: float | None = 1755.0):
        self.median_ms = median_ms
        self.spread = spread
        self.call = call
        self.clock_mhz = clock_mhz
        self.rng = np.random.default_rng(seed)
        self._now = 0.0

    def now_ms(self) -> float:
        return self._now

    def sync(self) -> None:
        pass

    def run(self, fn, n):
        out = []
        for _ in range(n):
            if self.call:
                fn()
            ms = float(self.median_ms * np.exp(self.rng.normal(0.0, self.spread)))
            self._now += ms
            out.append(Sample(device_ms=ms, host_ms=ms * 1.1, clock_mhz=self.clock_mhz))
        return out


def make_timer(mode: str, device: str) -> Timer:
    """The timer for a mode name on a device ('cpu' allows only 'host')."""
    from .errors import UserError

    if device == "cpu" or not device.startswith("cuda"):
        if mode not in ("host", "auto"):
            raise UserError(f"timer {mode!r} needs a CUDA GPU; on the CPU use --timer host")
        return HostTimer(device)
    if mode in ("cold", "auto"):
        return CudaEventTimer(device, cold=True)
    if mode == "warm":
        return CudaEventTimer(device, cold=False)
    if mode == "host":
        return HostTimer(device)
    raise UserError(f"unknown timer {mode!r}; choose cold, warm or host")


def measure(timer: Timer, fn: Callable[[], object], policy: TimingPolicy = TimingPolicy()) -> TimingResult:
    """First call (timed alone), warm-up by time, then samples in growing batches until the policy stops."""
    t0 = timer.now_ms()
    first = timer.run(fn, 1)[0]
    timer.sync()
    first_ms = max(first.device_ms, timer.now_ms() - t0)

    warm_start = timer.now_ms()
    warm_calls = 0
    batch = 1
    while timer.now_ms() - warm_start < policy.warmup_ms and warm_calls < 10_000:
        timer.run(fn, batch)
        warm_calls += batch
        batch = min(batch * 2, 64)
    warmup_ms = timer.now_ms() - warm_start

    samples: list[Sample] = []
    start = timer.now_ms()
    batch = min(policy.min_samples, 10)
    reason = ""
    while True:
        samples.extend(timer.run(fn, batch))
        n = len(samples)
        elapsed = timer.now_ms() - start
        if n >= policy.min_samples and elapsed >= policy.min_time_ms:
            if policy.target_precision is not None:
                if relative_ci_halfwidth([s.device_ms for s in samples]) <= policy.target_precision:
                    reason = "converged"
                    break
            elif n >= policy.max_samples:
                reason = "fixed"
                break
        if n >= policy.max_samples:
            reason = "sample-limit"
            break
        if elapsed >= policy.max_time_ms and n >= policy.min_samples:
            reason = "time-limit"
            break
        batch = max(1, min(policy.max_samples - n, max(batch, n // 2)))
    return TimingResult(
        mode=timer.mode,
        samples_ms=[s.device_ms for s in samples],
        host_ms=[s.host_ms for s in samples if s.host_ms is not None],
        clocks_mhz=[s.clock_mhz for s in samples if s.clock_mhz is not None],
        stop_reason=reason,
        first_call_ms=first_ms,
        warmup_ms=warmup_ms,
        warmup_calls=warm_calls,
    )


def relative_ci_halfwidth(samples: list[float], confidence: float = 0.95) -> float:
    """Half-width of a distribution-free CI of the median (binomial order statistics), over the median."""
    x = np.sort(np.asarray(samples, dtype=float))
    n = len(x)
    if n < 6:
        return float("inf")
    from scipy.stats import binom

    lo = int(binom.ppf((1 - confidence) / 2, n, 0.5))
    hi = min(n - 1, n - lo - 1)
    lo = max(0, lo - 1) if lo > 0 else 0
    med = float(np.median(x))
    if med <= 0:
        return float("inf")
    return float((x[hi] - x[lo]) / 2 / med)
