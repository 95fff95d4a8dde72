"""Roofline and plausibility: pure functions (no torch) from measured or datasheet ceilings to a bound,
a regime label and a flag for figures that cannot be right."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .datasheet import SPECS, _dtype_key, lookup_spec


@dataclass(frozen=True)
class Ceilings:
    """Compute ceilings per dtype (TFLOP/s) and the memory ceiling (GB/s), each with its source:
    'measured', 'datasheet', 'datasheet (TF32)', 'measured (TF32)' or 'unknown'."""

    tflops: dict[str, float | None] = field(default_factory=dict)
    gbps: float | None = None
    tflops_source: dict[str, str] = field(default_factory=dict)
    gbps_source: str = "unknown"
    spec_name: str | None = None
    datasheet_gbps: float | None = None   # the vendor's memory bandwidth (an upper bound for reads alone)
    l2_bytes: float | None = None         # the device's L2 size, when the fingerprint says
    notes: tuple[str, ...] = ()

    def peak(self, dtype: str) -> float | None:
        d = _dtype_key(dtype)
        return self.tflops.get(d)

    def source(self, dtype: str) -> str:
        return self.tflops_source.get(_dtype_key(dtype), "unknown")

    def ridge(self, dtype: str) -> float | None:
        """Ridge point in FLOP/byte: below it a kernel is memory-bound, above it compute-bound."""
        p = self.peak(dtype)
        return ridge_point(p, self.gbps) if p and self.gbps else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d


def ceilings_for(fp: Mapping[str, Any], measured: Mapping[str, Any] | None = None) -> Ceilings:
    """Ceilings for an environment: measured values (a measure_ceilings result) where present, else the
    datasheet entry for fp's GPU (or the generic CPU entry), else None with source 'unknown'.

    A measured result taken on another GPU model than fp's is ignored (with a note). When fp says TF32
    matmuls are on, the fp32 ceiling is the TF32 one (measured 'tf32', else the datasheet's)."""
    notes: list[str] = []
    is_cpu = fp.get("device_kind") == "cpu"
    spec = SPECS["CPU"] if is_cpu else lookup_spec(fp.get("gpu_name"))
    if spec is None:
        notes.append(f"no datasheet entry for {fp.get('gpu_name')!r}")
    m = dict(measured or {})
    if m and m.get("gpu_name") and fp.get("gpu_name") and m["gpu_name"] != fp["gpu_name"]:
        notes.append(f"measured ceilings are for {m['gpu_name']}, not {fp['gpu_name']}: ignored")
        m = {}
    if m and m.get("device"):
        m_is_cpu = not str(m["device"]).startswith("cuda") or (m.get("gpu_name") is None and "gpu_name" in m)
        if m_is_cpu != is_cpu:
            notes.append(f"measured ceilings are for {m['device']}, not a {fp.get('device_kind')} device: ignored")
            m = {}
    m_tflops = {k: v for k, v in (m.get("tflops") or {}).items() if v}
    tf32_on = bool(fp.get("tf32_matmul")) and not is_cpu
    tflops: dict[str, float | None] = {}
    source: dict[str, str] = {}
    for d in ("fp16", "bf16", "fp32", "tf32", "fp64"):
        value, src = None, "unknown"
        if d == "fp32" and tf32_on:
            if m_tflops.get("tf32"):
                value, src = m_tflops["tf32"], "measured (TF32)"
            elif spec is not None and spec.tf32_tflops:
                value, src = spec.tf32_tflops, "datasheet (TF32)"
        if value is None and m_tflops.get(d):
            value, src = m_tflops[d], "measured"
        if value is None and spec is not None and spec.tflops(d):
            value, src = spec.tflops(d), "datasheet"
        tflops[d], source[d] = value, src
    if m.get("gbps"):
        gbps, gsrc = float(m["gbps"]), "measured"
    elif spec is not None and spec.mem_gbps:
        gbps, gsrc = spec.mem_gbps, "datasheet"
    else:
        gbps, gsrc = None, "unknown"
    l2 = fp.get("l2_mb") or (spec.l2_mb if spec is not None else None)
    return Ceilings(tflops=tflops, gbps=gbps, tflops_source=source, gbps_source=gsrc,
                    spec_name=spec.name if spec else None, notes=tuple(notes),
                    datasheet_gbps=spec.mem_gbps if spec is not None else None,
                    l2_bytes=float(l2) * 2**20 if l2 and not is_cpu else None)


def ridge_point(peak_tflops: float, peak_gbps: float) -> float:
    """FLOP/byte where the memory roof meets the compute roof: peak_tflops*1e12 / (peak_gbps*1e9)."""
    if peak_tflops <= 0 or peak_gbps <= 0:
        raise ValueError("peaks must be positive")
    return peak_tflops * 1e3 / peak_gbps


def roofline_bound_tflops(intensity_flop_per_byte: float, peak_tflops: float, peak_gbps: float) -> float:
    """Attainable TFLOP/s at an arithmetic intensity: min(peak, intensity * bandwidth).
    E.g. 100 FLOP/B at 3000 GB/s under an 800 TFLOP/s peak -> min(800, 300) = 300."""
    if intensity_flop_per_byte < 0 or peak_tflops < 0 or peak_gbps < 0:
        raise ValueError("intensity and peaks must be non-negative")
    if math.isinf(intensity_flop_per_byte):
        return float(peak_tflops)
    return min(float(peak_tflops), intensity_flop_per_byte * peak_gbps / 1e3)


def regime(flops: float, bytes: float, device_ms: float | None, host_ms: float | None,  # noqa: A002
           ceilings: Ceilings, dtype: str) -> str:
    """'host-bound' when the median host time per call exceeds the device time (the GPU waits for the
    host), else 'memory-bound' or 'compute-bound' by the intensity against the ridge point; 'unknown'
    when the ceilings are."""
    if host_ms is not None and device_ms is not None and host_ms > device_ms:
        return "host-bound"
    ridge = ceilings.ridge(dtype)
    if ridge is None:
        return "unknown"
    intensity = math.inf if bytes <= 0 else flops / bytes
    return "memory-bound" if intensity < ridge else "compute-bound"


def plausibility(achieved_tflops: float | None, achieved_gbps: float | None, ceilings: Ceilings,
                 dtype: str, *, tolerance: float = 0.0, working_set_bytes: float | None = None) -> tuple[str, str]:
    """('ok', '') or ('implausible', reason) when a figure is above 100% (+ tolerance) of the compute or the
    memory ceiling; the reason names the likely cause.

    The measured memory ceiling is a device-to-device copy, which reads and writes; a kernel that mostly
    reads (decode over a KV cache) can run above it, up to the vendor's bandwidth. So when the working set
    is far larger than the L2 (more than 4x: it cannot be served from the cache, and the cold timer
    flushes the L2 anyway) the memory limit is the larger of the measured copy and the datasheet
    bandwidth; for a working set that could sit in the L2 it is the copy ceiling, the sign of a warm cache."""
    reasons: list[str] = []
    peak = ceilings.peak(dtype)
    if achieved_tflops is not None and peak and achieved_tflops > peak * (1 + tolerance):
        reasons.append(f"{achieved_tflops:.4g} TFLOP/s is {100 * achieved_tflops / peak:.0f}% of the "
                       f"{ceilings.source(dtype)} {_dtype_key(dtype)} peak ({peak:.4g} TFLOP/s): above the "
                       f"matmul ceiling: timer error or miscounted FLOPs")
    limit, what = ceilings.gbps, f"{ceilings.gbps_source} memory bandwidth"
    big = (working_set_bytes is not None and ceilings.l2_bytes is not None
           and working_set_bytes > 4 * ceilings.l2_bytes)
    if big and ceilings.datasheet_gbps and (limit is None or ceilings.datasheet_gbps > limit):
        limit, what = ceilings.datasheet_gbps, "datasheet memory bandwidth (the working set is far above the L2)"
    if achieved_gbps is not None and limit and achieved_gbps > limit * (1 + tolerance):
        cause = ("above the copy ceiling and the datasheet: timer error or miscounted bytes" if big else
                 "above the copy ceiling: data was probably cache-resident (warm L2) or the bytes are miscounted")
        reasons.append(f"{achieved_gbps:.4g} GB/s is {100 * achieved_gbps / limit:.0f}% of the {what} "
                       f"({limit:.4g} GB/s): {cause}")
    return ("implausible", "; ".join(reasons)) if reasons else ("ok", "")
