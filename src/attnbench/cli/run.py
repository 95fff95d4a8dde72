"""`attnbench run`: measure every impl on every workload and store the results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from .options import (CAUSAL_OPT, DB_OPT, DIM_OPT, DTYPE_OPT, EXECUTOR_OPT, HEADS_OPT, KV_HEADS_OPT, KV_SEQ_OPT,
                      MASK_OPT, PASS_OPT, PRESET_OPT, SCORE_MOD_OPT, SEQ_OPT, SWEEP_OPT, build_workloads, default_impls,
                      open_store, split_impls)


def run(
    preset: Optional[str] = PRESET_OPT,
    sweep: Optional[Path] = SWEEP_OPT,
    batch: Optional[str] = typer.Option(None, "-b", "--batch", help="comma list"),
    heads: Optional[str] = HEADS_OPT,
    kv_heads: Optional[str] = KV_HEADS_OPT,
    seq: Optional[str] = SEQ_OPT,
    kv_seq: Optional[str] = KV_SEQ_OPT,
    dim: Optional[str] = DIM_OPT,
    dtype: Optional[str] = DTYPE_OPT,
    causal: Optional[bool] = CAUSAL_OPT,
    mask: Optional[str] = MASK_OPT,
    score_mod: Optional[str] = SCORE_MOD_OPT,
    direction: Optional[str] = PASS_OPT,
    impl: Optional[List[str]] = typer.Option(None, "--impl", "-i",
                                             help="impl name or package.module:function (repeatable or a "
                                                  "comma list; default: all)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the GPU if any)"),
    timer: str = typer.Option("auto", "--timer", help="auto (GPU default: graph for kernels under 20 us, else cold), "
                              "cold, warm, graph, graph-warm, host (CPU default)"),
    samples: Optional[int] = typer.Option(None, "--samples", help="a fixed count of samples (adaptive stopping off)"),
    min_samples: int = typer.Option(10, "--min-samples"),
    max_samples: int = typer.Option(10_000, "--max-samples", help="sample limit of adaptive stopping"),
    warmup_ms: float = typer.Option(25.0, "--warmup-ms", help="warm-up by time, after the first call"),
    min_time_ms: float = typer.Option(20.0, "--min-time-ms", help="sample at least this long (adaptive)"),
    max_time_ms: float = typer.Option(2000.0, "--max-time-ms", help="time limit of a measurement's "
                                    "sampling, once --min-samples are taken (first call and warm-up not counted)"),
    target_precision: Optional[float] = typer.Option(
        None, "--target-precision", help="stop when the median's 95% CI half-width is under this fraction "
        "(default 0.01; 0: a fixed count of --samples, default 50)"),
    interleave: bool = typer.Option(False, "--interleave", help="time a workload's impls round by round, in a "
                                    "seeded random order per round, so drift hits all alike"),
    discard_throttled: bool = typer.Option(False, "--discard-throttled", help="drop samples whose SM clock fell "
                                           "> 10% below the run's typical clock (kept aside in the store)"),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="measure the sweep N times, one pass after "
                                          "another (fresh builds and inputs each), pooled per cell, with the spread "
                                          "across passes reported (default: 3 on a CPU, 1 on a GPU)"),
    resume: bool = typer.Option(False, "--resume", help="continue the newest unfinished run of this sweep"),
    name: str = typer.Option("", "--name", help="a label for the run"),
    executor: str = EXECUTOR_OPT,
    db: Optional[str] = DB_OPT,
    fmt: str = typer.Option("md", "--format", help="md or json (the report printed at the end)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Measure every impl on every workload: correctness first, then timing; results go to the store."""
    from ..execute import open_executor, run_sweep
    from ..measure.runner import RunConfig
    from ..measure.timing import policy_from_options
    from ..report import tables as rep

    if fmt not in ("md", "json"):
        raise UserError(f"--format must be md or json, got {fmt!r}")
    if repeats is not None and repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")
    with open_executor(executor) as ex, open_store(db) as store:
        dev = ex.device(device)
        workloads, sweep_name = build_workloads(preset, sweep, batch, heads, kv_heads, seq, kv_seq, dim, dtype,
                                                causal, direction, dev, mask=mask, score_mod=score_mod)
        policy = policy_from_options(samples=samples, min_samples=min_samples, max_samples=max_samples,
                                     warmup_ms=warmup_ms, min_time_ms=min_time_ms, max_time_ms=max_time_ms,
                                     target_precision=target_precision)
        if repeats is None:
            repeats = 1 if ex.distributed else default_repeats(dev)
        config = RunConfig(workloads=workloads, impls=split_impls(impl) or default_impls(), device=dev,
                           timer=timer, policy=policy, name=name or sweep_name, interleave=interleave,
                           discard_throttled=discard_throttled, repeats=repeats)
        if resume and store.resumable_run(config.hash()) is None:
            typer.echo(f"attnbench: --resume: no unfinished run of this sweep (same shapes, impls and options) in "
                       f"{store.path}; starting a new one.", err=True)
        try:
            run_id = run_sweep(config, store, ex, resume=resume, progress=not quiet and sys.stderr.isatty())
        except KeyboardInterrupt:
            typer.echo(f"attnbench: interrupted; what was measured is stored in {store.path}. "
                       "Run the same command with --resume to finish.", err=True)
            raise typer.Exit(130)
        if fmt == "json":
            typer.echo(json.dumps(rep.json_report(store, run_id), indent=2, default=str))
        else:
            typer.echo(rep.markdown(store, run_id))


CPU_REPEATS = 3


def default_repeats(device: str) -> int:
    """--repeats when not given: 3 on a CPU, 1 on a GPU.

    A CPU run shares its cores with everything else on the machine, so what one pass sees can be far from
    the next (the A/A runs in issue 13 moved by up to 25%); its default sweep (cpu-smoke) is tiny, so
    passes are cheap and the spread across them is the most useful thing to show. On a GPU a pass of the
    default sweep (characterize, 70 cells) takes about a minute and the card is not shared; ask for
    --repeats there when the spread matters (the gate pools 5 measurements per cell for its noise floor).
    """
    return 1 if device.startswith("cuda") else CPU_REPEATS
