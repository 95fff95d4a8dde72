"""What was measured: the frozen Measurement, with raw samples; summaries are derived, never stored instead."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..spec import Workload

STATUSES = ("ok", "unsupported", "oom", "error", "incorrect")


def params_key(params: dict[str, Any] | None) -> str:
    """Canonical text of an impl's params; '' when there are none."""
    return json.dumps(params, sort_keys=True, separators=(",", ":")) if params else ""


@dataclass(frozen=True)
class Measurement:
    workload: Workload
    impl: str
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    env_id: str = ""
    device: str = "cpu"
    timer: str = ""                      # cold / warm / graph / host / fake
    samples_ms: tuple[float, ...] = ()   # device time per sample (host time for the host timer)
    host_ms: tuple[float, ...] = ()      # host-side time per call, beside the device time
    clocks_mhz: tuple[float, ...] = ()   # SM clock read around each sample, where known
    batch_sizes: tuple[int, ...] = ()    # samples in each batch, in order (interleaved: batch k is round k);
                                         # () = structure unknown (stored before schema 2)
    stop_reason: str = ""                # converged / time-limit / sample-limit / fixed / interrupted
    compile_ms: float | None = None      # first call (compilation, autotuning, handle creation)
    warmup_ms: float | None = None
    rel_err: float | None = None
    tolerance: float | None = None
    backend: str = ""                    # what actually ran (e.g. the kernel sdpa-auto chose)
    peak_mem_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
        if self.batch_sizes and (sum(self.batch_sizes) != len(self.samples_ms) or min(self.batch_sizes) < 0):
            raise ValueError(f"batch_sizes sum to {sum(self.batch_sizes)}, not to the {len(self.samples_ms)} samples")

    @property
    def ok(self) -> bool:
        return self.status == "ok" and len(self.samples_ms) > 0

    @property
    def cell(self) -> tuple[str, str, str]:
        """(workload key, impl, params) identifies a cell within a run."""
        return (self.workload.key, self.impl, params_key(self.params))

    @property
    def impl_label(self) -> str:
        if not self.params:
            return self.impl
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.impl}[{inner}]"

    @property
    def median_ms(self) -> float | None:
        if not self.samples_ms:
            return None
        import numpy as np

        return float(np.median(self.samples_ms))
