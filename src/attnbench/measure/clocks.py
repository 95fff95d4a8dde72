"""The GPU's clocks and conditions, read through NVML (nvidia-ml-py's `pynvml`), optionally; throttle flags.

Read only: attnbench never sets clocks or power limits. Without pynvml, without a driver, or on a
device NVML cannot see (MIG slices, some containers) every reading is None and timing goes on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence


class ClockReader:
    """SM clock (MHz) now, plus slow-changing conditions (temperature, power limit, throttle reasons)."""

    def __init__(self, nvml: Any, handle: Any):
        self._nvml = nvml
        self._h = handle

    def _get(self, fn: str, *args: Any) -> Any:
        try:
            return getattr(self._nvml, fn)(self._h, *args)
        except Exception:
            return None

    def sm_mhz(self) -> float | None:
        v = self._get("nvmlDeviceGetClockInfo", getattr(self._nvml, "NVML_CLOCK_SM", 1))
        return float(v) if v else None

    def max_sm_mhz(self) -> float | None:
        v = self._get("nvmlDeviceGetMaxClockInfo", getattr(self._nvml, "NVML_CLOCK_SM", 1))
        return float(v) if v else None

    def conditions(self) -> dict[str, Any]:
        """Temperature (C), power draw and enforced limit (W), max SM clock, active clock-event reasons."""
        n = self._nvml
        out: dict[str, Any] = {}
        t = self._get("nvmlDeviceGetTemperature", getattr(n, "NVML_TEMPERATURE_GPU", 0))
        if t is not None:
            out["temperature_c"] = int(t)
        for key, fn in (("power_limit_w", "nvmlDeviceGetEnforcedPowerLimit"), ("power_w", "nvmlDeviceGetPowerUsage")):
            v = self._get(fn)
            if v is not None:
                out[key] = round(float(v) / 1000.0, 1)  # NVML reports milliwatts
        mx = self.max_sm_mhz()
        if mx:
            out["max_sm_mhz"] = mx
        reasons = self._get("nvmlDeviceGetCurrentClocksEventReasons")
        if reasons is None:
            reasons = self._get("nvmlDeviceGetCurrentClocksThrottleReasons")
        if reasons is not None:
            out["clock_event_reasons"] = int(reasons)  # bit mask (nvmlClocksEventReason*)
        return out


def _handle(nvml: Any, device: str) -> Any:
    """The NVML handle of torch's `device`: by UUID (robust to CUDA_VISIBLE_DEVICES), else by index."""
    import torch

    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        for cand in (text, f"GPU-{text}"):
            for arg in (cand, cand.encode()):
                try:
                    return nvml.nvmlDeviceGetHandleByUUID(arg)
                except Exception:
                    pass
    return nvml.nvmlDeviceGetHandleByIndex(index)


def open_reader(device: str) -> ClockReader | None:
    """A ClockReader for a CUDA device, or None when NVML is not usable here."""
    if not str(device).startswith("cuda"):
        return None
    try:
        import pynvml  # nvidia-ml-py; optional

        pynvml.nvmlInit()
        reader = ClockReader(pynvml, _handle(pynvml, device))
    except Exception:
        return None
    return reader if reader.sm_mhz() is not None else None


def throttle_mask(clocks: Sequence[float | None], typical: float | None, tolerance: float = 0.10) -> list[bool]:
    """Per sample: did its SM clock fall more than `tolerance` below the typical clock? (False if unknown)"""
    if not typical or typical <= 0:
        return [False] * len(clocks)
    limit = typical * (1.0 - tolerance)
    return [c is not None and c < limit for c in clocks]


def throttled(clocks: Sequence[float | None], typical: float | None, tolerance: float = 0.10) -> bool:
    """A measurement is throttled when any of its clock readings fell > tolerance below typical."""
    return any(throttle_mask(clocks, typical, tolerance))


def split_throttled(result: Any, typical: float | None,
                    tolerance: float = 0.10) -> tuple[Any, dict[str, Any]]:
    """Drop a TimingResult's throttled samples (--discard-throttled), returning them beside the kept result.

    Nothing is dropped when clocks are not known per sample, and all samples are kept (and that is
    said) when every one of them is throttled: a measurement is never emptied silently. The kept result's
    batch sizes shrink with the samples (a batch may become empty, so batch k stays round k) and its
    precision is the batch-aware one of what is kept, as the sampler's is.
    """
    from ..analysis.rounds import batch_precision

    n = len(result.samples_ms)
    if n == 0 or not result.clocks_mhz:
        return result, {}
    if len(result.clocks_mhz) != n:  # a reading failed for some batch: which sample had which clock is unknown
        return result, {"kept": n, "typical_mhz": typical, "not_per_sample": len(result.clocks_mhz)}
    mask = throttle_mask(result.clocks_mhz, typical, tolerance)
    k = sum(mask)
    if k == 0:
        return result, {}
    if k == n:
        return result, {"all_throttled": True, "kept": n, "typical_mhz": typical}
    keep = [i for i in range(n) if not mask[i]]
    drop = [i for i in range(n) if mask[i]]
    host = result.host_ms if len(result.host_ms) == n else None
    kept_ms = [result.samples_ms[i] for i in keep]
    sizes = without(result.batch_sizes, drop) if sum(result.batch_sizes) == n else []
    try:
        precision = batch_precision(kept_ms, sizes)
    except ValueError:  # non-finite samples: never "converged"
        precision = float("inf")
    kept = replace(result, samples_ms=kept_ms,
                   clocks_mhz=[result.clocks_mhz[i] for i in keep],
                   host_ms=[host[i] for i in keep] if host else result.host_ms,
                   precision=precision, batch_sizes=sizes)
    dropped = {"indices": drop, "samples_ms": [result.samples_ms[i] for i in drop],
               "clocks_mhz": [result.clocks_mhz[i] for i in drop], "typical_mhz": typical,
               "tolerance": tolerance}
    return kept, dropped


def without(sizes: Sequence[int], dropped: Sequence[int]) -> list[int]:
    """Batch sizes after the samples at `dropped` (indices into the samples) were set aside; a batch may
    become empty and is kept as 0, so batch k stays round k of an interleaved measurement."""
    import bisect
    import itertools

    ends = list(itertools.accumulate(sizes))
    out = list(sizes)
    for i in dropped:
        out[bisect.bisect_right(ends, i)] -= 1
    return out
