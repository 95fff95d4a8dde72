"""Issue 18's GPU check: a sweep through `--executor gpus` (dask-cuda workers, one per GPU) gives the same rows
as the same sweep in-process, and the same medians within noise.

Reads two stored runs (by name, the newest of each) and writes a table: per cell both statuses, both medians
with their 95% CIs, the ratio (executor / in-process) and whether it is within noise: the CIs overlap or the
ratio is within --tolerance (separate runs of a 3 ms, power-hungry kernel move by ~5% on an H100: README).

Usage: python benchmarks/executor_parity.py --db DB --a characterize-inproc --b characterize-gpus [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The command line, built without running anything (tests/test_gpu_check.py parses gpu_check.sh's flags)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--a", default="characterize-inproc", help="the in-process run's name")
    ap.add_argument("--b", default="characterize-gpus", help="the executor run's name")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--out", default=None)
    return ap


def main() -> None:
    args = build_parser().parse_args()

    from attnbench.analysis.stats import median, median_ci
    from attnbench.store import Store

    with Store(args.db) as store:
        runs = {r.name: r for r in store.runs()}  # the newest run of each name
        missing = [n for n in (args.a, args.b) if n not in runs]
        if missing:
            raise SystemExit(f"no run named {', '.join(missing)} in {args.db}")
        a, b = runs[args.a], runs[args.b]
        ma = {m.cell: m for m in store.measurements(a.run_id)}
        mb = {m.cell: m for m in store.measurements(b.run_id)}
        envs = sorted({m.env_id for m in mb.values()})
        workers = sorted({m.extra.get("worker", "") for m in mb.values()})
    rows, within, compared = [], 0, 0
    for cell in sorted(set(ma) | set(mb)):
        x, y = ma.get(cell), mb.get(cell)
        row = {"workload": (x or y).workload.label, "impl": (x or y).impl_label,
               "status_a": x.status if x else "missing", "status_b": y.status if y else "missing"}
        if x is not None and y is not None and x.ok and y.ok:
            med_a, med_b = median(x.samples_ms), median(y.samples_ms)
            ci_a, ci_b = median_ci(x.samples_ms), median_ci(y.samples_ms)
            ratio = med_b / med_a
            ok = (ci_a[0] <= ci_b[1] and ci_b[0] <= ci_a[1]) or abs(ratio - 1) <= args.tolerance
            row.update(median_a=med_a, median_b=med_b, ci_a=list(ci_a), ci_b=list(ci_b), ratio=ratio, within=ok)
            compared += 1
            within += ok
        rows.append(row)
    same_rows = set(ma) == set(mb) and all(r["status_a"] == r["status_b"] for r in rows)
    lines = [f"# executor parity: run {a.run_id} ({args.a}, {a.config.get('executor', 'inproc')}) vs run "
             f"{b.run_id} ({args.b}, {b.config.get('executor', '?')})", "",
             f"- rows: {len(ma)} in-process, {len(mb)} through the executor; same cells and statuses: {same_rows}",
             f"- environments of the executor's rows: {', '.join(envs)} (in-process: {a.env_id}); workers: "
             f"{', '.join(workers)}",
             f"- medians within noise (CIs overlap or within {args.tolerance:.0%}): {within}/{compared}", "",
             "| workload | impl | status inproc / gpus | median ms inproc [95% CI] | median ms gpus [95% CI] | ratio | "
             "within noise |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ratio" in r:
            cells = (f"{r['median_a']:.4g} [{r['ci_a'][0]:.4g}, {r['ci_a'][1]:.4g}]",
                     f"{r['median_b']:.4g} [{r['ci_b'][0]:.4g}, {r['ci_b'][1]:.4g}]", f"{r['ratio']:.3f}",
                     "yes" if r["within"] else "NO")
        else:
            cells = ("", "", "", "")
        lines.append(f"| {r['workload']} | {r['impl']} | {r['status_a']} / {r['status_b']} | " + " | ".join(cells)
                     + " |")
    verdict = "PASS" if same_rows and within == compared else "CHECK"
    lines += ["", f"verdict: {verdict} (same rows: {same_rows}; within noise {within}/{compared})"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "executor_parity.md").write_text(text + "\n")
        (out / "executor_parity.json").write_text(json.dumps(
            {"a": args.a, "b": args.b, "run_a": a.run_id, "run_b": b.run_id, "same_rows": same_rows,
             "within": within, "compared": compared, "environments": envs, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
