"""Comparison output: the convention in words, the Markdown table and the versioned JSON."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from ..analysis import metrics
from ..report.text import md_cell as _cell
from ..spec import Workload
from .comparison import BATCHES, BLOCKS, CONFIDENCE, MIN_ROUNDS, PAIRED, VERDICTS, Comparison

# Of to_json's output. History:
#   1: first version (CIs and Mann-Whitney U over single samples).
#   2: the round is the unit of evidence: rows gain `rounds`, `pairing` (rounds | batches | blocks) and
#      `verdict_label` ('inconclusive: 4 rounds'); `p_value` is the signed-rank test on per-round log ratios
#      (paired) or Mann-Whitney U on batch medians (unpaired); CIs, the per-side median CIs and the suite's
#      are bootstraps over rounds or batches; `suite.min_rounds` added.
FORMAT_VERSION = 2


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def convention(c: Comparison) -> str:
    """What the numbers mean, in words: the direction of the ratio, the unit of evidence, the CI, the test and
    the verdict rule."""
    t = f"{100 * c.threshold:g}%"
    if c.per_token:
        head = ("Throughput ratio = (query tokens/s of A) / (query tokens/s of B), tokens = batch x q_len per "
                f"call: above 1 means A ({c.a_name}) processes more tokens per second. ")
        test = "Tests and CIs are on time per token. "
    else:
        head = (f"Speedup = median time of B / median time of A: above 1 means A ({c.a_name}) is faster than "
                f"B ({c.b_name}). ")
        test = ""
    kinds = {r.pairing for r in c.rows}
    unit = ("The unit of evidence is the round (one batch of A and one of B, taken back to back in a shuffled "
            "order), not the sample: noise arrives in bursts that move whole batches. ")
    parts = []
    if PAIRED in kinds or not kinds:
        parts.append("rows marked `rounds` (A and B interleaved in one session) pair A and B by round: 95% CI by a "
                     "bootstrap over rounds (both sides' samples of each drawn round together, expanded "
                     "percentile, seeded); p: exact Wilcoxon signed-rank test on the per-round log ratios of "
                     "medians")
    if BATCHES in kinds:
        parts.append("rows marked `batches` (A and B measured apart, e.g. two stored runs) cannot be paired: each "
                     "side's batches are independent blocks, 95% CI by an independent bootstrap over each side's "
                     "batches, p: Mann-Whitney U on the two sides' batch medians; what moved between the two "
                     "measurements as a whole is not in the CI")
    if BLOCKS in kinds:
        parts.append("rows marked `blocks` had no recorded batch sizes: each side's samples are split into 10 "
                     "contiguous blocks and compared as `batches` rows are")
    return (head + unit + "; ".join(p[0].upper() + p[1:] for p in parts) + ". " + test
            + f"p is Holm-adjusted over the {_rows(len(c.rows))} compared here (raw p in parentheses). Cliff's "
            "delta = P(A faster) - P(A slower) over all pairs of samples (descriptive). Verdict for A: "
            f"faster / slower when the Holm p < {c.alpha:g}, the CI excludes 1 and the change exceeds {t}; "
            f"same when the whole CI lies within +-{t}; otherwise inconclusive; with fewer than {MIN_ROUNDS} "
            "rounds always inconclusive (shown as `inconclusive: N rounds`). The intervals cover noise within "
            "this comparison, not another process, day or card.")


def _num(x: float) -> str:
    return f"{x:.4g}"


def _per_s(tokens_per_s: float, w: Workload, ci_ms: tuple[float, float]) -> str:
    """Query tokens per second at the median, with the median's CI inverted."""
    tokens = w.batch * w.q_len
    return f"{_num(tokens_per_s)} [{_num(tokens / (ci_ms[1] * 1e-3))}, {_num(tokens / (ci_ms[0] * 1e-3))}]"


def _median(x: float, ci: tuple[float, float]) -> str:
    return f"{_num(x)} [{_num(ci[0])}, {_num(ci[1])}]"


def _ratio(x: float, ci: tuple[float, float]) -> str:
    """'1.003 [0.998, 1.008]', with more decimals (up to 6) where three would print a narrow interval's ends as the
    ratio itself ('1.003 [1.003, 1.003]' reads as no uncertainty at all)."""
    d = 3
    while d < 6 and ci[0] < ci[1] and (f"{ci[0]:.{d}f}" == f"{x:.{d}f}" or f"{ci[1]:.{d}f}" == f"{x:.{d}f}"):
        d += 1
    return f"{x:.{d}f} [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"


def _verdict(r) -> str:
    """The verdict as shown; a side flagged implausible (above a ceiling) is named in it, so no win or loss built
    on an impossible number reads as a plain verdict."""
    sides = [f.split(" ", 1)[0] for f in r.flags if f.startswith(("A implausible", "B implausible"))]
    text = r.verdict_label or r.verdict
    return text + (f" ({' and '.join(sides)} implausible: see flags)" if sides else "")


def _p(x: float) -> str:
    return f"{x:.2g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(x) for x in row) + " |" for row in rows]
    return out


def _usd(x: float) -> str:
    sign = "-" if x < 0 else ""
    x = abs(x)
    return f"{sign}${x:,.0f}" if x >= 100 else f"{sign}${x:.2f}" if x >= 1 else f"{sign}${x:.3g}"


def _iv(d: dict[str, float], fmt) -> str:
    return f"{fmt(d['estimate'])} [{fmt(d['lo'])}, {fmt(d['hi'])}]"


def to_markdown(c: Comparison) -> str:
    """Warnings first, then the convention, one row per workload, the suite line, verdict counts, rows not
    compared, unmatched cells and, when present, the cost section."""
    out = [f"# attnbench compare: A = {c.a_name} (candidate) vs B = {c.b_name} (baseline)", ""]
    for w in c.warnings:
        out.append(f"**Warning:** {w}")
    if c.warnings:
        out.append("")
    if c.per_token:
        what = "different workloads" if c.different_workloads else "same workloads"
        out += [f"**Normalized comparison (per token): {what}.** Throughput is compared, not time per call.", ""]
    out += [convention(c), ""]
    for n in c.notes:
        out.append(f"- {n}")
    if c.notes:
        out.append("")
    delta = "Cliff's delta (magnitude)"
    pcol = "Holm p (raw p)"
    if c.per_token:
        header = ["A workload", "B workload", "impl A", "impl B", "A tokens/s [95% CI]", "B tokens/s [95% CI]",
                  "A TFLOP/s",
                  "B TFLOP/s", "tokens/s ratio [95% CI]", "TFLOP/s ratio [95% CI]", delta, "evidence", pcol, "verdict",
                  "flags"]
        body = [[r.workload_a.label, r.workload_b.label, r.impl_a, r.impl_b,
                 _per_s(r.a_tokens_per_s, r.workload_a, r.a_ci_ms), _per_s(r.b_tokens_per_s, r.workload_b, r.b_ci_ms),
                 f"{r.a_tflops:.3g}", f"{r.b_tflops:.3g}", _ratio(r.speedup, r.speedup_ci),
                 _ratio(r.tflops_ratio, r.tflops_ratio_ci), f"{r.cliffs_delta:+.2f} ({r.magnitude})",
                 f"{r.rounds} {r.pairing}", f"{_p(r.p_holm)} ({_p(r.p_value)})", _verdict(r),
                 "; ".join(r.flags)] for r in c.rows]
    else:
        header = ["workload", f"A median ms [95% CI] ({c.a_name})", f"B median ms [95% CI] ({c.b_name})",
                  "speedup [95% CI]", delta, "evidence", pcol, "verdict", "flags"]
        body = [[r.label, _median(r.a_median_ms, r.a_ci_ms), _median(r.b_median_ms, r.b_ci_ms),
                 _ratio(r.speedup, r.speedup_ci),
                 f"{r.cliffs_delta:+.2f} ({r.magnitude})", f"{r.rounds} {r.pairing}",
                 f"{_p(r.p_holm)} ({_p(r.p_value)})", _verdict(r), "; ".join(r.flags)]
                for r in c.rows]
    if c.rows:
        out += _table(header, body) + [""]
        odd = sum(any(" implausible" in f for f in r.flags) for r in c.rows)
        if odd:
            out += [f"{_rows(odd)} with a side above a device ceiling (implausible: warm cache, miscounted work or a "
                    "timer error): their ratios are in the suite below but are no evidence of a speedup.", ""]
        what = "throughput ratio" if c.per_token else "speedup"
        out.append(f"Suite ({_rows(len(c.rows))}): geometric-mean {what} {_ratio(c.geomean_speedup, c.geomean_ci)} "
                   "(95% CI; bootstrap over each row's rounds, rows fixed; expanded for the fewest rounds).")
        out.append("Verdicts: " + ", ".join(f"{v} {c.counts.get(v, 0)}" for v in VERDICTS)
                   + f" (threshold {100 * c.threshold:g}%, alpha {c.alpha:g}, Holm over {len(c.rows)}).")
    else:
        out.append("No row could be compared (see below).")
    if c.excluded:
        out += ["", "Not compared (a side has no usable timing):", ""]
        out += _table(["workload", "impl A", "impl B", "A status", "B status", "reason"],
                      [[e.label, e.impl_a, e.impl_b, e.status_a, e.status_b,
                        e.reason + ("; " + "; ".join(e.flags) if e.flags else "")] for e in c.excluded])
    if c.unmatched:
        out += ["", "Unmatched (on one side only; never compared):", ""]
        out += [f"- {u.side} only: {u.label}" + (f" ({u.impl})" if u.impl not in u.label else "")
                + (f", status {u.status}" if u.status != "ok" else "") for u in c.unmatched]
    if c.cost:
        k = c.cost
        out += ["", "## Cost", "",
                f"{k['calls_per_day']:,.0f} calls/day of each workload at {_usd(k['usd_per_hour'])} per GPU-hour. "
                f"Assumption: {k['assumption']}. Intervals are 95%; {k['saving_note']}.", ""]
        hours = lambda x: f"{x:.3g}"  # noqa: E731
        out += _table(["workload", "A GPU-h/day", "A $/month", "B GPU-h/day", "B $/month", "saving $/month (B - A)",
                       "saving, % of B"],
                      [[r["label"], _iv(r["a"]["gpu_hours_per_day"], hours), _iv(r["a"]["usd_per_month"], _usd),
                        _iv(r["b"]["gpu_hours_per_day"], hours), _iv(r["b"]["usd_per_month"], _usd),
                        _iv(r["saving"]["usd_per_month"], _usd),
                        _iv(r["saving"]["fraction"], lambda x: f"{100 * x:.1f}%")] for r in k["rows"]])
    return "\n".join(out)


def _wl(w: Workload) -> dict[str, Any]:
    return {"key": w.key, "label": w.label, **w.to_dict()}


def to_json(c: Comparison) -> dict[str, Any]:
    """A JSON-able dict (format 'attnbench-compare', FORMAT_VERSION) of everything `to_markdown` shows."""
    rows = []
    for r in c.rows:
        d = dataclasses.asdict(r)
        d["workload_a"], d["workload_b"] = _wl(r.workload_a), _wl(r.workload_b)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        rows.append(d)
    return {
        "format": "attnbench-compare",
        "format_version": FORMAT_VERSION,
        "a": c.a_name,
        "b": c.b_name,
        "mode": c.mode,
        "normalized": ("per token: different workloads" if c.different_workloads else "per token")
        if c.per_token else None,
        "convention": convention(c),
        "flop_convention": metrics.CONVENTION,
        "threshold": c.threshold,
        "alpha": c.alpha,
        "confidence": CONFIDENCE,
        "warnings": list(c.warnings),
        "notes": list(c.notes),
        "run_ids": list(c.run_ids),
        "rows": rows,
        "suite": {"n": len(c.rows), "geomean_speedup": c.geomean_speedup,
                  "geomean_ci": list(c.geomean_ci) if c.geomean_ci else None, "counts": dict(c.counts),
                  "min_rounds": MIN_ROUNDS},
        "excluded": [dict(dataclasses.asdict(e), flags=list(e.flags)) for e in c.excluded],
        "unmatched": [dataclasses.asdict(u) for u in c.unmatched],
        "cost": c.cost,
    }
