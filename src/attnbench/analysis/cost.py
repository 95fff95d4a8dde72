"""GPU-hours and money for a request volume, from measured latencies, with the uncertainty carried through."""

from __future__ import annotations

import math
from typing import Any

MS_PER_HOUR = 3.6e6
DAYS_PER_MONTH = 30

ASSUMPTION = (
    "one GPU serves the calls one after another at the measured median time per call (no batching, no "
    "concurrency, no idle time, no other work); a month is 30 days; intervals come from the 95% CI of the "
    "median time"
)

SAVING_NOTE = (
    "saving = B's cost - A's cost (positive: choosing A saves); its bounds combine the two sides' 95% "
    "intervals worst-case, so they hold whenever both intervals do (at least 90% coverage)"
)

_QUANTITIES = ("gpu_hours_per_day", "gpus_fully_busy", "usd_per_day", "usd_per_month")


def _interval(estimate: float, lo: float, hi: float) -> dict[str, float]:
    return {"estimate": estimate, "lo": lo, "hi": hi}


def cost(median_ms: float, ci_ms: tuple[float, float], calls_per_day: float, usd_per_hour: float) -> dict[str, Any]:
    """GPU time and money for `calls_per_day` calls of one workload, each taking `median_ms`.

    Every quantity is linear in the time per call, so the CI of the median maps straight onto it:
    gpu_hours_per_day = ms * calls / 3.6e6; gpus_fully_busy = that / 24; usd_per_day = hours * rate;
    usd_per_month = 30 days of it. Each is {"estimate", "lo", "hi"}. See ASSUMPTION.
    """
    lo_ms, hi_ms = (float(v) for v in ci_ms)
    values = {"median_ms": median_ms, "ci_ms lo": lo_ms, "ci_ms hi": hi_ms, "calls_per_day": calls_per_day,
              "usd_per_hour": usd_per_hour}
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if not 0 < lo_ms <= median_ms <= hi_ms:
        raise ValueError(f"need 0 < CI low <= median <= CI high (times), got ({lo_ms}, {hi_ms}) around {median_ms}")

    def per(ms: float) -> dict[str, float]:
        hours = ms * calls_per_day / MS_PER_HOUR
        return {"gpu_hours_per_day": hours, "gpus_fully_busy": hours / 24.0, "usd_per_day": hours * usd_per_hour,
                "usd_per_month": hours * usd_per_hour * DAYS_PER_MONTH}

    mid, lo, hi = per(median_ms), per(lo_ms), per(hi_ms)
    out: dict[str, Any] = {"median_ms": float(median_ms), "ci_ms": [lo_ms, hi_ms],
                           "calls_per_day": calls_per_day, "usd_per_hour": usd_per_hour}
    for q in _QUANTITIES:
        out[q] = _interval(mid[q], lo[q], hi[q])
    out["assumption"] = ASSUMPTION
    return out


def saving(a_cost: dict[str, Any], b_cost: dict[str, Any]) -> dict[str, Any]:
    """What choosing A instead of B saves: B - A for each quantity of `cost`, with worst-case bounds
    (lo = B.lo - A.hi, hi = B.hi - A.lo), and the fraction of B's cost saved (1 - A/B) with bounds."""
    for key in ("calls_per_day", "usd_per_hour"):
        if a_cost[key] != b_cost[key]:
            raise ValueError(f"the two costs use different {key}: {a_cost[key]} vs {b_cost[key]}")
    out: dict[str, Any] = {}
    for q in _QUANTITIES:
        a, b = a_cost[q], b_cost[q]
        out[q] = _interval(b["estimate"] - a["estimate"], b["lo"] - a["hi"], b["hi"] - a["lo"])
    a_ms, b_ms = a_cost["median_ms"], b_cost["median_ms"]
    (a_lo, a_hi), (b_lo, b_hi) = a_cost["ci_ms"], b_cost["ci_ms"]
    out["fraction"] = _interval(1.0 - a_ms / b_ms, 1.0 - a_hi / b_lo, 1.0 - a_lo / b_hi)
    out["note"] = SAVING_NOTE
    return out
