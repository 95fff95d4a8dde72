"""What a tune result becomes: the Markdown and JSON reports, and the dispatch table for `attention`."""

from __future__ import annotations

import datetime
from typing import Any

from ..report.text import fmt_ms as _ms
from ..report.text import md_cell as _cell
from ..spec import Workload
from .model import (TuneResult, _env_summary, _label)

# ---------------------------------------------------------------------------------------------
# The dispatch table
# ---------------------------------------------------------------------------------------------

def dispatch_table(result: TuneResult):
    """The chosen candidate per bucket. Two workloads in one bucket: the first keeps it, and the
    conflict is noted when their winners differ."""
    from .dispatch import DispatchTable, Entry, workload_bucket

    entries: dict[str, Entry] = {}
    notes = []
    for r in result.workloads:
        win = r.winner
        if win is None:
            continue
        bucket = workload_bucket(r.workload)
        if bucket in entries:
            other = entries[bucket]
            if (other.impl, other.params) != (win.impl, win.params):
                notes.append(f"bucket {bucket}: {r.workload.label} chose {win.label}, but the entry keeps "
                             f"{_label(other.impl, other.params)} from {Workload.from_dict(other.workload).label}")
            continue
        base = r.get(result.baseline)
        ru = r.runner_up

        def brief(c):
            return None if c is None else {"impl": c.impl, "params": c.params, "median_ms": c.median_ms,
                                           "ci_ms": list(c.ci_ms) if c.ci_ms else None}

        entries[bucket] = Entry(bucket=bucket, impl=win.impl, params=win.params, workload=r.workload.to_dict(),
                                data={"winner": brief(win), "runner_up": brief(ru),
                                      "baseline": brief(base) if base is not None and base.timed else None,
                                      "speedup": r.speedup, "workload_key": r.workload.key,
                                      "search": {"mode": r.mode, "stop_reason": r.stop_reason}})
    env = _env_summary(result.fingerprint, result.env_id)
    created = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    return DispatchTable(environment=env, entries=entries, baseline=result.baseline, created=created, notes=notes)


def update_table(new, old) -> tuple[Any, str]:
    """The table to write over `old` (the file's table, or None) and what was done, in words. Of one
    environment and baseline, the two merge: the buckets tuned now replace theirs, the others are kept (so
    tuning more shapes into one file adds to it). Otherwise `new` replaces `old`, and the words say why."""
    from .dispatch import DispatchTable

    if old is None:
        return new, f"{len(new.entries)} entries"
    if old.env_id != new.env_id:
        return new, (f"replaced its {len(old.entries)} buckets: they were tuned in environment {old.env_id or '?'}, "
                     f"these in {new.env_id}")
    if old.baseline != new.baseline:
        return new, f"replaced its {len(old.entries)} buckets: they were tuned against {old.baseline!r}, these " \
                    f"against {new.baseline!r}"
    kept = {b: e for b, e in old.entries.items() if b not in new.entries}
    notes = list(new.notes) + [n for n in old.notes if not any(f"bucket {b}:" in n for b in new.entries)]
    merged = DispatchTable(environment=new.environment, entries={**kept, **new.entries}, baseline=new.baseline,
                           created=new.created, notes=notes)
    replaced = len(new.entries) - (len(merged.entries) - len(old.entries))
    return merged, f"{len(new.entries)} entries tuned now, {replaced} of them replacing older ones; {len(kept)} kept"


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------

def _speedup_text(s: dict[str, Any] | None, chosen: str | None = None) -> str:
    """The speedup with its CI and what the CI says: 'faster' only when its lower bound is above 1."""
    if not s:
        return "n/a"
    if chosen == s["baseline"]:
        return f"none: {s['baseline']} itself was chosen"
    if s["lo"] > 1:
        verdict = "faster"
    elif s["hi"] < 1:
        verdict = "slower"
    else:
        verdict = "not significantly faster (the CI includes 1)"
    return f"{s['value']:.3g}x [{s['lo']:.3g}, {s['hi']:.3g}] vs {s['baseline']}: {verdict}"


def markdown(result: TuneResult) -> str:
    env = result.to_dict()["environment"]
    where = env.get("gpu_name") or f"CPU ({env.get('cpu_model', '?')})"
    out = [f"# attnbench tune ({result.mode})", "",
           f"Environment {result.env_id}: {where}, torch {env.get('torch')}"
           + (f", cuDNN {env['cudnn']}" if env.get("cudnn") else "") + (f", triton {env['triton']}" if env.get("triton") else "")
           + f". Timer `{result.timer}`.", ""]
    versus = f"speedup vs {result.baseline}" if result.baseline else "speedup (no --baseline)"
    out += [f"| workload | chosen | median ms [95% CI] | {versus} | runner-up | search |",
            "|---|---|---|---|---|---|"]
    for r in result.workloads:
        win, ru = r.winner, r.runner_up
        med = f"{_ms(win.median_ms)} [{_ms(win.ci_ms[0])}, {_ms(win.ci_ms[1])}]" if win else ""
        search = "cached" if r.cached else f"{r.stop_reason}, {int(r.cost.get('samples', 0))} samples"
        out.append("| " + " | ".join(_cell(x) for x in (
            r.workload.label, win.label if win else "none correct", med,
            _speedup_text(r.speedup, r.chosen) if win else "", f"{ru.label} {_ms(ru.median_ms)} ms" if ru else "", search)) + " |")
    for r in result.workloads:
        out += ["", f"## {r.workload.label}", ""]
        cost = r.cost
        out.append(f"{r.mode}: stopped ({r.stop_reason}) after {r.rounds} round(s); {int(cost.get('samples', 0))} "
                   f"samples, {cost.get('measure_ms', 0):.0f} ms measuring, {cost.get('wall_s', 0):.1f} s wall"
                   + (" (from the cache)" if r.cached else "") + ".")
        out += ["", "| rank | candidate | median ms [95% CI] | n | ran | status |", "|---|---|---|---|---|---|"]
        rank = 0
        for c in r.candidates:
            if not c.timed:
                continue
            rank += 1
            state = "**chosen**" if c.label == r.chosen else (c.note or "not chosen")
            out.append("| " + " | ".join(_cell(x) for x in (
                rank, c.label, f"{_ms(c.median_ms)} [{_ms(c.ci_ms[0])}, {_ms(c.ci_ms[1])}]", len(c.samples_ms),
                c.backend if c.backend != c.impl else "", state)) + " |")
        rejected = [c for c in r.candidates if not c.timed]
        if rejected:
            out += ["", "| rejected | status | reason |", "|---|---|---|"]
            out += ["| " + " | ".join(_cell(x) for x in (c.label, c.status, c.reason)) + " |" for c in rejected]
        for n in r.notes:
            out.append(f"\nNote: {n}")
    rp = result.settings.get("racing", {})
    out += ["", "## Methods", "",
            "- Every candidate passes a correctness check against float64 attention before it is timed; "
            "rejected candidates (unsupported, incorrect, oom, error, implausible) are never chosen.",
            f"- Medians with 95% bootstrap CIs; speedup = median({result.baseline}) / median(chosen) with a "
            "percentile-bootstrap CI.",
            "- Racing drops a candidate when the lower bound of its median's "
            f"{rp.get('confidence', 0.99):.0%} order-statistic CI lies more than {rp.get('margin', 0.01):.0%} "
            "above the leader's upper bound; ties within "
            f"{rp.get('equivalence', 0.01):.0%} go to {result.baseline}."]
    return "\n".join(out)


def json_report(result: TuneResult) -> dict[str, Any]:
    return result.to_dict()
