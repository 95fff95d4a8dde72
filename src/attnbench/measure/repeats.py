"""`run --repeats N`: a cell's N measurements, taken in N passes over the sweep, kept as one measurement."""

# Why one measurement per cell rather than one per repeat: the store keys a run's measurements by cell,
# and every reader (report, compare, gate, HTML) expects one per cell; the repeats are batches of it.
# Every raw sample of every repeat is kept (concatenated in time order, with the batch sizes), the
# merged measurement is stored again after each repeat (so an interruption loses at most the repeat
# in progress), and extra['repeats'] records each repeat on its own: its samples and batches, median,
# stop reason, precision, compile time, backend and interleaving session.

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..analysis.rounds import batch_precision
from ..analysis.stats import median
from ..store import Measurement


def repeats_done(m: Measurement | None) -> int:
    """How many repeats a stored measurement holds (0 for none; a measurement without the record is one)."""
    if m is None:
        return 0
    return len(m.extra.get("repeats") or ()) or 1


def repeat_info(m: Measurement, rep: int, seed: int) -> dict[str, Any]:
    """What extra['repeats'] keeps of one repeat (0-based `rep`)."""
    info: dict[str, Any] = {"repeat": rep + 1, "seed": seed, "status": m.status, "n": len(m.samples_ms),
                            "batches": len(m.batch_sizes)}
    if m.ok:
        info["median_ms"] = median(m.samples_ms)
    for key, value in (("stop_reason", m.stop_reason), ("compile_ms", m.compile_ms), ("backend", m.backend),
                       ("precision", m.extra.get("precision")), ("throttled", m.extra.get("throttled")),
                       ("shift", m.extra.get("shift")),
                       ("session", (m.extra.get("timing") or {}).get("interleaved", {}).get("session"))):
        if value not in (None, "", False):
            info[key] = value
    return info


def spread(m: Measurement) -> float | None:
    """max/min - 1 of the repeats' medians, or None with fewer than two ok repeats."""
    meds = [r["median_ms"] for r in m.extra.get("repeats") or () if r.get("median_ms")]
    return max(meds) / min(meds) - 1.0 if len(meds) > 1 else None


def _joined(*parts: str) -> str:
    return "/".join(dict.fromkeys(x for p in parts for x in p.split("/") if x))


def _dropped(prev: dict[str, Any], new: dict[str, Any], offset: int) -> dict[str, Any]:
    """Two repeats' extra['discarded_throttled'], the second's indices moved past the first's samples."""
    if not new.get("indices"):
        return prev
    if not prev.get("indices"):
        prev = {}
    out = dict(new)
    for key in ("samples_ms", "clocks_mhz"):
        out[key] = list(prev.get(key, [])) + list(new.get(key, []))
    out["indices"] = list(prev.get("indices", [])) + [i + offset for i in new["indices"]]
    return out


def merge(prev: Measurement | None, new: Measurement, rep: int, seed: int) -> Measurement:
    """`prev` (the cell's repeats so far, or None) with repeat `rep` (0-based) added.

    A failing repeat turns the cell's status into the failure, with 'repeat K:' before the reason, and
    keeps the earlier repeats' samples (nothing measured is dropped; the cell no longer counts as ok).
    """
    info = repeat_info(new, rep, seed)
    if prev is None:
        return dataclasses.replace(new, extra={**new.extra, "repeats": [info]})
    extra = dict(prev.extra)
    extra["repeats"] = list(prev.extra.get("repeats") or [repeat_info(prev, 0, seed)]) + [info]
    if not new.ok:
        return dataclasses.replace(prev, status=new.status, reason=f"repeat {rep + 1}: {new.reason}",
                                   rel_err=new.rel_err if new.rel_err is not None else prev.rel_err, extra=extra)
    if not prev.ok:
        return dataclasses.replace(prev, extra=extra)
    samples = prev.samples_ms + new.samples_ms
    sizes = prev.batch_sizes + new.batch_sizes if prev.batch_sizes and new.batch_sizes else ()
    if new.extra.get("throttled"):
        extra["throttled"] = True
    if new.extra.get("shift") and not extra.get("shift"):  # the first pass whose time changed within it
        extra["shift"] = dict(new.extra["shift"], repeat=rep + 1)
    before = len(prev.samples_ms) + len((prev.extra.get("discarded_throttled") or {}).get("indices", []))
    dropped = _dropped(prev.extra.get("discarded_throttled") or {}, new.extra.get("discarded_throttled") or {},
                       before)
    if dropped:
        extra["discarded_throttled"] = dropped
    precision = batch_precision(samples, sizes)
    if math.isfinite(precision):
        extra["precision"] = precision
    else:
        extra.pop("precision", None)
    errs = [e for e in (prev.rel_err, new.rel_err) if e is not None]
    peaks = [p for p in (prev.peak_mem_mb, new.peak_mem_mb) if p is not None]
    return dataclasses.replace(
        prev, samples_ms=samples, host_ms=prev.host_ms + new.host_ms, clocks_mhz=prev.clocks_mhz + new.clocks_mhz,
        batch_sizes=sizes, stop_reason=_joined(prev.stop_reason, new.stop_reason),
        backend=_joined(prev.backend, new.backend), rel_err=max(errs) if errs else None,
        peak_mem_mb=max(peaks) if peaks else None, extra=extra)
