"""The correctness gate on real kernels: how close correct ones come to its limits, and that corrupted ones fail.

Every impl (built-in, plus the correct test fixtures) is checked with `attnbench.measure.correctness.check` on
each workload and seed; each check's ratio (error / limit, <= 1 passes) of the element, row and head criteria
is kept, over out, dq, dk and dv. The corrupted fixtures (errors in >= 1% of the rows) must be `incorrect`.

- GPU (the default; with no CUDA GPU it stops, unless --cpu): the presets characterize and llm-prefill in bf16
  and fp16, every built-in impl; gradients at three shapes; the corrupted fixtures at B8 H8 S1024 D64 and the
  llm-prefill S2048 shape, causal. Takes a few minutes on an H100/H200 (flex compiles once per workload and dtype).
- `--cpu`: CPU-sized shapes of the presets and masked workloads (the evidence behind the floors in
  measure/criteria.py), with the CPU impls and the correct fixtures (eager_reordered, masked_sdpa,
  query_chunked, tf32_matmuls for fp32).

Prints a table of the largest ratios per impl, dtype and pass, and a verdict line; exits 1 when a correct
kernel is `incorrect` or a corrupted one passes. Usage: python benchmarks/correctness_margins.py [--cpu]
[--seeds N] [--budget-s S] [--out DIR] (docs/methods.md's CPU table: --cpu --seeds 3)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CORRECT_FIXTURES = ["tests.fixtures.kernels:eager_reordered", "tests.fixtures.kernels:masked_sdpa",
                    "tests.fixtures.kernels:query_chunked"]
CORRUPTED = ["tests.fixtures.kernels:tail_rows_miss_keys", "tests.fixtures.kernels:skips_tail_key_tile",
             "tests.fixtures.kernels:one_head_off", "tests.fixtures.kernels:grad_tail_rows_miss_keys"]


def gpu_cases():
    from attnbench.spec import Workload, load_preset

    fwd = []
    for preset in ("characterize", "llm-prefill"):
        for w in load_preset(preset).workloads:
            fwd += [w.replace(dtype=d) for d in ("bf16", "fp16")]
    bwd = []
    for w in (Workload(batch=8, q_heads=8, kv_heads=8, q_len=1024, kv_len=1024, head_dim=64),
              Workload(batch=2, q_heads=16, kv_heads=4, q_len=4096, kv_len=4096, head_dim=128, causal=True),
              Workload(batch=1, q_heads=8, kv_heads=8, q_len=16384, kv_len=16384, head_dim=128, causal=True)):
        bwd += [w.replace(dtype=d, direction="bwd") for d in ("bf16", "fp16")]
    bad = [Workload(batch=8, q_heads=8, kv_heads=8, q_len=1024, kv_len=1024, head_dim=64, causal=True),
           Workload(batch=8, q_heads=32, kv_heads=8, q_len=2048, kv_len=2048, head_dim=128, causal=True)]
    bad = [w.replace(dtype=d) for w in bad for d in ("bf16", "fp16")]
    return bwd + fwd, bad   # gradients first: --budget-s cuts the end of the list


def cpu_cases():
    from attnbench.spec import Workload, load_preset

    base = list(load_preset("cpu-smoke").workloads)
    extra = [Workload(batch=4, q_heads=8, kv_heads=8, q_len=512, kv_len=512, head_dim=64),
             Workload(batch=1, q_heads=8, kv_heads=8, q_len=2048, kv_len=2048, head_dim=64),
             Workload(batch=1, q_heads=8, kv_heads=2, q_len=1024, kv_len=1024, head_dim=128, causal=True),
             Workload(batch=2, q_heads=4, kv_heads=4, q_len=256, kv_len=512, head_dim=64, mask="causal-br"),
             Workload(batch=2, q_heads=4, kv_heads=2, q_len=512, kv_len=512, head_dim=64, mask="window:64"),
             Workload(batch=2, q_heads=4, kv_heads=4, q_len=512, kv_len=512, head_dim=64, mask="document:rand:6"),
             Workload(batch=2, q_heads=4, kv_heads=4, q_len=512, kv_len=512, head_dim=64, causal=True,
                      score_mod="alibi"),
             Workload(batch=2, q_heads=4, kv_heads=4, q_len=512, kv_len=512, head_dim=64, score_mod="softcap:20")]
    cases = []
    for w in base + extra:
        for d in ("bf16", "fp16", "fp32"):
            cases.append(w.replace(dtype=d))
        if w.q_len <= 512:
            cases += [w.replace(dtype=d, direction="bwd") for d in ("bf16", "fp16")]
    bad = [Workload(batch=1, q_heads=8, kv_heads=8, q_len=1024, kv_len=1024, head_dim=64, causal=True, dtype=d)
           for d in ("bf16", "fp16")]
    return cases, bad


def check_impl(impl, w, device: str, seeds: int) -> list[dict]:
    """prepare_cell's gate without the timing: supports, build and a first call once, then `seeds` checks
    under the impl's context (one result each)."""
    from attnbench.impls.base import Unsupported, make_call, make_inputs
    from attnbench.measure.correctness import check

    why = impl.supports(w, device)
    if why:
        return [{"status": "unsupported", "reason": why, "seed": 0}]
    out = []
    try:
        fn = impl.build(w, device, {})
        make_call(fn, w, make_inputs(w, device, 0))()
        for seed in range(seeds):
            with impl.context():
                r = check(fn, w, device, seed=seed)
            ratios = {n: {c: r.details[n][c]["ratio"] for c in ("element", "row", "head")} for n in r.details}
            out.append({"status": "ok" if r.ok else "incorrect", "reason": r.reason, "rel_err": r.rel_err,
                        "ratios": ratios, "note": r.note, "seed": seed})
    except Unsupported as exc:  # refused at its first call, as the runner records it: not a failure
        out.append({"status": "unsupported", "reason": str(exc)[:300], "seed": len(out)})
    except Exception as exc:  # recorded, the sweep goes on
        text = str(exc).strip().splitlines()
        out.append({"status": "error", "reason": f"{type(exc).__name__}: {text[0] if text else ''}"[:300],
                    "seed": len(out)})
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line, built without running anything (tests/test_gpu_check.py parses gpu_check.sh's flags)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="the CPU evidence sweep")
    ap.add_argument("--seeds", type=int, default=1, help="checks per (impl, workload), each on fresh inputs")
    ap.add_argument("--out", default=None)
    ap.add_argument("--impl", action="append", default=None, help="only these impls (repeatable)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="stop starting correct-kernel checks after this many seconds (the corrupted ones run first)")
    return ap


def main() -> int:
    args = build_parser().parse_args()

    import torch

    from attnbench.impls import builtin_impls, resolve

    if not args.cpu and not torch.cuda.is_available():   # never the CPU sweep in place of the GPU one, unasked
        raise SystemExit("correctness_margins: needs a CUDA GPU (--cpu: the CPU sweep)")
    device = "cpu" if args.cpu else "cuda"
    cases, bad_cases = cpu_cases() if device == "cpu" else gpu_cases()
    names = args.impl or list(builtin_impls()) + CORRECT_FIXTURES + (
        ["tests.fixtures.kernels:tf32_matmuls"] if device == "cpu" else [])
    impls = [resolve(n) for n in names]
    t0 = time.time()
    caught = []
    for name in CORRUPTED:
        impl = resolve(name)
        for w in bad_cases:
            wb = w.replace(direction="bwd") if name.endswith("grad_tail_rows_miss_keys") else w
            caught += [{"impl": impl.name, "workload": wb.label, **res} for res in check_impl(impl, wb, device, 1)]
    rows, failures, skipped = [], [], 0
    for w in cases:   # workloads outside, impls inside: a budget cut drops whole workloads, never an impl
        for impl in impls:
            if impl.name.endswith(":tf32_matmuls") and w.dtype != "fp32":
                continue
            if impl.name == "flex" and device == "cpu" and w.q_len > 512:
                continue   # flex compiles per workload on the CPU (seconds each)
            if time.time() - t0 > args.budget_s:
                skipped += 1
                continue
            for res in check_impl(impl, w, device, args.seeds):
                rows.append({"impl": impl.name, "workload": w.label, "dtype": w.dtype, "pass": w.direction, **res})
                if res["status"] in ("incorrect", "error"):
                    failures.append(rows[-1])
    print(f"# correctness margins on {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, "
          f"torch {torch.__version__}, {len(rows)} checks, {time.time() - t0:.0f} s"
          + (f"; {skipped} (impl, workload) pairs left out by --budget-s" if skipped else ""))
    print("\nLargest error / limit over the checks (<= 1 passes); columns: element, row, head criterion.\n")
    print("| impl | dtype | pass | checks | element | row | head | worst at |")
    print("|---|---|---|---|---|---|---|---|")
    groups: dict = {}
    for r in rows:
        if r["status"] in ("ok", "incorrect"):
            groups.setdefault((r["impl"], r["dtype"], r["pass"]), []).append(r)
    for (impl, dtype, direction), rs in sorted(groups.items()):
        best = {c: max(x["ratios"][n][c] for x in rs for n in x["ratios"]) for c in ("element", "row", "head")}
        top = max(rs, key=lambda x: max(max(v.values()) for v in x["ratios"].values()))
        tn = max(top["ratios"], key=lambda n: max(top["ratios"][n].values()))
        print(f"| {impl} | {dtype} | {direction} | {len(rs)} | {best['element']:.3g} | {best['row']:.3g} | "
              f"{best['head']:.3g} | {top['workload']} {tn} |")
    print("\n## Corrupted fixtures (expected: incorrect)\n")
    print("| impl | workload | status | global rel err | reason |")
    print("|---|---|---|---|---|")
    for c in caught:
        err = f"{c['rel_err']:.2g}" if c.get("rel_err") is not None else ""
        print(f"| {c['impl']} | {c['workload']} | {c['status']} | {err} | {c['reason']} |")
    missed = [c for c in caught if c["status"] != "incorrect"]
    for f in failures:
        print(f"- {f['status'].upper()}: {f['impl']} {f['workload']} seed {f['seed']}: {f['reason']}")
    errors = [f for f in failures if f["status"] == "error"]
    wrong = [f for f in failures if f["status"] == "incorrect"]
    verdict = ("PASS" if not wrong and not missed else "FAIL")
    print(f"\ncorrectness margins: {verdict}: {len(wrong)} correct-kernel checks incorrect, {len(errors)} errors, "
          f"{len(missed)} of {len(caught)} corrupted-kernel checks not caught")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "correctness_margins.json").write_text(
            json.dumps({"device": device, "rows": rows, "corrupted": caught}, indent=1, default=str))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
