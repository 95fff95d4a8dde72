"""The timers: host wall time, a seeded fake for tests, `make_timer`, which picks one by mode name (the
CUDA timers live in `cuda_timers`), and `AutoTimer`, the GPU default's choice between `graph` and `cold`."""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import UserError
from .protocol import Sample, Timer

TIMER_MODES = ("cold", "warm", "graph", "graph-warm", "host")

# What each timer measures, in words: reports' Methods sections and compare's notes quote it.
TIMER_TEXT = {
    "cold": "device time by CUDA events around each call; L2 flushed (a buffer of twice the L2 size read) "
            "before every sample, outside the timed window; the launch hidden behind a spin kernel queued "
            "before the start event (the GPU is busy while the host enqueues the call); one synchronize per "
            "batch of samples",
    "warm": "device time by CUDA events around back-to-back calls; no cache flush (warm L2)",
    "graph": "device time of CUDA-graph replays of the call (captured once, checked to hold the call's "
             "kernels); L2 flushed before every replay, outside the timed window; the host time beside it "
             "is the replay's launch cost, not the eager call's",
    "graph-warm": "device time of CUDA-graph replays of the call, back to back (warm L2)",
    "host": "host wall time of call + synchronize (what the caller waits for, including Python, "
            "dispatch and launch overhead)",
    "auto": "the GPU default: per measurement, a probe of 5 calls with the cold timer, then the graph timer when "
            "the probe's median is under 20 us, else cold; each measurement stores the mode it used as its "
            "timer and the probe in extra['timer_choice'] (rows that never reached timing keep 'auto')",
    "fake": "synthetic samples from a seeded fake timer (tests only)",
}


class HostTimer:
    """Wall time of call + synchronize: what the caller waits for. The only timer on a CPU."""

    mode = "host"

    def __init__(self, device: str = "cpu", clock: Any = None):
        self.device = device
        self.clock = clock  # clocks.ClockReader or None

    def now_ms(self) -> float:
        return time.perf_counter() * 1e3

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)

    def run(self, fn, n):
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            self.sync()
            out.append((time.perf_counter() - t0) * 1e3)
        mhz = self.clock.sm_mhz() if self.clock else None
        return [Sample(device_ms=ms, host_ms=ms, clock_mhz=mhz) for ms in out]

    def conditions(self) -> dict[str, Any]:
        return self.clock.conditions() if self.clock else {}


class FakeTimer:
    """Seeded synthetic samples on a virtual clock, for tests: the pipeline runs end to end with no GPU.

    `fn` is still called (so failures surface) unless call=False. Each sample is lognormal around
    the call's median with relative spread `spread`. The median is `medians[fn]` (by identity) or
    `median_ms`, times (1 + drift_per_s * virtual seconds). `clocks` (a sequence, or a function of
    the index of the call, counting every call) programs the SM clock per sample; when given, a
    sample at clock c takes clock_mhz / c times longer, as a throttled GPU would. `log` records
    (fn, n, virtual start ms) of every run() call.
    """

    mode = "fake"

    def __init__(self, median_ms: float = 1.0, spread: float = 0.02, seed: int = 0,
                 call: bool = True, clock_mhz: float | None = 1755.0, *,
                 medians: Mapping[Callable, float] | None = None, drift_per_s: float = 0.0,
                 clocks: Sequence[float] | Callable[[int], float] | None = None, host_ratio: float = 1.1):
        self.median_ms = median_ms
        self.spread = spread
        self.call = call
        self.clock_mhz = clock_mhz
        self.medians = dict(medians or {})
        self.drift_per_s = drift_per_s
        self.clocks = clocks
        self.host_ratio = host_ratio
        self.rng = np.random.default_rng(seed)
        self._now = 0.0
        self.count = 0
        self.log: list[tuple[Callable, int, float]] = []

    def now_ms(self) -> float:
        return self._now

    def sync(self) -> None:
        pass

    def _clock(self, i: int) -> float | None:
        if self.clocks is None:
            return self.clock_mhz
        if callable(self.clocks):
            return float(self.clocks(i))
        return float(self.clocks[min(i, len(self.clocks) - 1)])

    def run(self, fn, n):
        self.log.append((fn, n, self._now))
        out = []
        for _ in range(n):
            if self.call:
                fn()
            med = self.medians.get(fn, self.median_ms) * (1.0 + self.drift_per_s * self._now / 1e3)
            ms = float(med * np.exp(self.rng.normal(0.0, self.spread)))
            mhz = self._clock(self.count)
            if self.clocks is not None and mhz and self.clock_mhz:
                ms *= self.clock_mhz / mhz
            self.count += 1
            self._now += ms
            out.append(Sample(device_ms=ms, host_ms=ms * self.host_ratio, clock_mhz=mhz))
        return out


AUTO_GRAPH_BELOW_MS = 0.020  # graph below this cold-probe median: on an H200, cold read 1.35x ncu at 7 us and
                             # 1.11x at 18 us, graph 1.12x and 0.97x; from 20 us cold was within 1.5% (FIELD-NOTES)
AUTO_PROBE_CALLS = 5
AUTO_RULE = "graph when the cold probe's median is under 20 us, else cold"


class AutoTimer:
    """`--timer auto` on a GPU: which timer measures a call, decided by a probe.

    Not a Timer: the runner asks it. `probe(fn)` times AUTO_PROBE_CALLS calls with the `cold` timer and
    returns their median (ms); `choose(probes)` picks `graph` (cold-cache CUDA-graph replay, which shares a
    window's fixed 2-3 us over several calls) when the fastest probe is under `threshold_ms`, else `cold`,
    and says why; `timer(mode)` is that timer, made once per mode by `factory(mode)` (tests pass fakes).
    Several calls timed together (an interleaved comparison) get one mode for all, from the fastest.
    """

    mode = "auto"

    def __init__(self, factory: Callable[[str], Timer], threshold_ms: float = AUTO_GRAPH_BELOW_MS,
                 probe_calls: int = AUTO_PROBE_CALLS):
        self.factory = factory
        self.threshold_ms = threshold_ms
        self.probe_calls = probe_calls
        self._timers: dict[str, Timer] = {}

    def timer(self, mode: str) -> Timer:
        if mode not in self._timers:
            self._timers[mode] = self.factory(mode)
        return self._timers[mode]

    def probe(self, fn: Callable[[], object]) -> float:
        t = self.timer("cold")
        xs = [s.device_ms for s in t.run(fn, self.probe_calls)]
        t.sync()
        return float(np.median(xs))

    def choose(self, probes: Sequence[float]) -> tuple[str, dict[str, Any]]:
        fastest = min(probes)
        mode = "graph" if fastest < self.threshold_ms else "cold"
        return mode, {"chose": mode, "rule": AUTO_RULE.replace("20 us", f"{self.threshold_ms * 1e3:g} us"),
                      "probe_calls": self.probe_calls, "fastest_probe_ms": round(fastest, 6)}

    def release(self, fn: Callable[[], object], mode: str) -> None:
        """Forget fn in every timer but the one that will measure it."""
        for m, t in self._timers.items():
            if m != mode and hasattr(t, "release"):
                t.release(fn)


def make_timer(mode: str, device: str) -> Timer:
    """The timer for a mode name on a device ('cpu' allows only 'host'; 'auto' here is cold or host: the
    runner's default on a GPU is an AutoTimer over these)."""
    cuda = str(device).startswith("cuda")
    if mode == "auto":
        mode = "cold" if cuda else "host"
    if mode not in TIMER_MODES:
        raise UserError(f"unknown timer {mode!r}; choose auto (the default), {', '.join(TIMER_MODES)}")
    if not cuda:
        if mode != "host":
            raise UserError(f"timer {mode!r} needs a CUDA GPU; on the CPU use --timer host")
        return HostTimer(device)
    from .clocks import open_reader

    clock = open_reader(device)
    if mode == "host":
        return HostTimer(device, clock)
    from .cuda_timers import CudaEventTimer, CudaGraphTimer

    if mode in ("cold", "warm"):
        return CudaEventTimer(device, cold=mode == "cold", clock=clock)
    return CudaGraphTimer(device, cold=mode == "graph", clock=clock)
