"""Issue 4's GPU checks for `attnbench compare` (run by scripts/gpu_check.sh).

1. A/A: sdpa-auto against itself over the characterize preset, REPS times. Target: no `faster` or
   `slower` verdict after Holm correction in any repetition.
2. sdpa-cudnn (A) against sdpa-flash (B) at B=32,H=8,S=512,D=64 fp16, interleaved. Expectation
   (FIELD-NOTES: cuDNN 0.052 ms, flash 0.076 ms on the H100): cudnn faster with a CI that excludes 1.

Usage: python benchmarks/compare_checks.py --out DIR [--reps 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The command line, built without running anything (tests/test_gpu_check.py parses gpu_check.sh's flags)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--impl", default="sdpa-auto")
    return ap


def main() -> None:
    args = build_parser().parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("compare_checks: needs a CUDA GPU")
    from attnbench.compare.comparison import compare_impls
    from attnbench.compare.format import to_json, to_markdown
    from attnbench.spec import Workload, load_preset
    from attnbench.store import Store
    from attnbench.measure.timing import TimingPolicy

    policy = TimingPolicy(warmup_ms=25, min_samples=20, max_samples=2000, max_time_ms=1000, target_precision=0.01)
    gpu = torch.cuda.get_device_name()
    results: dict = {"gpu": gpu, "aa": [], "policy": dataclasses.asdict(policy)}
    workloads = list(load_preset("characterize").workloads)
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "cmp.db") as store:
        lines = [f"# compare checks on {gpu}", ""]
        for rep in range(args.reps):
            t0 = time.time()
            c, _ = compare_impls(args.impl, args.impl, workloads, store, device="cuda", timer="cold",
                                 policy=policy)
            data = to_json(c)
            verdicts = [r["verdict"] for r in data.get("rows", [])]
            flagged = sum(v in ("faster", "slower") for v in verdicts)
            results["aa"].append({"rep": rep, "verdicts": verdicts, "flagged": flagged, "seconds": time.time() - t0,
                                  "comparison": data})
            lines.append(f"- A/A rep {rep + 1}: {len(verdicts)} workloads, faster/slower verdicts: {flagged} "
                         f"({', '.join(sorted(set(verdicts)))})")
            if rep == 0:
                results["aa_markdown"] = to_markdown(c)
        target = Workload(batch=32, q_heads=8, kv_heads=8, q_len=512, kv_len=512, head_dim=64, dtype="fp16")
        c, _ = compare_impls("sdpa-cudnn", "sdpa-flash", [target], store, device="cuda", timer="cold",
                             policy=policy)
        md = to_markdown(c)
        results["cudnn_vs_flash"] = to_json(c)
        results["cudnn_vs_flash_markdown"] = md
        fails = sum(r["flagged"] > 0 for r in results["aa"])
        lines.append(f"A/A: {fails} of {args.reps} repetitions had a faster/slower verdict (target 0)")
        lines += ["", md]
        print(results.get("aa_markdown", ""))
        print("\n".join(lines))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "compare_checks.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
