"""attnbench's stored medians against triton.testing.do_bench run in the same process (GPU).

Usage: python benchmarks/sdpa_vs_dobench.py --db attnbench.db [--run N] [--impl sdpa-cudnn] [--out DIR]
For every ok measurement of the impl in the run, time the same call with do_bench (median, cold L2
as do_bench flushes its own 256 MB buffer) and print the ratio. Target (issue 2): within 10%.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The command line, built without running anything (tests/test_gpu_check.py parses gpu_check.sh's flags)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="attnbench.db")
    ap.add_argument("--run", default=None)
    ap.add_argument("--impl", default="sdpa-cudnn")
    ap.add_argument("--out", default=None)
    return ap


def main() -> None:
    args = build_parser().parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("sdpa_vs_dobench: needs a CUDA GPU")
    import triton.testing

    from attnbench.errors import UserError
    from attnbench.impls import make_call, make_inputs, resolve
    from attnbench.store import Store

    impl = resolve(args.impl)
    rows = []
    with Store(args.db) as store:
        try:
            info = store.run(args.run)
        except UserError as exc:   # no run stored (gpu_check's run step failed): one line, not a traceback
            raise SystemExit(f"sdpa_vs_dobench: {exc}") from None
        for m in store.measurements(info.run_id, impl=args.impl):
            if not m.ok:
                continue
            w = m.workload
            inputs = make_inputs(w, "cuda", 0)
            call = make_call(impl.build(w, "cuda", m.params), w, inputs)
            call()
            torch.cuda.synchronize()
            db_ms = triton.testing.do_bench(call, warmup=25, rep=100, return_mode="median")
            ours = m.median_ms
            rows.append({"workload": w.label, "attnbench_ms": ours, "do_bench_ms": db_ms,
                         "ratio": ours / db_ms, "within_10pct": abs(ours / db_ms - 1) <= 0.10})
            del inputs, call
            torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name()
    lines = [f"attnbench ({args.impl}, cold timer) vs triton do_bench median on {gpu}", "",
             "| workload | attnbench ms | do_bench ms | ratio | within 10% |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['attnbench_ms']:.4f} | {r['do_bench_ms']:.4f} | "
                     f"{r['ratio']:.3f} | {'yes' if r['within_10pct'] else 'NO'} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "sdpa_vs_dobench.json").write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
