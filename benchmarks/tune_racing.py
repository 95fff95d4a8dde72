"""Racing vs exhaustive tuning on the GPU (issue 6): does racing pick a candidate within 2% of the
exhaustive winner, for at most 30% of the exhaustive search's GPU time?

Usage: python benchmarks/tune_racing.py --out DIR [--quick | --all-shapes] [--budget 60s]

Over the characterize and llm-prefill presets (--quick: 3 + 2 of their shapes and 2 flex configs,
about a minute on an H100; --all-shapes: all 10 + 5 shapes with those 2 flex configs, a few minutes;
neither: all shapes and flex's whole declared space, 25-40 minutes, mostly compilation), both searches
run on the same candidates: racing first (so it pays for cold compilation), then exhaustive (100
samples each). Per workload:
  - within 2%: the exhaustive median of racing's pick / the fastest exhaustive median <= 1.02;
  - GPU time: racing's measure_ms / exhaustive's (timer-clock time of warm-up and sampling, the time
    the GPU was held for measuring; compilation and correctness checks, the same work in both, are
    left out and reported as wall time beside it). Target: <= 0.30 over the suite.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

QUICK_FLEX = [{}, {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}]


def workloads(quick: bool):
    from attnbench.spec import load_preset

    char = list(load_preset("characterize").workloads)
    llm = list(load_preset("llm-prefill").workloads)
    if quick:
        char = [w for w in char if w.batch == 32 and w.q_heads == 8 and w.q_len in (128, 512, 2048)]
        llm = [w for w in llm if w.q_len in (1024, 4096)]
    return [("characterize", w) for w in char] + [("llm-prefill", w) for w in llm]


def build_parser() -> argparse.ArgumentParser:
    """The command line, built without running anything (tests/test_gpu_check.py parses gpu_check.sh's flags)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="folder for tune_racing.json")
    ap.add_argument("--quick", action="store_true", help="a subset of shapes and 2 flex configs (about 1 min on H100)")
    ap.add_argument("--all-shapes", action="store_true", help="every shape of both presets, 2 flex configs")
    ap.add_argument("--budget", default="60s", help="racing budget per workload")
    return ap


def main() -> None:
    args = build_parser().parse_args()

    import torch

    from attnbench.store import Store
    from attnbench.tune.tuner import TuneConfig, parse_duration, tune

    if not torch.cuda.is_available():
        raise SystemExit("tune_racing: needs a CUDA GPU")
    t_start = time.perf_counter()
    named = workloads(args.quick)
    ws = [w for _, w in named]
    params = {"flex": QUICK_FLEX} if args.quick or args.all_shapes else {}
    results = {}
    with Store(":memory:") as store:
        for mode in ("racing", "exhaustive"):
            cfg = TuneConfig(workloads=ws, device="cuda", params=params, budget_s=parse_duration(args.budget),
                             exhaustive=mode == "exhaustive", force=True)
            t0 = time.perf_counter()
            results[mode] = tune(cfg, store, progress=lambda line, m=mode: print(f"[{m}] {line}", flush=True))
            print(f"{mode}: {time.perf_counter() - t0:.0f} s", flush=True)
    gpu = torch.cuda.get_device_name()
    mode_name = ("quick: 5 shapes, 2 flex configs" if args.quick else
                 "all shapes, 2 flex configs" if args.all_shapes else "all shapes, flex's whole space")
    rows = []
    for (preset, w), ra, ex in zip(named, results["racing"].workloads, results["exhaustive"].workloads):
        ex_med = {c.label: c.median_ms for c in ex.candidates if c.timed}
        best_label = min(ex_med, key=ex_med.get) if ex_med else None
        pick_ex = ex_med.get(ra.chosen)
        ratio = pick_ex / ex_med[best_label] if pick_ex and best_label else None
        rows.append({
            "preset": preset, "workload": w.label, "workload_key": w.key,
            "racing_pick": ra.chosen, "exhaustive_pick": ex.chosen, "exhaustive_fastest": best_label,
            "pick_vs_fastest": ratio, "within_2pct": ratio is not None and ratio <= 1.02,
            "racing_stop": ra.stop_reason, "racing_rounds": ra.rounds,
            "racing_cost": ra.cost, "exhaustive_cost": ex.cost,
            "gpu_fraction": ra.cost["measure_ms"] / ex.cost["measure_ms"] if ex.cost.get("measure_ms") else None,
            "sample_fraction": ra.cost["sample_ms"] / ex.cost["sample_ms"] if ex.cost.get("sample_ms") else None,
            "wall_fraction": ra.cost["wall_s"] / ex.cost["wall_s"] if ex.cost.get("wall_s") else None,
            "candidates": {c.label: {"status": c.status, "median_ms": c.median_ms, "n": len(c.samples_ms),
                                     "dropped_round": c.dropped_round, "backend": c.backend, "reason": c.reason}
                           for c in ra.candidates},
            "backends": {c.label: c.backend for c in ex.candidates if c.timed},
            "exhaustive_medians": ex_med,
        })
    sums = {m: {k: sum(r[f"{m}_cost"].get(k, 0.0) for r in rows) for k in ("measure_ms", "sample_ms", "wall_s")}
            for m in ("racing", "exhaustive")}
    suite_fraction = sums["racing"]["measure_ms"] / sums["exhaustive"]["measure_ms"]
    all_within = all(r["within_2pct"] for r in rows)
    lines = [f"racing vs exhaustive tuning on {gpu} ({mode_name}; racing budget {args.budget})",
             "", "| workload | racing pick (ran) | exhaustive fastest (ran) | pick / fastest | within 2% | GPU time fraction | "
             "racing stop |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['pick_vs_fastest']:.4f}" if r["pick_vs_fastest"] else "n/a"
        frac = f"{r['gpu_fraction']:.2f}" if r["gpu_fraction"] is not None else "n/a"
        ran = r["backends"]
        lines.append(f"| {r['workload']} | {r['racing_pick']} ({ran.get(r['racing_pick'], '?')}) | "
                     f"{r['exhaustive_fastest']} ({ran.get(r['exhaustive_fastest'], '?')}) | {ratio} | "
                     f"{'yes' if r['within_2pct'] else 'NO'} | {frac} | {r['racing_stop']} ({r['racing_rounds']} rounds) |")
    lines += ["", f"suite GPU time (warm-up + sampling): racing {sums['racing']['measure_ms'] / 1e3:.1f} s, "
                  f"exhaustive {sums['exhaustive']['measure_ms'] / 1e3:.1f} s: fraction {suite_fraction:.2f} "
                  f"(target <= 0.30: {'met' if suite_fraction <= 0.30 else 'NOT met'})",
              f"summed sample time fraction: {sums['racing']['sample_ms'] / max(sums['exhaustive']['sample_ms'], 1e-9):.2f}; "
              f"wall (incl. compile and correctness): racing {sums['racing']['wall_s']:.0f} s, exhaustive "
              f"{sums['exhaustive']['wall_s']:.0f} s",
              f"racing pick within 2% of the exhaustive fastest on every workload: {'yes' if all_within else 'NO'}",
              f"total time: {time.perf_counter() - t_start:.0f} s"]
    print("\n".join(lines), flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        data = {"gpu": gpu, "quick": args.quick, "all_shapes": args.all_shapes, "budget": args.budget,
                "env_id": results["racing"].env_id,
                "suite_gpu_fraction": suite_fraction, "all_within_2pct": all_within, "sums": sums, "rows": rows}
        (Path(args.out) / "tune_racing.json").write_text(json.dumps(data, indent=1, default=str))


if __name__ == "__main__":
    main()
