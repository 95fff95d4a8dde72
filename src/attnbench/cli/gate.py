"""`attnbench gate`: the CI ratchet against a committed baseline."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from .options import (CAUSAL_OPT, DB_OPT, DIM_OPT, DTYPE_OPT, EXECUTOR_OPT, HEADS_OPT, KV_HEADS_OPT, KV_SEQ_OPT,
                      MASK_OPT, PASS_OPT, SCORE_MOD_OPT, SEQ_OPT, SWEEP_OPT, build_workloads, open_store, split_impls)


def gate(
    baseline: Path = typer.Option(..., "--baseline", help="baseline JSON, e.g. perf/attnbench-baseline.json"),
    update: bool = typer.Option(False, "--update", help="create the baseline, or add new cells and move confirmed "
                                                        "improvements up (regressions are never absorbed)"),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="built-in sweep (default: the baseline's cells)"),
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
    impl: Optional[List[str]] = typer.Option(None, "--impl", "-i", help="impls to gate (default: the baseline's)"),
    threshold: float = typer.Option(0.03, "--threshold", help="smallest slowdown that fails (fraction; the "
                                                              "baseline's thresholds override it per impl or cell)"),
    alpha: float = typer.Option(0.05, "--alpha", help="family-wise error rate (Holm over all compared cells)"),
    confirm: int = typer.Option(1, "--confirm", help="re-measure flagged cells N times; each must flag them again"),
    repeats: int = typer.Option(5, "--repeats", help="independent measurements pooled into a cell's baseline "
                                                     "(their spread is the cell's noise floor)"),
    normalize: bool = typer.Option(False, "--normalize", help="scale times by the matmul/copy ceilings measured "
                                                              "now vs in the baseline run (GPU)"),
    allow_env_mismatch: bool = typer.Option(False, "--allow-env-mismatch",
                                            help="compare with a baseline from another environment (with a warning)"),
    accept: Optional[List[str]] = typer.Option(None, "--accept", help="cell key whose current measurement becomes "
                                                                      "its baseline (repeatable; needs --reason)"),
    reason: Optional[str] = typer.Option(None, "--reason", help="why the --accept'ed change is fine (kept in history)"),
    fmt: str = typer.Option("md", "--format", help="md (PR comment) or json"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the GPU if any)"),
    timer: Optional[str] = typer.Option(None, "--timer", help="for a new baseline: cold, warm, graph, graph-warm, "
                                                      "host (default: cold on a GPU, host on a CPU)"),
    samples: Optional[int] = typer.Option(None, "--samples", help="samples per cell (default: the baseline's; 100)"),
    min_samples: Optional[int] = typer.Option(None, "--min-samples"),
    warmup_ms: Optional[float] = typer.Option(None, "--warmup-ms", help="warm-up by time, after the first call"),
    max_time_ms: Optional[float] = typer.Option(None, "--max-time-ms", help="time limit of a measurement's "
                                    "sampling, once --min-samples are taken (first call and warm-up not counted)"),
    executor: str = EXECUTOR_OPT,
    db: Optional[str] = DB_OPT,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """CI ratchet: measure now, compare with the baseline; exit 1 on a confirmed, significant and large
    regression (or a kernel that broke), 2 on a usage or environment error."""
    from ..execute import open_executor
    from ..impls import resolve
    from ..gate.orchestrate import GateOptions, RunnerMeasurer, append_step_summary, policy_from_flags, run_gate

    if fmt not in ("md", "json"):
        raise UserError(f"--format must be md or json, got {fmt!r}")
    if reason is not None and not accept:
        raise UserError("--reason goes with --accept CELL (the reason an accepted regression is fine)")
    if baseline.is_dir():
        example = baseline / "attnbench-baseline.json"
        raise UserError(f"--baseline {baseline} is a folder; give the file, e.g. {example}")
    with open_executor(executor) as ex, open_store(db) as store:
        dev = ex.device(device)
        shape = (batch, heads, kv_heads, seq, kv_seq, dim, dtype, causal, direction)
        masks = dict(mask=mask, score_mod=score_mod)
        workloads = None
        if preset or sweep or any(x is not None for x in (*shape, mask, score_mod)) or not baseline.exists():
            workloads, _ = build_workloads(preset, sweep, *shape, dev, **masks)
        impls = split_impls(impl) or None
        for name in impls or ():  # a misspelt name is a usage error; a baseline's impl that is gone is reported
            if ":" not in name:
                resolve(name)
        policy = policy_from_flags(samples, min_samples, warmup_ms, max_time_ms)
        opts = GateOptions(str(baseline), update=update, threshold=threshold, alpha=alpha, confirm=confirm,
                           repeats=repeats, normalize=normalize, allow_env_mismatch=allow_env_mismatch,
                           accept=tuple(accept or ()), reason=reason, workloads=workloads,
                           impls=impls, timer=timer, policy=policy)
        measurer = RunnerMeasurer(store, dev, progress=not quiet and sys.stderr.isatty(), executor=ex)
        try:
            result = run_gate(opts, measurer)
        except KeyboardInterrupt:
            typer.echo(f"attnbench: interrupted; nothing was decided and {baseline} was not changed; what was measured "
                       f"is stored in {store.path}.", err=True)
            raise typer.Exit(130)
        measurer.record(result)
    text = result.markdown()
    append_step_summary(text)
    typer.echo(json.dumps(result.to_dict(), indent=2, default=str) if fmt == "json" else text, nl=fmt == "json")
    raise typer.Exit(result.exit_code)
