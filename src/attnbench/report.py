"""What it means: Markdown and JSON reports of a stored run, with a Methods section."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import metrics
from .measurement import Measurement
from .store import Store, measurement_to_dict

TIMER_TEXT = {
    "cold": "device time by CUDA events around each call; L2 flushed (an L2-sized buffer rewritten) "
            "before every sample, outside the timed window; one synchronize per batch of samples",
    "warm": "device time by CUDA events around back-to-back calls; no cache flush (warm L2)",
    "graph": "device time of CUDA-graph replays of the call",
    "host": "host wall time of call + synchronize (what the caller waits for, including Python, "
            "dispatch and launch overhead)",
    "fake": "synthetic samples from a seeded fake timer (tests only)",
}


@dataclass
class Row:
    """A measurement with its derived summary."""

    m: Measurement
    median_ms: float | None = None
    ci: tuple[float, float] | None = None
    tflops: float | None = None
    gbps: float | None = None
    host_median_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = measurement_to_dict(self.m)
        d["summary"] = {
            "median_ms": self.median_ms, "ci95_ms": list(self.ci) if self.ci else None,
            "tflops": self.tflops, "gbps": self.gbps, "host_median_ms": self.host_median_ms,
            "n": len(self.m.samples_ms), "flops": metrics.flops(self.m.workload),
            "min_bytes": metrics.min_bytes(self.m.workload),
        }
        return d


def summarize(m: Measurement, seed: int = 0) -> Row:
    if not m.ok:
        return Row(m)
    from .stats import median, median_ci

    med = median(m.samples_ms)
    ci = median_ci(m.samples_ms, seed=seed)
    host = median(m.host_ms) if m.host_ms else None
    return Row(m, med, ci, metrics.tflops_per_s(m.workload, med), metrics.gb_per_s(m.workload, med), host)


def rows_for(store: Store, run_id: int) -> list[Row]:
    return [summarize(m) for m in store.measurements(run_id)]


def _fmt_ms(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.4g}" if x < 100 else f"{x:.1f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _env_line(env: dict[str, Any] | None) -> str:
    if not env:
        return "unknown environment"
    if env.get("device_kind") == "cuda" or env.get("gpu_name"):
        parts = [str(env.get("gpu_name", "GPU")), f"torch {env.get('torch')}", f"CUDA {env.get('cuda')}",
                 f"cuDNN {env.get('cudnn')}"]
        if env.get("triton"):
            parts.append(f"triton {env['triton']}")
    else:
        parts = [f"CPU ({env.get('cpu_model', '?')})", f"torch {env.get('torch')}"]
    return ", ".join(parts)


def methods(rows: list[Row], env: dict[str, Any] | None, run_config: dict[str, Any]) -> str:
    timers = sorted({r.m.timer for r in rows if r.m.timer})
    ok = [r for r in rows if r.m.ok]
    ns = [len(r.m.samples_ms) for r in ok]
    stops = sorted({r.m.stop_reason for r in ok if r.m.stop_reason})
    lines = ["## Methods", ""]
    for t in timers:
        lines.append(f"- Timer `{t}`: {TIMER_TEXT.get(t, t)}.")
    if ns:
        lines.append(f"- Samples per measurement: {min(ns)}–{max(ns)} (stop: {', '.join(stops) or 'n/a'}), "
                     "after a first call timed apart (compilation) and a warm-up by time; every raw sample "
                     "is kept in the store.")
    lines.append("- Median with a 95% bootstrap confidence interval (BCa, seeded) of the median.")
    lines.append("- Correctness: before timing, each impl's output on fresh random inputs is compared with "
                 "float64 attention by ||out - ref|| / ||ref|| (a sub-batch for large shapes), against a "
                 "dtype tolerance; NaN/Inf fail. Incorrect results get no timing.")
    lines.append(f"- {metrics.CONVENTION}")
    lines.append(f"- Environment: {_env_line(env)}.")
    policy = run_config.get("policy")
    if policy:
        lines.append(f"- Policy: {json.dumps(policy, sort_keys=True)}.")
    return "\n".join(lines)


def markdown(store: Store, run_id: int | str | None = None) -> str:
    info = store.run(run_id)
    env = store.environment(info.env_id)
    rows = rows_for(store, info.run_id)
    title = f"# attnbench run {info.run_id}" + (f": {info.name}" if info.name else "")
    out = [title, "", f"Device: {_env_line(env)}. Status: {info.status}. "
                      f"{len(rows)} measurements ({sum(r.m.ok for r in rows)} ok).", ""]
    out.append("| workload | impl | status | median ms [95% CI] | TFLOP/s | GB/s | rel err | ran | note |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r.m
        if m.ok:
            time_text = f"{_fmt_ms(r.median_ms)} [{_fmt_ms(r.ci[0])}, {_fmt_ms(r.ci[1])}]"
            tf, gb = f"{r.tflops:.3g}", f"{r.gbps:.4g}"
            note = f"n={len(m.samples_ms)}, {m.stop_reason}"
            if r.host_median_ms is not None and m.timer != "host":
                note += f", host {_fmt_ms(r.host_median_ms)} ms/call"
        else:
            time_text, tf, gb, note = "", "", "", m.reason
        err = f"{m.rel_err:.1e}" if m.rel_err is not None else ""
        out.append("| " + " | ".join(_cell(x) for x in (
            m.workload.label, m.impl_label, m.status, time_text, tf, gb, err, m.backend, note)) + " |")
    out += ["", methods(rows, env, info.config), ""]
    return "\n".join(out)


CSV_COLUMNS = ("run_id", "workload_key", "workload", "batch", "q_heads", "kv_heads", "q_len", "kv_len",
               "head_dim", "dtype", "causal", "pass", "impl", "params", "status", "reason", "timer", "n",
               "median_ms", "ci_lo", "ci_hi", "tflops", "gbps", "rel_err", "backend", "stop_reason")


def csv_report(store: Store, run_id: int | str | None = None) -> str:
    """One row per measurement (CSV_COLUMNS; empty cells where a value does not apply), for
    spreadsheets and pandas. Times are ms: the median and its 95% CI; params as canonical JSON."""
    import csv
    import io

    from .measurement import params_key

    info = store.run(run_id)
    buf = io.StringIO()
    out = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    out.writeheader()
    for r in rows_for(store, info.run_id):
        m, w = r.m, r.m.workload
        out.writerow({
            "run_id": info.run_id, "workload_key": w.key, "workload": w.label, "batch": w.batch,
            "q_heads": w.q_heads, "kv_heads": w.kv_heads, "q_len": w.q_len, "kv_len": w.kv_len,
            "head_dim": w.head_dim, "dtype": w.dtype, "causal": w.causal, "pass": w.direction, "impl": m.impl,
            "params": params_key(m.params), "status": m.status, "reason": m.reason, "timer": m.timer,
            "n": len(m.samples_ms), "median_ms": _g(r.median_ms), "ci_lo": _g(r.ci[0] if r.ci else None),
            "ci_hi": _g(r.ci[1] if r.ci else None), "tflops": _g(r.tflops), "gbps": _g(r.gbps),
            "rel_err": _g(m.rel_err), "backend": m.backend, "stop_reason": m.stop_reason,
        })
    return buf.getvalue()


def _g(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def json_report(store: Store, run_id: int | str | None = None) -> dict[str, Any]:
    info = store.run(run_id)
    data = store.export_run(info.run_id)
    data["measurements"] = [r.to_dict() for r in rows_for(store, info.run_id)]
    data["methods"] = {"flop_convention": metrics.CONVENTION, "timers": TIMER_TEXT}
    return data
