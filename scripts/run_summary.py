"""A stored run in a few lines, for scripts/gpu_check.sh: cells by status, every incorrect, error or oom row
with its reason, the reasons for unsupported rows, and the ok rows (GB/s as % of the memory ceiling for
memory-bound rows, which is decode's figure of merit).

Usage: python scripts/run_summary.py DB [RUN]   (RUN: a run id; default the newest)
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def summary(db: str, run_id: int | None = None) -> str:
    from attnbench.report.tables import pct_text, rows_for, run_ceilings
    from attnbench.store import Store

    with Store(db) as s:
        info = s.run(run_id)
        rows = rows_for(s, info.run_id)
        ceilings = run_ceilings(s, info.env_id)
    counts = Counter(r.m.status for r in rows)
    wall = f"; {info.finished - info.created:.0f} s" if info.finished else ""
    out = [f"### {info.name or 'run'} (run {info.run_id}): {len(rows)} cells: "
           + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + wall]
    bw = f"{ceilings.gbps:.0f} GB/s ({ceilings.gbps_source})" if ceilings.gbps else "unknown"
    out.append(f"Memory ceiling: {bw}.")
    for r in rows:
        if r.m.status in ("incorrect", "error", "oom"):
            out.append(f"- {r.m.status.upper()}: {r.m.workload.label} · {r.m.impl}: {r.m.reason}")
    why = Counter((r.m.impl, r.m.reason) for r in rows if r.m.status == "unsupported")
    for (impl, reason), n in sorted(why.items()):
        out.append(f"- unsupported ({n}x) {impl}: {reason[:200]}")
    ok = [r for r in rows if r.m.ok]
    if ok:
        out += ["", "| workload | impl | median us | TFLOP/s | GB/s | % peak or of BW | regime | timer |",
                "|---|---|---|---|---|---|---|---|"]
        for r in ok:
            roof = r.roofline or {}
            choice = r.m.extra.get("timer_choice") or {}
            timer = r.m.timer + (f" (auto, probe {1e3 * choice['probe_ms']:.3g} us)" if "probe_ms" in choice else "")
            if choice.get("fallback"):
                timer += f" [{choice['fallback'][:60]}]"
            flag = " IMPLAUSIBLE" if roof.get("plausibility") == "implausible" else ""
            out.append(f"| {r.m.workload.label} | {r.m.impl} | {1e3 * r.median_ms:.4g} | {r.tflops:.3g} | "
                       f"{r.gbps:.4g} | {pct_text(roof)}{flag} | {roof.get('regime', '')} | {timer} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(summary(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None))
