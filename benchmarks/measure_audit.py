"""How a stored run's measurements stopped: batch counts, stop reasons, level shifts and invalid samples.

Run after `attnbench run` on a GPU (scripts/gpu_check.sh shifts) or a CPU:

    python benchmarks/measure_audit.py --db results.db [--run ID]

Prints one line per ok row (median, samples, non-empty batches, stop reason, precision, timer, SHIFT if
flagged) and a summary. What to look for: every row has at least 10 non-empty batches unless its stop
reason is `interrupted` or --max-samples is under 10; SHIFT rows are few (on a steady GPU none or one of
the 70 characterize cells: a shift means the time changed within the measurement, e.g. the clock ramping
after an idle gap); no `error` row says 'invalid sample'.
"""

from __future__ import annotations

import argparse
import sys


def audit(store, run_id=None) -> tuple[list[str], dict[str, int]]:
    """The lines to print and the counts (ok, few_batches, shifted, invalid) of a stored run."""
    from attnbench.analysis.stats import median

    info = store.run(run_id)
    lines, counts = [], {"ok": 0, "few_batches": 0, "shifted": 0, "invalid": 0}
    for m in store.measurements(info.run_id):
        if not m.ok:
            if "invalid sample" in (m.reason or ""):
                counts["invalid"] += 1
                lines.append(f"{m.workload.label} {m.impl}: {m.status}: {m.reason}")
            continue
        counts["ok"] += 1
        batches = sum(1 for b in m.batch_sizes if b)
        few = batches < 10 and m.stop_reason != "interrupted"
        shift = m.extra.get("shift")
        counts["few_batches"] += few
        counts["shifted"] += bool(shift)
        prec = m.extra.get("precision")
        parts = [f"{m.workload.label} {m.impl}: {median(m.samples_ms):.5g} ms", f"n={len(m.samples_ms)}",
                 f"batches={batches}" + (" (FEW)" if few else ""), m.stop_reason]
        if prec is not None:
            parts.append(f"±{100 * prec:.2g}%")
        parts.append(f"timer={m.timer}")
        if shift:
            parts.append(f"SHIFT {100 * shift['change']:+.3g}% after batch {shift['after_batch']} of "
                         f"{shift['batches']} (p {shift['p']:.3g})")
        lines.append(" ".join(parts))
    return lines, counts


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--run", default=None, help="run id (default: the newest)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from attnbench.store import Store

    from attnbench.errors import UserError

    args = build_parser().parse_args(argv)
    try:
        with Store(args.db) as store:
            lines, c = audit(store, args.run)
    except UserError as exc:
        print(f"measure_audit: {exc}")
        return 2
    print("\n".join(lines))
    print(f"\n{c['ok']} ok rows; {c['few_batches']} with fewer than 10 batches; {c['shifted']} flagged SHIFT; "
          f"{c['invalid']} errors for invalid samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
