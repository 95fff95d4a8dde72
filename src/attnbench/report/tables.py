"""What it means: a stored run as Markdown, JSON and CSV tables, with the Methods section."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..analysis import metrics
from ..measure.timers import TIMER_TEXT
from ..store import Measurement, Store, measurement_to_dict
from .text import fmt_ms, md_cell


@dataclass
class Row:
    """A measurement with its derived summary."""

    m: Measurement
    median_ms: float | None = None
    ci: tuple[float, float] | None = None
    tflops: float | None = None
    gbps: float | None = None
    host_median_ms: float | None = None
    roofline: dict[str, Any] | None = None  # metrics.assess: % of peak, regime, plausibility
    batches: int = 0                        # non-empty batches the CI resampled (blocks, when not recorded)
    repeat_spread: float | None = None      # max/min - 1 of the repeats' medians (run --repeats)

    def to_dict(self) -> dict[str, Any]:
        d = measurement_to_dict(self.m)
        d["summary"] = {
            "median_ms": self.median_ms, "ci95_ms": list(self.ci) if self.ci else None,
            "tflops": self.tflops, "gbps": self.gbps, "host_median_ms": self.host_median_ms,
            "n": len(self.m.samples_ms), "batches": self.batches,
            "ci_method": CI_METHOD if self.m.batch_sizes else CI_METHOD_UNKNOWN,
            "repeats": len(self.m.extra.get("repeats") or ()) or 1, "repeat_spread": self.repeat_spread,
            "flops": metrics.flops(self.m.workload),
            "min_bytes": metrics.min_bytes(self.m.workload), "roofline": self.roofline,
        }
        return d


CI_METHOD = ("bootstrap over batches: each resample draws the measurement's batches with replacement, keeping "
             "each batch's samples together (expanded percentile, seeded)")
CI_METHOD_UNKNOWN = ("bootstrap over 10 contiguous blocks of the samples in time order (batch sizes were not "
                     "recorded: stored before schema 2)")


def summarize(m: Measurement, seed: int = 0, ceilings=None) -> Row:
    if not m.ok:
        return Row(m)
    from ..analysis.rounds import block_median_ci, split
    from ..analysis.stats import median
    from ..measure.repeats import spread

    med = median(m.samples_ms)
    ci = block_median_ci(m.samples_ms, m.batch_sizes or None, seed=seed)
    batches = sum(1 for b in split(m.samples_ms, m.batch_sizes or None) if b.size)
    host = median(m.host_ms) if m.host_ms and m.timer != "host" else None
    roof = metrics.assess(m.workload, med, host, ceilings) if ceilings is not None else None
    return Row(m, med, ci, metrics.tflops_per_s(m.workload, med), metrics.gb_per_s(m.workload, med), host, roof,
               batches, spread(m))


def run_ceilings(store: Store, env_id: str):
    """The environment's ceilings: measured ones cached by `attnbench env --ceilings`, else the datasheet."""
    from ..analysis import roofline

    fp = store.environment(env_id) or {}
    return roofline.ceilings_for(fp, store.get("ceilings", env_id))


def rows_for(store: Store, run_id: int) -> list[Row]:
    """Each measurement summarized against the ceilings of the environment it was measured in (a run on
    several workers may hold several)."""
    env_id = store.run(run_id).env_id
    ceilings = {env_id: run_ceilings(store, env_id)}
    out = []
    for m in store.measurements(run_id):
        eid = m.env_id or env_id
        if eid not in ceilings:
            ceilings[eid] = run_ceilings(store, eid)
        out.append(summarize(m, ceilings=ceilings[eid]))
    return out


def row_environments(store: Store, rows: list[Row]) -> dict[str, str]:
    """env id -> a short device name ('NVIDIA H200 · 3f2a1c'), when the rows come from more than one
    environment (a run on workers of different GPUs or software); {} when they are one."""
    ids = list(dict.fromkeys(r.m.env_id for r in rows if r.m.env_id))
    if len(ids) < 2:
        return {}
    out = {}
    for eid in ids:
        env = store.environment(eid) or {}
        out[eid] = f"{env.get('gpu_name') or 'CPU ' + str(env.get('cpu_model', '?'))} · {eid[:6]}"
    return out


def _env_line(env: dict[str, Any] | None) -> str:
    if not env:
        return "unknown environment"
    def versions(*keys: tuple[str, str]) -> list[str]:  # a version not recorded is left out, not 'None'
        return [f"{name} {env[k]}" for k, name in keys if env.get(k) not in (None, "")]

    if env.get("device_kind") == "cuda" or env.get("gpu_name"):
        parts = [str(env.get("gpu_name") or "GPU")] + versions(("torch", "torch"), ("cuda", "CUDA"),
                                                                ("cudnn", "cuDNN"), ("triton", "triton"))
    else:
        parts = [f"CPU ({env.get('cpu_model') or '?'})"] + versions(("torch", "torch"))
    return ", ".join(parts)


def ceilings_text(ceilings, dtypes: list[str]) -> str:
    """'bf16 793 TFLOP/s (measured); memory 3000 GB/s (measured)': each dtype's compute ceiling and the memory
    ceiling, with where each came from."""
    peaks = ", ".join(f"{d} {ceilings.peak(d):.4g} TFLOP/s ({ceilings.source(d)})" for d in dtypes if ceilings.peak(d))
    bw = f"{ceilings.gbps:.4g} GB/s ({ceilings.gbps_source})" if ceilings.gbps else "unknown"
    if ceilings.gbps and ceilings.gbps_source.startswith("measured") and ceilings.datasheet_gbps:
        bw += f", datasheet {ceilings.datasheet_gbps:.4g} GB/s"
    return f"{peaks or 'compute peak unknown'}; memory {bw}"


def methods(rows: list[Row], env: dict[str, Any] | None, run_config: dict[str, Any], ceilings=None,
            environments: dict[str, tuple[str, dict[str, Any] | None, Any]] | None = None) -> str:
    """The Methods section. `environments` (env id -> (device name, fingerprint, ceilings)), given when the rows
    come from more than one environment, replaces `env` and `ceilings` with one entry per environment."""
    timers = sorted({r.m.timer for r in rows if r.m.timer})
    ok = [r for r in rows if r.m.ok]
    ns = [len(r.m.samples_ms) for r in ok]
    stops = sorted({r.m.stop_reason for r in ok if r.m.stop_reason})
    lines = ["## Methods", ""]
    for t in timers:
        lines.append(f"- Timer `{t}`: {TIMER_TEXT.get(t, t)}.")
    if "auto" not in timers and any(r.m.extra.get("timer_choice") for r in ok):
        lines.append(f"- Timers chosen by `auto`: {TIMER_TEXT['auto']}.")
    if ns:
        count = str(min(ns)) if min(ns) == max(ns) else f"{min(ns)}–{max(ns)}"
        lines.append(f"- Samples per measurement: {count} (stop: {', '.join(stops) or 'n/a'}), "
                     "after a first call timed apart (compilation) and a warm-up by time; every raw sample "
                     "is kept in the store.")
    lines.append(f"- Median with a 95% confidence interval of the median by a {CI_METHOD}. It covers the "
                 "sampling noise and noise that moved whole batches during this measurement (a burst of "
                 "background work, a clock or power change). It does not cover what changes between "
                 "measurements: another build and inputs, another process, another day, another card of the "
                 "same model (clocks, memory placement, driver state) can move a median by more than this "
                 "interval; compare kernels measured together (`attnbench compare` interleaves them), and see "
                 "the spread across repeats (`--repeats`) for what re-measuring does.")
    unknown = sum(1 for r in ok if not r.m.batch_sizes)
    if unknown:
        lines.append(f"- {unknown} measurement(s) without recorded batch sizes: their interval is a "
                     f"{CI_METHOD_UNKNOWN}, which may understate between-batch noise.")
    reps = sorted({len(r.m.extra.get("repeats") or ()) for r in ok} - {0})
    if reps:
        lines.append(f"- Repeats: the sweep was measured {'/'.join(map(str, reps))} times, one pass over every cell "
                     "after another (later passes in a shuffled order), each with a fresh build and inputs; a "
                     "cell's samples pool its repeats, and the note gives the spread of the repeats' medians "
                     "(max/min - 1). Its stop reason is each repeat's (joined by / where they differ) and its ± the "
                     "half-width over the pooled batches, which exceeds the target when the repeats disagree. A "
                     "spread much wider than the interval says that the interval understates what re-measuring "
                     "does.")
    lines.append("- Note column: samples, batches and stop reason (converged: the median's 95% CI half-width, "
                 "from order statistics and widened by how much the batches disagree (the median's design effect "
                 "over batches), fell under the target; time-limit, sample-limit, fixed) with that half-width; the "
                 "IQR over the median; the share of samples beyond 3 IQR (kept, never dropped); on a GPU, the "
                 "median SM clock (NVML, read mid-batch); THROTTLED when a reading fell > 10% below the run's "
                 "typical clock (the median of the measurements' median clocks).")
    from ..measure.correctness import CRITERION

    lines.append(f"- Correctness: before timing, on fresh random inputs, {CRITERION}. Large shapes: the first and "
                 "the last batch element. NaN or Inf fails (on CUDA, so does an element never written). Incorrect "
                 "results get no timing; `rel err` is ||out - ref|| / ||ref||, for information.")
    lines.append(f"- {metrics.CONVENTION}")
    if environments:
        lines.append("- Environments (never pooled; each row names its own): " + "; ".join(
            f"{name} = {_env_line(fp)}" for name, fp, _ in environments.values()) + ".")
    else:
        lines.append(f"- Environment: {_env_line(env)}.")
    if any(r.m.peak_mem_mb is not None for r in ok):
        lines.append("- Peak memory: torch.cuda.max_memory_allocated over one call (inputs included), in MB.")
    known = ""
    if ceilings is not None or environments:
        if environments:
            known = "; ".join(f"{name}: {ceilings_text(c, sorted({r.m.workload.dtype for r in rows if r.m.env_id == e}))}"
                              for e, (name, _, c) in environments.items() if c is not None)
        else:
            known = ceilings_text(ceilings, sorted({r.m.workload.dtype for r in rows}))
        sets = [c for _, _, c in environments.values()] if environments else [ceilings]
        if not any(c is not None and (c.gbps or any(c.tflops.values())) for c in sets):
            lines.append(f"- Ceilings: {known}: no ceiling is known for this device, so no row gets a % of peak, a "
                         "regime or a plausibility check, and no roof is drawn. Measure them with "
                         "`attnbench env --ceilings`.")
            known = ""
    if known:
        lines.append(f"- Ceilings: {known}. `% peak` is TFLOP/s over "
                     "the compute ceiling, in brackets over the roofline bound at the workload's intensity; "
                     "the regime compares the arithmetic intensity with the ridge point "
                     "(host-bound: the host time per call exceeds the device time). A figure above 100% of "
                     "either ceiling is flagged IMPLAUSIBLE (warm cache, miscounted work or a timer error), "
                     "never celebrated; the measured memory ceiling is a copy, which reads and writes, so a "
                     "read-mostly kernel whose working set is over 4x the L2 (decode over a long cache) may "
                     "run above it and is flagged only above the datasheet bandwidth. Measure the ceilings with "
                     "`attnbench env --ceilings`. A row whose intensity is below the ridge point (decode) shows GB/s "
                     "over the memory ceiling above instead, marked `of BW`, host-bound or not: its figure of "
                     "merit is bandwidth. Above 100% of a measured copy ceiling such a row is marked `above copy` "
                     "with its % of the datasheet bandwidth beside it: not a win, a read-mostly kernel can pass a "
                     "copy, which also writes.")
    policy = run_config.get("policy")
    if policy:
        lines.append(f"- Policy: {json.dumps(policy, sort_keys=True)}.")
    return "\n".join(lines)


def pct_text(roof: dict[str, Any]) -> str:
    """The '% peak' cell: % of the compute ceiling (of the roofline bound); for a memory-bound row, whose
    figure of merit is bandwidth (decode), GB/s as % of the memory ceiling, marked 'of BW' (also when the
    row is host-bound: the kernel is still bounded by memory)."""
    if roof.get("bound_by", roof.get("regime")) == "memory-bound" and roof.get("pct_bandwidth") is not None:
        text = f"{fmt_pct(roof['pct_bandwidth'])}% of BW"
        if above_copy(roof):
            text += f" (above copy; {fmt_pct(roof['pct_datasheet_bandwidth'])}% of datasheet)"
        return text
    text = f"{fmt_pct(roof['pct_peak'])}%" if roof.get("pct_peak") is not None else ""
    if text and roof.get("pct_bound") is not None:
        text += f" ({fmt_pct(roof['pct_bound'])}%)"
    return text


def above_copy(roof: dict[str, Any]) -> bool:
    """A row above 100% of the measured copy ceiling that the plausibility check let pass (a read-mostly kernel
    whose working set is far above the L2, under the datasheet bandwidth): shown with a mark, never plainly."""
    return (roof.get("pct_bandwidth") is not None and roof["pct_bandwidth"] > 100
            and str(roof.get("bandwidth_source", "")).startswith("measured")
            and roof.get("pct_datasheet_bandwidth") is not None and roof.get("plausibility") != "implausible")


def fmt_pct(x: float) -> str:
    """A percentage with sense at both ends: '83', '4.5', '0.012' (never '0' for a small positive share)."""
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.2g}"


def timing_note(m: Measurement, typical_mhz: float | None) -> str:
    """Samples, batches, stop reason and precision, spread across repeats, IQR, the share beyond 3 IQR, SM
    clock, throttling."""
    from ..analysis.stats import iqr, median, outlier_fraction
    from ..measure.repeats import spread
    from ..measure.timing import throttled

    med = median(m.samples_ms)
    batches = sum(1 for b in m.batch_sizes if b) if m.batch_sizes else None
    parts = [f"n={len(m.samples_ms)}" + (f" in {batches} batches" if batches else "") + f" {m.stop_reason}".rstrip()]
    if m.extra.get("precision") is not None:
        parts[0] += f" ±{100 * m.extra['precision']:.2g}%"
    s = spread(m)
    if s is not None:
        size = f"{100 * s:.2g}%" if s < 1 else f"{1 + s:.3g}x"  # max/min: 4% apart, or 181x apart
        parts.append(f"spread across {len(m.extra['repeats'])} repeats {size}")
    parts.append(f"IQR {100 * iqr(m.samples_ms) / med:.2g}%")
    out = outlier_fraction(m.samples_ms)
    if out > 0:
        parts.append(f"{100 * out:.2g}% beyond 3 IQR")
    if m.clocks_mhz:
        parts.append(f"{median(m.clocks_mhz):.0f} MHz")
    shift = m.extra.get("shift")
    if shift:  # the time changed during the measurement: its median is of two levels
        parts.append(f"SHIFT {100 * shift['change']:+.3g}% after batch {shift['after_batch']} of {shift['batches']}"
                     + (f" in repeat {shift['repeat']}" if shift.get("repeat") else ""))
    dropped = m.extra.get("discarded_throttled") or {}
    if m.extra.get("throttled") or throttled(m.clocks_mhz, typical_mhz):
        parts.append("THROTTLED" + (f" ({len(dropped['indices'])} samples dropped)" if dropped.get("indices")
                                    else ""))
    return ", ".join(parts)


def typical_clock(rows: list[Row]) -> float | None:
    """The run's typical SM clock: the median of its measurements' median clocks."""
    from ..analysis.stats import median

    meds = [median(r.m.clocks_mhz) for r in rows if r.m.ok and r.m.clocks_mhz]
    return median(meds) if meds else None


def measured_env_id(info, rows: list[Row]) -> str:
    """The environment the rows were measured in when they share one, else the run's: a run whose every
    measurement came from one worker is described by that worker's device, not by the run's first guess."""
    ids = {r.m.env_id for r in rows if r.m.env_id}
    return ids.pop() if len(ids) == 1 else info.env_id


def markdown(store: Store, run_id: int | str | None = None) -> str:
    info = store.run(run_id)
    rows = rows_for(store, info.run_id)
    env_id = measured_env_id(info, rows)
    env = store.environment(env_id)
    title = f"# attnbench run {info.run_id}" + (f": {info.name}" if info.name else "")
    envs = row_environments(store, rows)
    per_env = {e: (name, store.environment(e), run_ceilings(store, e)) for e, name in envs.items()}
    device = (f"{len(envs)} environments ({'; '.join(_env_line(store.environment(e)) + f' [{e}]' for e in envs)}),"
              " never pooled: each row names its own" if envs else _env_line(env))
    out = [title, "", f"Device: {device}. Status: {info.status}. "
                      f"{len(rows)} measurement{'' if len(rows) == 1 else 's'} ({sum(r.m.ok for r in rows)} ok).", ""]
    out.append("| workload | impl | " + ("device | " if envs else "") + "status | median ms [95% CI] | TFLOP/s | "
               "GB/s | % peak (of bound) | regime | rel err | ran | note |")
    out.append("|---" * (12 if envs else 11) + "|")
    typical = typical_clock(rows)
    mixed = len({r.m.timer for r in rows if r.m.ok}) > 1
    for r in rows:
        m = r.m
        if m.ok:
            time_text = f"{fmt_ms(r.median_ms)} [{fmt_ms(r.ci[0])}, {fmt_ms(r.ci[1])}]"
            tf, gb = f"{r.tflops:.3g}", f"{r.gbps:.4g}"
            note = timing_note(m, typical)
            if r.host_median_ms is not None:
                note += f", host {fmt_ms(r.host_median_ms)} ms/call"
            if m.peak_mem_mb is not None:
                note += f", peak {m.peak_mem_mb:.0f} MB"
            choice = m.extra.get("timer_choice") or {}
            if choice:
                note += f", timer {m.timer} (auto" + (f", probe {1e3 * choice['probe_ms']:.3g} us" if
                                                       choice.get("probe_ms") is not None else "") + ")"
            elif mixed:  # rows of one table timed differently: each names its timer, not the Methods alone
                note += f", timer {m.timer}"
            roof = r.roofline or {}
            pct_cell = pct_text(roof)
            regime = roof.get("regime", "")
            if roof.get("plausibility") == "implausible":
                status_flag = "IMPLAUSIBLE: " + roof["plausibility_reason"]
                note = f"{status_flag}; {note}"
                pct_cell += " IMPLAUSIBLE"   # beside the figure itself, not only in the last column
        else:
            time_text, tf, gb, note, pct_cell, regime = "", "", "", m.reason, "", ""
        err = f"{m.rel_err:.1e}" if m.rel_err is not None else ""
        where = (envs.get(m.env_id, ""),) if envs else ()
        out.append("| " + " | ".join(md_cell(x) for x in (
            m.workload.label, m.impl_label, *where, m.status, time_text, tf, gb, pct_cell, regime, err, m.backend, note))
            + " |")
    out += ["", methods(rows, env, info.config, run_ceilings(store, env_id), environments=per_env or None), ""]
    return "\n".join(out)


CSV_COLUMNS = ("run_id", "workload_key", "workload", "batch", "q_heads", "kv_heads", "q_len", "kv_len",
               "head_dim", "dtype", "causal", "mask", "score_mod", "pass", "impl", "params", "status", "reason",
               "timer", "n", "median_ms", "ci95_lo_ms", "ci95_hi_ms", "tflops", "gbps", "rel_err", "backend",
               "stop_reason", "env_id", "device", "host_median_ms", "pct_peak", "pct_bandwidth", "regime", "flag",
               "flag_reason")


def csv_report(store: Store, run_id: int | str | None = None) -> str:
    """One row per measurement (CSV_COLUMNS; empty cells where a value does not apply), for
    spreadsheets and pandas. Times are ms: the median and its 95% CI; tflops in TFLOP/s, gbps in GB/s, pct_* in
    percent (of the compute ceiling, of the memory ceiling); params as canonical JSON; device names the row's
    GPU (or CPU); flag is 'implausible' (above a ceiling: never a win) or 'above copy' (a memory-bound row above
    the measured copy ceiling, under the datasheet), with flag_reason."""
    import csv
    import io

    from ..store import params_key

    info = store.run(run_id)
    buf = io.StringIO()
    out = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    out.writeheader()
    devices: dict[str, str] = {}
    for r in rows_for(store, info.run_id):
        m, w = r.m, r.m.workload
        eid = m.env_id or info.env_id
        if eid not in devices:
            env = store.environment(eid) or {}
            devices[eid] = env.get("gpu_name") or (f"CPU ({env.get('cpu_model') or '?'})" if env else "")
        roof = r.roofline or {}
        flag = ("implausible" if roof.get("plausibility") == "implausible" else
                "above copy" if above_copy(roof) else "")
        out.writerow({
            "run_id": info.run_id, "workload_key": w.key, "workload": w.label, "batch": w.batch,
            "q_heads": w.q_heads, "kv_heads": w.kv_heads, "q_len": w.q_len, "kv_len": w.kv_len,
            "head_dim": w.head_dim, "dtype": w.dtype, "causal": w.causal, "mask": w.mask,
            "score_mod": w.score_mod, "pass": w.direction, "impl": m.impl,
            "params": params_key(m.params), "status": m.status, "reason": m.reason, "timer": m.timer,
            "n": len(m.samples_ms), "median_ms": _g(r.median_ms), "ci95_lo_ms": _g(r.ci[0] if r.ci else None),
            "ci95_hi_ms": _g(r.ci[1] if r.ci else None), "tflops": _g(r.tflops), "gbps": _g(r.gbps),
            "rel_err": _g(m.rel_err), "backend": m.backend, "stop_reason": m.stop_reason,
            "env_id": eid, "device": devices[eid], "host_median_ms": _g(r.host_median_ms),
            "pct_peak": _g(roof.get("pct_peak")), "pct_bandwidth": _g(roof.get("pct_bandwidth")),
            "regime": roof.get("regime") or "", "flag": flag,
            "flag_reason": roof.get("plausibility_reason") or "" if flag == "implausible" else
            f"{fmt_pct(roof['pct_datasheet_bandwidth'])}% of the datasheet bandwidth" if flag else "",
        })
    return buf.getvalue()


def _g(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def json_report(store: Store, run_id: int | str | None = None) -> dict[str, Any]:
    info = store.run(run_id)
    data = store.export_run(info.run_id)
    rows = rows_for(store, info.run_id)
    data["measurements"] = [r.to_dict() for r in rows]
    data["environments"] = {e: store.environment(e) for e in dict.fromkeys(r.m.env_id for r in rows if r.m.env_id)}
    # the ceilings each row's pct_* and plausibility were taken against, per environment (null where unknown)
    data["ceilings"] = {e: run_ceilings(store, e).to_dict() for e in data["environments"]}
    data["methods"] = {"flop_convention": metrics.CONVENTION, "timers": TIMER_TEXT, "ci_method": CI_METHOD}
    return data
