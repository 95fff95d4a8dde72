"""`attnbench compare`: is A faster than B? Two impls measured now, or two stored runs."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from .options import (CAUSAL_OPT, DB_OPT, DIM_OPT, DTYPE_OPT, HEADS_OPT, KV_HEADS_OPT, KV_SEQ_OPT, MASK_OPT, PASS_OPT,
                      SCORE_MOD_OPT, SEQ_OPT, SWEEP_OPT, build_workloads, open_store, split_impls)


def compare(
    run_ids: Optional[List[str]] = typer.Argument(None, help="two stored run ids: RUN_A (candidate) RUN_B (baseline)"),
    impl: Optional[List[str]] = typer.Option(None, "--impl", "-i",
                                             help="exactly two: A (candidate) then B (baseline), measured now"),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="built-in sweep (measuring now)"),
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
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the GPU if any)"),
    timer: str = typer.Option("auto", "--timer", help="auto (GPU default: graph for kernels under 20 us, else "
                              "cold; one mode per workload), cold, warm, host (CPU default)"),
    samples: int = typer.Option(50, "--samples", help="samples per measurement (spread over --rounds rounds)"),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="rounds (interleaved batches) per measurement, at "
                                         "least (default 10, or --samples if fewer): the unit of evidence; a verdict "
                                         "needs 8, and Holm over M rows needs 2^(1-rounds) < alpha/M"),
    min_samples: int = typer.Option(10, "--min-samples"),
    warmup_ms: float = typer.Option(25.0, "--warmup-ms", help="warm-up by time, after the first call"),
    max_time_ms: float = typer.Option(2000.0, "--max-time-ms", help="time limit of a measurement's "
                                    "sampling, once --min-samples are taken (first call and warm-up not counted)"),
    threshold: float = typer.Option(0.02, "--threshold", help="relative change below which A and B are 'same'"),
    fmt: str = typer.Option("md", "--format", help="md or json"),
    per_token: bool = typer.Option(False, "--per-token", help="compare throughput per token (different shapes)"),
    allow_env_mismatch: bool = typer.Option(False, "--allow-env-mismatch",
                                            help="compare stored runs from different environments (with a warning)"),
    cost_per_hour: Optional[float] = typer.Option(None, "--cost-per-hour", help="USD per GPU-hour: add a cost section"),
    calls_per_day: Optional[float] = typer.Option(None, "--calls-per-day", help="calls per day, for the cost section"),
    db: Optional[str] = DB_OPT,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    model: Optional[str] = typer.Option(None, "--model", help="a transformers model end to end (config.json, model "
                                        "folder or cached model id; random weights): attn_implementation attnbench "
                                        "(A, with --table) vs sdpa (B), at -b x -s; timer host unless --timer"),
    table: Optional[str] = typer.Option(None, "--table", help="with --model: the dispatch table "
                                        "(default $ATTNBENCH_DISPATCH)"),
    train: bool = typer.Option(False, "--train", help="with --model: time a training step (forward + backward) too"),
) -> None:
    """Is A faster than B? Two impls measured now (--impl A --impl B), two stored runs (RUN_A RUN_B), or a
    transformers model with attnbench's dispatch against SDPA (--model CONFIG --table T).

    Exit code 0 whatever the verdict: compare informs, `gate` decides.
    """
    from ..compare import comparison as cmp
    from ..compare.format import to_json, to_markdown

    if fmt not in ("md", "json"):
        raise UserError(f"--format must be md or json, got {fmt!r}")
    from ..measure.timing import check_time_flags

    check_time_flags(warmup_ms=warmup_ms, max_time_ms=max_time_ms)
    if model is not None:
        others = {"--impl": impl, "RUN_IDS": run_ids, "--preset": preset, "--sweep": sweep, "--heads": heads,
                  "--kv-heads": kv_heads, "--kv-seq": kv_seq, "--dim": dim, "--causal": causal, "--mask": mask,
                  "--score-mod": score_mod, "--pass": direction, "--per-token": per_token or None,
                  "--cost-per-hour": cost_per_hour, "--calls-per-day": calls_per_day}
        try:
            result = _compare_model(model, table, batch, seq, dtype, device, timer, train, samples, min_samples,
                                    warmup_ms, max_time_ms, threshold, quiet, [k for k, v in others.items() if v])
        except KeyboardInterrupt:
            typer.echo("attnbench: interrupted; compare --model keeps its samples in memory only: nothing was saved.",
                       err=True)
            raise typer.Exit(130)
        typer.echo(json.dumps(to_json(result), indent=2, default=str) if fmt == "json" else to_markdown(result))
        return
    if table is not None or train:
        raise UserError("--table and --train go with --model")
    impls, runs_given = split_impls(impl), list(run_ids or [])
    if (len(impls), len(runs_given)) not in ((2, 0), (0, 2)):
        raise UserError("give exactly two --impl (measure now) or exactly two run ids (stored runs), "
                        f"got {len(impls)} --impl and {len(runs_given)} run ids")
    if (cost_per_hour is None) != (calls_per_day is None):
        raise UserError("--cost-per-hour and --calls-per-day go together")
    not_ids = [r for r in runs_given if not (r == "latest" or r.isdigit())]
    if not_ids:
        # `compare mykernel sdpa-auto` names impls where run ids go: say how to measure them, before any other
        # complaint about flags that only make sense for impls.
        both = len(not_ids) == len(runs_given) == 2
        hint = " ".join(f"--impl {r}" for r in runs_given) if both else "--impl A --impl B"
        raise UserError(f"{', '.join(repr(r) for r in not_ids)}: not a run id (a number or 'latest'); to measure "
                        f"two impls now: attnbench compare {hint}")
    if runs_given:
        # What says how to measure now means nothing to two stored runs: refuse it rather than ignore it.
        measuring = dict(preset=preset, sweep=sweep, batch=batch, heads=heads, kv_heads=kv_heads, seq=seq,
                         kv_seq=kv_seq, dim=dim, dtype=dtype, causal=causal, mask=mask, score_mod=score_mod,
                         direction=direction, device=device, rounds=rounds, timer=timer, samples=samples,
                         min_samples=min_samples, warmup_ms=warmup_ms, max_time_ms=max_time_ms)
        options = inspect.signature(compare).parameters
        given = [_flag(options[name].default) for name, value in measuring.items()
                 if value != options[name].default.default]
        if given:
            raise UserError(f"two stored runs are compared as they were measured; drop {', '.join(given)} "
                            "(they go with --impl A --impl B)")
    with open_store(db, must_exist=bool(runs_given)) as store:
        if runs_given:
            result = cmp.compare_runs(store, runs_given[0], runs_given[1], allow_env_mismatch=allow_env_mismatch,
                                      threshold=threshold, per_token=per_token)
        else:
            from ..measure.runner import resolve_device
            from ..measure.timing import TimingPolicy

            dev = resolve_device(device)
            workloads, sweep_name = build_workloads(preset, sweep, batch, heads, kv_heads, seq, kv_seq, dim, dtype,
                                                    causal, direction, dev, mask=mask, score_mod=score_mod)
            if samples < 1 or min_samples < 1:
                raise UserError("--samples and --min-samples must be at least 1")
            if rounds is None:
                rounds = min(TimingPolicy().min_batches, samples)
            if not 1 <= rounds <= samples:
                raise UserError(f"--rounds must be between 1 and --samples ({samples}): each round takes at least one "
                                f"sample, got {rounds}")
            policy = TimingPolicy(warmup_ms=warmup_ms, min_samples=min(min_samples, samples), max_samples=samples,
                                  max_time_ms=max_time_ms, min_batches=rounds)
            try:
                result, _ = cmp.compare_impls(impls[0], impls[1], workloads, store, device=dev, timer=timer,
                                              policy=policy, threshold=threshold, per_token=per_token,
                                              progress=not quiet and sys.stderr.isatty(),
                                              name=f"compare {sweep_name}: {impls[0]} vs {impls[1]}")
            except KeyboardInterrupt:
                typer.echo(f"attnbench: interrupted; what was measured is stored in {store.path}.", err=True)
                raise typer.Exit(130)
    if cost_per_hour is not None:
        result = cmp.with_cost(result, calls_per_day, cost_per_hour)
    if fmt == "json":
        typer.echo(json.dumps(to_json(result), indent=2, default=str))
    else:
        typer.echo(to_markdown(result))


def _flag(option) -> str:
    """An option's long name, as the user typed it: '--causal' of '--causal/--no-causal'."""
    return next(d for d in option.param_decls if d.startswith("--")).split("/")[0]


def _compare_model(model, table, batch, seq, dtype, device, timer, train, samples, min_samples, warmup_ms, max_time_ms,
                   threshold, quiet, conflicts):
    """compare --model: the options checked, then integrations.hf_compare.compare_model."""
    import os

    from ..integrations.hf_compare import compare_model
    from ..integrations.hf_workloads import int_list
    from ..measure.runner import resolve_device
    from ..measure.timing import TimingPolicy

    if conflicts:
        raise UserError(f"--model compares the whole model at -b and -s; drop {', '.join(conflicts)}")
    table = table or os.environ.get("ATTNBENCH_DISPATCH")
    if not table:
        raise UserError("--model needs --table: a dispatch table (attnbench tune --from-model MODEL -o TABLE)")
    if dtype is not None and "," in dtype:
        raise UserError(f"--dtype: give one value with --model, got {dtype!r}")
    if samples < 1 or min_samples < 1:
        raise UserError("--samples and --min-samples must be at least 1")
    policy = TimingPolicy(warmup_ms=warmup_ms, min_samples=min(min_samples, samples), max_samples=samples,
                          max_time_ms=max_time_ms)
    say = None if quiet else (lambda line: typer.echo(line, err=True))
    return compare_model(model, table, batches=int_list(batch or "1", "--batch"), seqs=int_list(seq or "512", "--seq"),
                         dtype=dtype, device=resolve_device(device), train=train, timer=timer, policy=policy,
                         threshold=threshold, progress=say)
