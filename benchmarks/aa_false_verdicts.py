"""Issue 13's proof: how often `attnbench compare` of an impl against itself (A/A) calls a row faster or slower.

Each repetition is the command a user runs, in a process of its own:
`attnbench compare --impl IMPL --impl IMPL --preset PRESET --format json` (interleaved, the CLI's
defaults: 50 samples in at least 10 rounds). A suite is a false alarm when any row's verdict is `faster`
or `slower`. The same stored samples are then judged again by the sample-level method compare used
before issue 13 (percentile bootstrap and Mann-Whitney U over single samples, Holm, stats.verdict_from),
to show the difference on identical data.

CPU:  python benchmarks/aa_false_verdicts.py --preset cpu-smoke --impl sdpa-math --reps 20
      target: at most 1 suite in 20 with a faster/slower verdict.
GPU:  python benchmarks/aa_false_verdicts.py --gpu --out DIR
      10 repetitions of sdpa-auto against itself on `characterize` (target 0 in 10), then sdpa-cudnn (A)
      against sdpa-flash (B) at B32 H8 S512 D64 fp16 (FIELD-NOTES: 0.052 vs 0.076 ms on an H100, 1.46x),
      which must stay `faster` with a CI that excludes 1.

With --out DIR it writes DIR/aa_false_verdicts.json (every repetition's rows, both methods) and
DIR/aa_false_verdicts.md (the printed summary).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGGED = ("faster", "slower")


POWER_SHAPE = ["-b", "32", "-H", "8", "-s", "512", "-d", "64", "--dtype", "fp16"]


def compare_argv(args: list[str], db: Path) -> list[str]:
    """The arguments of one `attnbench compare ... --format json`."""
    return ["compare", *args, "--format", "json", "-q", "--db", str(db)]


def settings(args: argparse.Namespace) -> tuple[str, str, int, list[str]]:
    """(impl, preset, repetitions, more compare options) of a run: the defaults depend on --gpu."""
    extra = list(args.compare_args) + (["--device", "cuda"] if args.gpu else [])
    return (args.impl or ("sdpa-auto" if args.gpu else "sdpa-math"),
            args.preset or ("characterize" if args.gpu else "cpu-smoke"), args.reps or (10 if args.gpu else 20), extra)


def attnbench_commands(args: argparse.Namespace) -> list[list[str]]:
    """The attnbench commands a run starts, with a placeholder store (tests parse them with the CLI's parser)."""
    impl, preset, _, extra = settings(args)
    cmds = [compare_argv(["--impl", impl, "--impl", impl, "--preset", preset, *extra], Path("aa.db"))]
    if args.gpu:
        cmds.append(compare_argv(["--impl", "sdpa-cudnn", "--impl", "sdpa-flash", *POWER_SHAPE], Path("power.db")))
    return cmds


def compare(args: list[str], db: Path, env: dict[str, str]) -> dict[str, Any]:
    """One `attnbench compare ... --format json` in its own process; its JSON."""
    cmd = [sys.executable, "-m", "attnbench", *compare_argv(args, db)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"aa_false_verdicts: {' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def old_verdicts(db: Path, run_id: int, threshold: float = 0.02, alpha: float = 0.05) -> list[dict[str, Any]]:
    """The stored A/A run judged by the pre-issue-13 sample-level method (rows in the run's order)."""
    from attnbench.analysis import stats
    from attnbench.store import Store

    with Store(db) as store:
        ms = [m for m in store.measurements(run_id) if m.ok]
    a = {m.workload.key: m for m in ms if not m.impl.endswith(" (B)")}
    b = {m.workload.key: m for m in ms if m.impl.endswith(" (B)")}
    keys = [k for k in a if k in b]
    tests = [stats.ratio_ci(a[k].samples_ms, b[k].samples_ms) for k in keys]
    p = stats.holm([stats.mann_whitney(a[k].samples_ms, b[k].samples_ms) for k in keys])
    return [{"key": k, "speedup": 1.0 / r, "speedup_ci": [1.0 / hi, 1.0 / lo],
             "verdict": stats.verdict_from(r, lo, hi, q, threshold=threshold, alpha=alpha)}
            for k, (r, lo, hi), q in zip(keys, tests, p)]


def aa(impl: str, preset: str, reps: int, extra: list[str], env: dict[str, str], tmp: Path) -> dict[str, Any]:
    runs = []
    for i in range(reps):
        db = tmp / f"aa-{i}.db"
        t0 = time.time()
        res = compare(["--impl", impl, "--impl", impl, "--preset", preset, *extra], db, env)
        rows = [{"key": r["key"], "speedup": r["speedup"], "speedup_ci": r["speedup_ci"], "rounds": r["rounds"],
                 "pairing": r["pairing"], "p_holm": r["p_holm"], "verdict": r["verdict"],
                 "verdict_label": r["verdict_label"]} for r in res["rows"]]
        old = old_verdicts(db, res["run_ids"][0], res["threshold"], res["alpha"])
        runs.append({"rep": i + 1, "seconds": round(time.time() - t0, 1), "rows": rows, "old": old,
                     "flagged": sum(r["verdict"] in FLAGGED for r in rows),
                     "old_flagged": sum(r["verdict"] in FLAGGED for r in old)})
        speedups = ", ".join(f"{r['speedup']:.3f}" for r in rows)
        print(f"rep {i + 1}/{reps}: {len(rows)} rows, faster/slower now {runs[-1]['flagged']}, by the sample-level "
              f"method {runs[-1]['old_flagged']}; speedups {speedups}", flush=True)
    return {"impl": impl, "preset": preset, "reps": reps, "runs": runs,
            "suites_flagged": sum(r["flagged"] > 0 for r in runs),
            "suites_flagged_old": sum(r["old_flagged"] > 0 for r in runs)}


def power(env: dict[str, str], tmp: Path) -> dict[str, Any]:
    res = compare(["--impl", "sdpa-cudnn", "--impl", "sdpa-flash", *POWER_SHAPE], tmp / "power.db", env)
    (row,) = res["rows"]
    ok = row["verdict"] == "faster" and row["speedup_ci"][0] > 1.0
    return {"row": row, "pass": ok}


def build_parser() -> argparse.ArgumentParser:
    """The command line, built without running anything (tests/test_gpu_check.py parses gpu_check.sh's flags)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="the GPU checks: sdpa-auto A/A on characterize, cudnn vs flash")
    ap.add_argument("--preset", default=None, help="sweep of the A/A suites (default: cpu-smoke; --gpu: characterize)")
    ap.add_argument("--impl", default=None, help="the impl compared with itself (default: sdpa-math; --gpu: sdpa-auto)")
    ap.add_argument("--reps", type=int, default=None, help="A/A repetitions (default 20, 10 on --gpu)")
    ap.add_argument("--out", default=None, help="folder for aa_false_verdicts.json and .md")
    ap.add_argument("compare_args", nargs="*", help="more `attnbench compare` options, after --")
    return ap


def main() -> None:
    args = build_parser().parse_args()
    if args.gpu:
        import torch

        if not torch.cuda.is_available():   # before a child process finds it out
            raise SystemExit("aa_false_verdicts: --gpu needs a CUDA GPU")
    impl, preset, reps, extra = settings(args)
    target = 0 if args.gpu else 1
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="aa-") as tmp:
        report: dict[str, Any] = {"aa": aa(impl, preset, reps, extra, env, Path(tmp))}
        if args.gpu:
            report["cudnn_vs_flash"] = power(env, Path(tmp))
    report["seconds"] = round(time.time() - t0, 1)
    a = report["aa"]
    lines = [f"# A/A false verdicts: {impl} against itself, {preset}, {reps} repetitions", "",
             "| method | suites with a faster/slower row | target |", "|---|---|---|",
             f"| by rounds (attnbench compare now) | {a['suites_flagged']}/{reps} | <= {target}/{reps} |",
             f"| by samples (before issue 13, same data) | {a['suites_flagged_old']}/{reps} | (for contrast) |"]
    ok = a["suites_flagged"] <= target
    if args.gpu:
        row = report["cudnn_vs_flash"]["row"]
        lines += ["", f"cudnn (A) vs flash (B), B32 H8 S512 D64 fp16: speedup {row['speedup']:.3f} "
                      f"[{row['speedup_ci'][0]:.3f}, {row['speedup_ci'][1]:.3f}], {row['rounds']} {row['pairing']}, "
                      f"Holm p {row['p_holm']:.2g}, verdict {row['verdict_label']} (must be faster, CI above 1)"]
        ok = ok and report["cudnn_vs_flash"]["pass"]
    lines += ["", f"verdict: {'PASS' if ok else 'FAIL'} ({report['seconds']:.0f} s)"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "aa_false_verdicts.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "aa_false_verdicts.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
