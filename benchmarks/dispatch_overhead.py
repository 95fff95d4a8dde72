"""attnbench.attention with a dispatch table vs calling SDPA directly (GPU, issue 6): host overhead per
call, and whether the dispatched call is ever slower than sdpa-auto beyond noise.

Usage: python benchmarks/dispatch_overhead.py --out DIR [--table dispatch.json]

Without --table, a table is tuned first (racing, 10 s per shape, SDPA backends and the reference
only, so no compilation: under a minute) for a tiny shape, three characterize shapes and two
llm-prefill shapes. Then per shape:
  - host us/call: perf_counter over back-to-back calls, one synchronize per loop, for
    F.scaled_dot_product_attention and for attention(q, k, v, table=...), 7 alternating loops each
    (2000 calls in all); the overhead is the median of the paired differences. The two tiny shapes
    (B1 H1 S16, D64 in the table and D128 not) are host-bound, so their difference is the
    dispatcher's own cost per call, on the winner's path and on the fallback path;
  - device ms by CUDA events (cold L2), 100 samples each, in interleaved batches of 10: attention
    vs sdpa-auto, compared with attnbench.compare.comparison as one interleaved session (batch k of each is
    round k: ratio of medians with a bootstrap CI over rounds, signed-rank test on the per-round ratios,
    verdict at a 2% threshold); "slower" on a tuned shape fails the check (the untuned shape's
    verdict is reported beside it: there the call is SDPA plus the dispatcher's host work).
Finishes in under 2 minutes on an H100.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

N_HOST = 2000
BATCHES, PER_BATCH = 10, 10


def shapes():
    """The tuned shapes; the first is tiny (host-bound)."""
    from attnbench.spec import Workload

    return [
        Workload(1, 1, 1, 16, 16, 64, "fp16"),
        Workload(32, 8, 8, 128, 128, 64, "fp16"),
        Workload(32, 8, 8, 512, 512, 64, "fp16"),
        Workload(32, 8, 8, 2048, 2048, 64, "fp16"),
        Workload(16, 32, 8, 1024, 1024, 128, "bf16", causal=True),
        Workload(4, 32, 8, 4096, 4096, 128, "bf16", causal=True),
    ]


def host_us(fn, n: int) -> float:
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def host_pair(direct, dispatched, reps: int = 7) -> tuple[float, float, float]:
    """Median us/call of each, and the median of the paired differences, over reps alternating loops
    of N_HOST // reps calls (alternating, so a change in host load hits both)."""
    import statistics

    for _ in range(50):
        direct(), dispatched()
    a, b = [], []
    for _ in range(reps):
        a.append(host_us(direct, N_HOST // reps))
        b.append(host_us(dispatched, N_HOST // reps))
    return statistics.median(a), statistics.median(b), statistics.median(y - x for x, y in zip(a, b))


def compare_samples(w, a: list[float], b: list[float]) -> dict:
    """attention (a) vs sdpa-auto (b), timed in BATCHES interleaved batches of PER_BATCH: paired by round
    (without the batches, comparison would take the samples as independent, and bursts that move a whole
    batch would read as significance); attnbench.compare.comparison where present, else stats directly."""
    try:
        from attnbench.compare.comparison import compare_measurements
        from attnbench.store import Measurement

        rounds = {"batch_sizes": (PER_BATCH,) * BATCHES,
                  "extra": {"timing": {"interleaved": {"session": "dispatch_overhead"}}}}
        ma = Measurement(workload=w, impl="attention(table)", status="ok", timer="cold", samples_ms=tuple(a), **rounds)
        mb = Measurement(workload=w, impl="sdpa-auto", status="ok", timer="cold", samples_ms=tuple(b), **rounds)
        row = compare_measurements([ma], [mb], a_name="attention(table)", b_name="sdpa-auto").rows[0]
        return {"ratio": row.time_ratio, "ci": list(row.time_ratio_ci), "p": row.p_value, "verdict": row.verdict,
                "pairing": row.pairing, "via": "attnbench.compare.comparison"}
    except ImportError:
        from attnbench.analysis import stats

        r, lo, hi = stats.ratio_ci(a, b)
        p = stats.mann_whitney(a, b)
        return {"ratio": r, "ci": [lo, hi], "p": p, "verdict": stats.verdict_from(r, lo, hi, p), "via": "stats"}


def build_parser() -> argparse.ArgumentParser:
    """The command line, built without running anything (tests/test_gpu_check.py parses gpu_check.sh's flags)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="folder for dispatch_overhead.json")
    ap.add_argument("--table", default=None, help="a dispatch table (default: tune one now)")
    return ap


def main() -> None:
    args = build_parser().parse_args()

    import torch
    import torch.nn.functional as F

    import attnbench
    from attnbench.tune import dispatch
    from attnbench.impls import make_inputs
    from attnbench.store import Store
    from attnbench.measure.timing import CudaEventTimer
    from attnbench.tune.tuner import TuneConfig, tune
    from attnbench.tune.report import dispatch_table

    if not torch.cuda.is_available():
        raise SystemExit("dispatch_overhead: needs a CUDA GPU")
    t_start = time.perf_counter()
    ws = shapes()
    table_path = args.table
    if table_path is None:
        table_path = str(Path(tempfile.mkdtemp()) / "dispatch.json")
        cfg = TuneConfig(workloads=ws, device="cuda", budget_s=10.0,
                         impls=["sdpa-auto", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "reference"])
        with Store(":memory:") as store:
            result = tune(cfg, store, progress=lambda line: print(f"[tune] {line}", flush=True))
        dispatch_table(result).save(table_path)
    table = dispatch.load_table(table_path)
    from attnbench.spec import Workload

    untuned = Workload(1, 1, 1, 16, 16, 128, "fp16")  # tiny and not in the table: the fallback path's cost
    ws = [ws[0], untuned] + ws[1:]
    timer = CudaEventTimer("cuda", cold=True)
    rows = []
    for w in ws:
        x = make_inputs(w, "cuda", 0)
        q, k, v = x.q, x.k, x.v
        kw = {"is_causal": w.causal, "enable_gqa": w.gqa}

        def direct():
            return F.scaled_dot_product_attention(q, k, v, **kw)

        def dispatched():
            return attnbench.attention(q, k, v, table=table, **kw)

        torch.testing.assert_close(dispatched(), direct(), rtol=2e-2, atol=2e-2)
        what = dispatch.explain(q, k, v, table=table, **kw)
        h_direct, h_disp, h_over = host_pair(direct, dispatched)
        a, b = [], []
        for _ in range(BATCHES):  # interleaved, so drift hits both sides alike
            a += [s.device_ms for s in timer.run(dispatched, PER_BATCH)]
            b += [s.device_ms for s in timer.run(direct, PER_BATCH)]
        cmp = compare_samples(w, a, b)
        rows.append({"workload": w.label, "dispatched_to": what, "host_us_sdpa": h_direct,
                     "host_us_attention": h_disp, "host_overhead_us": h_over,
                     "device_ms_sdpa": float(sorted(b)[len(b) // 2]), "device_ms_attention": float(sorted(a)[len(a) // 2]),
                     "samples_attention": a, "samples_sdpa": b, **cmp})
        x = q = k = v = None  # free the inputs before the next shape (rebound, not del: ruff reads del as F821 here)
        torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name()
    lines = [f"attnbench.attention(table) vs F.scaled_dot_product_attention on {gpu}", "",
             "| workload | dispatched to | host us/call sdpa | host us/call attention | overhead us | "
             "device ms sdpa | device ms attention | ratio [95% CI] | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['dispatched_to']} | {r['host_us_sdpa']:.1f} | {r['host_us_attention']:.1f} | "
                     f"{r['host_overhead_us']:+.1f} | {r['device_ms_sdpa']:.4f} | {r['device_ms_attention']:.4f} | "
                     f"{r['ratio']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {r['verdict']} |")
    tuned = [r for r in rows if not r["dispatched_to"].startswith("sdpa fallback: no entry")]
    slower = [r["workload"] for r in tuned if r["verdict"] == "slower"]
    fallback = [r for r in rows if r not in tuned]
    lines += [""] + [f"host overhead per call (host-bound tiny shape, {r['dispatched_to']}): "
                     f"{r['host_overhead_us']:+.1f} us ({r['host_us_attention']:.1f} vs {r['host_us_sdpa']:.1f} us/call)"
                     for r in rows[:2]]
    lines += ["(larger shapes are device-bound: their host us/call is the kernel time, not the overhead)",
              f"tuned shapes never slower than sdpa-auto beyond noise: "
              f"{'yes' if not slower else 'NO: ' + ', '.join(slower)} (compared via {rows[0]['via']})",
              *(f"untuned shape (SDPA fallback path) {r['workload']}: {r['verdict']}, ratio {r['ratio']:.3f}"
                for r in fallback),
              f"total time: {time.perf_counter() - t_start:.0f} s"]
    print("\n".join(lines), flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "dispatch_overhead.json").write_text(json.dumps(
            {"gpu": gpu, "table": table_path, "env_id": table.env_id, "tuned_never_slower": not slower, "rows": rows},
            indent=1, default=str))


if __name__ == "__main__":
    main()
