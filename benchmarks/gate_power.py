"""The gate's proof (issue 7), on a GPU: false alarms on unchanged code, detection of calibrated slowdowns,
and the GPU-seconds one gate run costs.

Usage: python benchmarks/gate_power.py --out DIR [--full] [--runs N]

Every gate run below is attnbench.gate.orchestrate.run_gate, the code behind `attnbench gate` (cold timer, the
default policy of 100 samples, ceilings measured, flagged cells re-measured once); only the measuring
is done in-process with runner.measure_cell so that a test impl can be slowed down between runs.

The test impl `sdpa-auto+sleep` is sdpa-auto followed by `torch.cuda._sleep(cycles)`. The sleep kernel
is launched in every run (0 cycles in the baseline and the A/A runs), so the only change the gate can
see is the calibrated number of cycles: fraction x (the cell's baseline median) x (sleep cycles per ms,
measured here with CUDA events).

1. Cost: a baseline, then one gate run, over the `characterize` and `llm-prefill` presets with sdpa-auto
   (15 cells): wall seconds of each (one GPU held throughout). Target: a gate run under 120 s.
2. A/A: a baseline of sdpa-auto and sdpa-auto+sleep (0 cycles) on the power workloads, then --runs gate
   runs on unchanged code. Target: no failing run.
3. Detection: sdpa-auto+sleep slowed by 3%, 5% and 10%, --runs gate runs each. Targets: 5% fails >= 9 of
   10 runs, 10% all of them; 3% (the threshold itself) is reported.

Quick (default; 2 minutes of GPU time on an H100, about 2.5 with process start): the power workloads
are 4 cells, two of each preset (B32 H8 S512 and S2048 fp16; llm-prefill S1024 and S4096). --full uses
all 15 workloads for A/A and detection too (estimated 6-8 minutes). Writes DIR/gate_power.json (every
run's per-cell ratios, CIs, clocks, backends and confirmations; the baseline's noise floors) and prints
a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

LEVELS = (0.03, 0.05, 0.10)
SLEEPY = "sdpa-auto+sleep"


def sleepy_impl(cycles: dict[str, int]):
    """sdpa-auto then a sleep kernel of cycles[workload key] (read at call time; 0 when absent)."""
    import torch

    from attnbench.impls.base import Impl
    from attnbench.impls.sdpa import SdpaImpl

    class SleepySdpa(Impl):
        name, family = SLEEPY, "test"
        description = "sdpa-auto followed by torch.cuda._sleep(cycles): a calibrated slowdown"
        base = SdpaImpl("sdpa-auto")

        def supports(self, workload, device):
            return None if device.startswith("cuda") else "needs a CUDA GPU (torch.cuda._sleep)"

        def build(self, workload, device, params):
            inner, key = self.base.build(workload, device, params), workload.key

            def fn(q, k, v):
                out = inner(q, k, v)
                torch.cuda._sleep(int(cycles.get(key, 0)))
                return out

            return fn

    return SleepySdpa()


def sleep_cycles_per_ms(n: int = 4_000_000) -> float:
    """Cycles of torch.cuda._sleep per millisecond: (n - 0 cycles) / (time(n) - time(0)), CUDA events."""
    import torch

    def timed(cycles: int) -> float:
        out = []
        for _ in range(7):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            torch.cuda._sleep(cycles)
            b.record()
            torch.cuda.synchronize()
            out.append(a.elapsed_time(b))
        return statistics.median(out[2:])

    return n / (timed(n) - timed(0))


class DirectMeasurer:
    """gate_run.Measurer that runs cells in-process through runner.measure_cell with our own Impl objects."""

    def __init__(self, impls: dict[str, Any], device: str = "cuda"):
        from attnbench.analysis import device as devmod

        self.impls, self.device = impls, device
        self.fp = devmod.fingerprint(device)
        self.env_id = devmod.env_id(self.fp)
        self._timers: dict[str, Any] = {}
        self.last: dict[str, Any] = {}

    def fingerprint(self) -> dict[str, Any]:
        return dict(self.fp)

    def ceilings(self, dtypes):
        from attnbench.analysis import device as devmod

        return devmod.measure_ceilings(self.device, tuple(d for d in dtypes if d in ("fp16", "bf16")) or ("fp16",))

    def measure(self, cells, timer, policy, name):
        from attnbench.measure.runner import _free, measure_cell
        from attnbench.measure.timing import make_timer

        t = self._timers.setdefault(timer, make_timer(timer, self.device))
        out = []
        for c in cells:
            out.append(measure_cell(self.impls[c.impl], c.workload, self.device, t, policy, c.params, 0, self.env_id))
            _free(self.device)
        if name == "gate":
            self.last = {c.key: m for c, m in zip(cells, out)}
        return out


def gate_run(opts, measurer) -> dict[str, Any]:
    from attnbench.gate import decision as g
    from attnbench.gate.orchestrate import run_gate

    t0 = time.perf_counter()
    res = run_gate(opts, measurer)
    seconds = time.perf_counter() - t0
    compared = [c for c in res.cells if c.ratio is not None]
    return {"exit_code": res.exit_code, "seconds": seconds,
            "flagged": [c.key for c in res.cells if c.verdict in (g.REGRESSION, g.IMPROVEMENT, g.BROKEN)],
            "unconfirmed": [c.key for c in res.cells if c.note],
            "ratios": {c.key: c.ratio for c in compared},
            "cells": {c.key: {"ratio": c.ratio, "ci": c.ci, "p_holm": c.p_holm, "verdict": c.verdict,
                              "clock_mhz": c.clock_mhz, "baseline_clock_mhz": c.baseline_clock_mhz,
                              "backend": getattr(measurer.last.get(c.key), "backend", ""),
                              "confirmations": c.confirmations} for c in compared},
            "median_ratio": statistics.median(c.ratio for c in compared) if compared else None}


def build_parser() -> argparse.ArgumentParser:
    """The command line, built without running anything (tests/test_gpu_check.py parses gpu_check.sh's flags)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="folder for gate_power.json")
    ap.add_argument("--full", action="store_true", help="A/A and detection over all 15 workloads (~6-8 min)")
    ap.add_argument("--quick", action="store_true", help="the default: 4 power workloads (~2 min)")
    ap.add_argument("--runs", type=int, default=10, help="gate runs per experiment")
    return ap


def main() -> None:
    args = build_parser().parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gate_power: needs a CUDA GPU")
    from attnbench.gate.orchestrate import GateOptions
    from attnbench.impls import resolve
    from attnbench.spec import load_preset

    t_start = time.perf_counter()
    presets = list(load_preset("characterize").workloads) + list(load_preset("llm-prefill").workloads)
    if args.full:
        power = presets
    else:
        pick = {(32, 512, "fp16"), (32, 2048, "fp16"), (16, 1024, "bf16"), (4, 4096, "bf16")}
        power = [w for w in presets if (w.batch, w.q_len, w.dtype) in pick and w.q_heads in (8, 32)]
    cycles: dict[str, int] = {}
    measurer = DirectMeasurer({"sdpa-auto": resolve("sdpa-auto"), SLEEPY: sleepy_impl(cycles)})
    tmp = Path(tempfile.mkdtemp(prefix="gate_power-"))
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                              "mode": "full" if args.full else "quick", "runs": args.runs,
                              "power_workloads": [w.key for w in power]}

    # 1. Cost over the two presets.
    cost_path = str(tmp / "cost.json")
    make = gate_run(GateOptions(cost_path, update=True, repeats=1, workloads=presets, impls=["sdpa-auto"]), measurer)
    check = gate_run(GateOptions(cost_path), measurer)
    report["cost"] = {"cells": len(presets), "baseline_1_repeat_s": make["seconds"], "gate_run_s": check["seconds"],
                      "gate_run_exit": check["exit_code"], "target_s": 120}

    # 2. A/A on the power workloads, both impls.
    path = str(tmp / "power.json")
    made = gate_run(GateOptions(path, update=True, workloads=power, impls=["sdpa-auto", SLEEPY]), measurer)
    from attnbench.gate.baseline import Baseline

    base = Baseline.load(path)
    report["baseline"] = {"seconds": made["seconds"], "repeats": 5,
                          "noise": {k: c.noise for k, c in base.cells.items()},
                          "repeat_medians": {k: c.repeat_medians for k, c in base.cells.items()}}
    aa = [gate_run(GateOptions(path), measurer) for _ in range(args.runs)]
    report["aa"] = {"failing": sum(r["exit_code"] != 0 for r in aa), "target": 0, "runs": aa}

    # 3. Detection: calibrated sleeps on the wrapper's cells only.
    rate = sleep_cycles_per_ms()
    report["sleep_cycles_per_ms"] = rate
    report["detection"] = {}
    for level in LEVELS:
        cycles.clear()
        for c in base.cells.values():
            if c.cell.impl == SLEEPY:
                cycles[c.cell.workload.key] = int(level * c.median_ms * rate)
        runs = [gate_run(GateOptions(path, impls=[SLEEPY]), measurer) for _ in range(args.runs)]
        report["detection"][f"{level:.0%}"] = {
            "failing": sum(r["exit_code"] == 1 for r in runs), "cycles": dict(cycles),
            "median_realized_ratio": statistics.median(r["median_ratio"] for r in runs), "runs": runs}
    cycles.clear()
    report["total_s"] = time.perf_counter() - t_start

    n = args.runs
    det = report["detection"]
    aa_s = statistics.median(r["seconds"] for r in aa)
    lines = [f"gate power on {report['gpu']} ({report['mode']}: {len(power)} power workloads, {n} runs each)", "",
             "| experiment | failing runs | target | realized ratio (median) | s per gate run (median) |",
             "|---|---|---|---|---|",
             f"| A/A, unchanged code ({2 * len(power)} cells) | {report['aa']['failing']}/{n} | 0/{n} | "
             f"{statistics.median(r['median_ratio'] for r in aa):.4f} | {aa_s:.1f} |"]
    targets = {"3%": "report", "5%": f">= {max(0, n - 1)}/{n}", "10%": f"{n}/{n}"}
    for level, d in det.items():
        s = statistics.median(r["seconds"] for r in d["runs"])
        lines.append(f"| +{level} sleep ({len(power)} cells) | {d['failing']}/{n} | {targets[level]} | "
                     f"{d['median_realized_ratio']:.4f} | {s:.1f} |")
    c = report["cost"]
    lines += ["", f"cost: one gate run over characterize + llm-prefill with sdpa-auto ({c['cells']} cells): "
                  f"{c['gate_run_s']:.1f} GPU-seconds (target < {c['target_s']}); a one-measurement baseline "
                  f"took {c['baseline_1_repeat_s']:.1f} s; that gate run exited {c['gate_run_exit']}",
              "noise floors of the power baseline (5 measurements): " + ", ".join(
                  f"{k.split('|')[1]} {k.split('_')[0]} {k.split('_')[3]} {v:.1%}"
                  for k, v in report["baseline"]["noise"].items()),
              f"total: {report['total_s']:.0f} s"]
    print("\n".join(lines))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gate_power.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
