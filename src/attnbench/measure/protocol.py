"""The timing vocabulary: the policy, one sample, a result, and the Timer protocol every timer follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


@dataclass(frozen=True)
class TimingPolicy:
    warmup_ms: float = 25.0          # warm-up by time, after the first (compile) call
    min_samples: int = 10
    max_samples: int = 100           # the count when target_precision is None, else the sample limit
    min_time_ms: float = 0.0         # keep sampling at least this long (wall time of the batches)
    max_time_ms: float = 2000.0      # stop here whatever the precision (after min_samples)
    target_precision: float | None = None  # relative half-width of the median's 95% CI (adaptive)
    min_batches: int = 10            # spread the samples over at least this many batches (rounds, interleaved)

    def __post_init__(self) -> None:
        if self.min_samples < 1 or self.max_samples < self.min_samples:
            raise ValueError("need 1 <= min_samples <= max_samples")
        if self.min_batches < 1:
            raise ValueError("min_batches must be >= 1")
        if self.min_time_ms < 0 or self.max_time_ms < self.min_time_ms or self.warmup_ms < 0:
            raise ValueError("need 0 <= min_time_ms <= max_time_ms and warmup_ms >= 0")
        if self.target_precision is not None and not self.target_precision > 0:
            raise ValueError("target_precision must be > 0 (None: a fixed count of max_samples)")


@dataclass(frozen=True)
class Sample:
    device_ms: float                 # the timed quantity (host wall time for the host timer)
    host_ms: float | None = None     # host-side cost of the call (enqueue time for CUDA timers)
    clock_mhz: float | None = None   # SM clock read during the sample's batch


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
    precision: float | None = None   # relative 95% CI half-width of the median at the stop
    sampling_ms: float = 0.0         # wall time spent in sample batches
    batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # samples per batch, in order (sums to len(samples_ms))
    info: dict[str, Any] = field(default_factory=dict)  # timer facts: sleep, graph nodes, GPU conditions


class Timer(Protocol):
    mode: str

    def now_ms(self) -> float:
        """The clock that warm-up and time limits are read on."""

    def run(self, fn: Callable[[], object], n: int) -> list[Sample]:
        """Call fn n times and return one Sample per call (synchronized at the end)."""

    def sync(self) -> None:
        """Wait for queued device work."""

    # Optional: info(fn) -> dict, conditions() -> dict, release(fn) -> None.
