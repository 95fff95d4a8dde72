"""Does ncu's cache control make a ~10 us attention kernel start from a cold L2? (issue 3's 10 us miss)

attnbench's cold timer reads ~15-20% above ncu's gpu__time_duration for the 10 us kernels at
B32 H8 S128 D64 fp16, while its warm timer reads about ncu's value. This runs ncu on the same kernels
with `--cache-control all` (flush before each replay, what timer_accuracy uses) and `--cache-control
none`, and prints both durations: equal values mean ncu's flush leaves the kernel's inputs cheap to
reach, so ncu's figure is a warm-ish reference at this size.

Usage: python benchmarks/ncu_cache_probe.py [--out DIR]     (needs ncu on PATH or /usr/local/cuda/bin)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from timer_accuracy import NCU_METRICS, find_ncu, parse_ncu_csv  # this folder is on sys.path when run

CHILD = r"""
import sys, torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
backend = getattr(SDPBackend, sys.argv[1])
q, k, v = (torch.randn(32, 8, 128, 64, device="cuda", dtype=torch.float16) for _ in range(3))
with sdpa_kernel(backend):
    for _ in range(8):
        F.scaled_dot_product_attention(q, k, v)
torch.cuda.synchronize()
"""
BACKENDS = {"sdpa-cudnn": ("CUDNN_ATTENTION", "regex:fprop|sdpa"), "sdpa-flash": ("FLASH_ATTENTION", "regex:flash")}


def durations(ncu: str, backend: str, kernel: str, cache: str) -> dict:
    cmd = [ncu, "--clock-control", "none", "--cache-control", cache, "--metrics", NCU_METRICS, "-k", kernel,
           "--launch-skip", "3", "--launch-count", "5", "--csv", "--page", "raw", "--print-units", "base",
           sys.executable, "-c", CHILD, backend]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    rows = parse_ncu_csv(out)
    ns = sorted(r["ns"] for r in rows if r["ns"] is not None)
    cyc = sorted(r["cycles"] for r in rows if r["cycles"] is not None)
    if not ns or not cyc:
        return {"error": out[-400:]}
    return {"us": [round(x / 1e3, 2) for x in ns], "median_us": ns[len(ns) // 2] / 1e3,
            "median_mhz": cyc[len(cyc) // 2] / ns[len(ns) // 2] * 1e3}


def build_parser() -> argparse.ArgumentParser:
    """The command line, built without running anything (tests/test_gpu_check.py parses gpu_check.sh's flags)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    return ap


def main() -> None:
    args = build_parser().parse_args()
    import torch

    if not torch.cuda.is_available():   # the children profile CUDA kernels: ncu alone is not enough
        raise SystemExit("ncu_cache_probe: needs a CUDA GPU")
    ncu = find_ncu()
    if ncu is None:
        raise SystemExit("ncu_cache_probe: no ncu found")
    res = {impl: {cache: durations(ncu, b, k, cache) for cache in ("all", "none")}
           for impl, (b, k) in BACKENDS.items()}
    print("ncu at B32 H8 S128 D64 fp16: median kernel time (us) and clock by cache control")
    print("| impl | --cache-control all | --cache-control none |\n|---|---|---|")
    for impl, r in res.items():
        cells = [f"{r[c]['median_us']:.2f} us @ {r[c]['median_mhz']:.0f} MHz" if "median_us" in r[c] else
                 f"error: {r[c]['error'][:80]}" for c in ("all", "none")]
        print(f"| {impl} | {cells[0]} | {cells[1]} |")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "ncu_cache_probe.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
