"""`attnbench tune`: the fastest correct impl per workload, and the dispatch table."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from .options import (CAUSAL_OPT, DB_OPT, DIM_OPT, DTYPE_OPT, EXECUTOR_OPT, HEADS_OPT, KV_HEADS_OPT, KV_SEQ_OPT,
                      MASK_OPT, PASS_OPT, PRESET_OPT, SCORE_MOD_OPT, SEQ_OPT, SWEEP_OPT, build_workloads, check_output,
                      open_store, split_impls)


def tune(
    preset: Optional[str] = PRESET_OPT,
    sweep: Optional[Path] = SWEEP_OPT,
    batch: Optional[str] = typer.Option(None, "-b", "--batch", help="comma list; '1,2,4,...,256' expands"),
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
    impl: Optional[List[str]] = typer.Option(None, "--impl", "-i", help="impl name or package.module:function "
                                             "(repeatable; default: all registered; plugins alone add to all); "
                                             "the --baseline impl races too and wins where it is fastest"),
    budget: str = typer.Option("60s", "--budget", help="time per workload for racing (gate included), e.g. 60s, 2m"),
    budget_total: Optional[str] = typer.Option(None, "--budget-total", help="time for the whole sweep, shared out"),
    exhaustive: bool = typer.Option(False, "--exhaustive", help="time every candidate fully (validates racing)"),
    samples: int = typer.Option(100, "--samples", help="samples per candidate: exhaustive count, racing maximum"),
    force: bool = typer.Option(False, "--force", help="measure again even where the cache has a result"),
    baseline: str = typer.Option("sdpa-auto", "--baseline", help="the default the speedup is stated against; "
                                 "always a candidate"),
    objective: str = typer.Option("latency", "--objective", help="latency (fastest impl per workload) or "
                                  "throughput (largest tokens/s batch within --latency-budget)"),
    latency_budget: Optional[str] = typer.Option(None, "--latency-budget", help="throughput objective: e.g. 2ms"),
    plan_impl: str = typer.Option("best", "--plan-impl", help="throughput objective: 'best' (tune each batch) "
                                  "or an impl name"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="write the dispatch table (latency; an "
                                          "existing one of this environment is added to) or the capacity plan JSON "
                                          "(throughput)"),
    fmt: str = typer.Option("md", "--format", help="md or json (the report printed at the end)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the GPU if any)"),
    timer: str = typer.Option("auto", "--timer", help="cold (GPU default), warm, host (CPU default)"),
    executor: str = EXECUTOR_OPT,
    db: Optional[str] = DB_OPT,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress lines"),
    from_model: Optional[str] = typer.Option(None, "--from-model", help="the attention workloads of a transformers "
                                             "model (config.json, model folder or model id in the local cache; never "
                                             "downloads) at --batch and --seq: prefill and decode (--pass fwd+bwd: "
                                             "the training prefill)"),
) -> None:
    """The fastest correct impl per workload: correctness gate, then racing under a time budget;
    results cached per environment; -o writes a dispatch table for attnbench.attention."""
    from ..execute import open_executor
    from ..tune import tuner as tn
    from ..tune.capacity import capacity_json, capacity_markdown, plan_capacity
    from ..tune.report import dispatch_table, json_report, markdown, update_table

    if fmt not in ("md", "json"):
        raise UserError(f"--format must be md or json, got {fmt!r}")
    if objective not in ("latency", "throughput"):
        raise UserError(f"--objective must be latency or throughput, got {objective!r}")
    if samples < 1:
        raise UserError("--samples must be at least 1")
    if objective == "throughput" and executor != "inproc":
        raise UserError("--executor works with --objective latency; a capacity plan searches batches in turn")
    check_output(output)
    old_table = _existing_table(output) if objective == "latency" else None
    say = None if quiet else (lambda line: typer.echo(line, err=True))
    with open_executor(executor) as ex, open_store(db) as store:
        dev = ex.device(device)
        if from_model is not None:
            from ..integrations.hf_workloads import workloads_from_options

            shape_flags = {"--preset": preset, "--sweep": sweep, "--heads": heads, "--kv-heads": kv_heads,
                           "--kv-seq": kv_seq, "--dim": dim, "--causal": causal, "--mask": mask,
                           "--score-mod": score_mod}
            given = [flag for flag, value in shape_flags.items() if value is not None]
            if given:
                raise UserError(f"--from-model takes the shapes from the model; drop {', '.join(given)}")
            workloads = workloads_from_options(from_model, tn.expand_ellipsis(batch), seq, dtype, direction, say)
            if say:
                say(f"{from_model}: {len(workloads)} attention workloads: " + "; ".join(w.label for w in workloads))
        else:
            workloads, _ = build_workloads(preset, sweep, tn.expand_ellipsis(batch), heads, kv_heads, seq, kv_seq,
                                           dim, dtype, causal, direction, dev, mask=mask, score_mod=score_mod)
        racing = tn.RacingPolicy(max_samples=samples, first_samples=min(10, samples))
        config = tn.TuneConfig(workloads=workloads, impls=tn.cli_impls(split_impls(impl)), device=dev, timer=timer,
                               budget_s=tn.parse_duration(budget), budget_total_s=tn.parse_duration(budget_total,
                               "--budget-total"), exhaustive=exhaustive, racing=racing, baseline=baseline,
                               force=force, policy=tn.TimingPolicy(warmup_ms=25.0, min_samples=samples,
                                                                   max_samples=samples))
        if objective == "throughput":
            if latency_budget is None:
                raise UserError("--objective throughput needs --latency-budget (e.g. 2ms)")
            with _interrupt_note(store):
                plans = plan_capacity(config, store, tn.parse_ms(latency_budget), plan_impl, progress=say)
            data = capacity_json(plans)
            text = json.dumps(data, indent=2) if fmt == "json" else capacity_markdown(plans)
            if output:
                output.write_text(json.dumps(data, indent=2) + "\n")
        else:
            if latency_budget is not None or plan_impl != "best":
                raise UserError("--latency-budget and --plan-impl go with --objective throughput")
            with _interrupt_note(store):
                result = tn.tune(config, store, progress=say, executor=ex)
            text = json.dumps(json_report(result), indent=2, default=str) if fmt == "json" else markdown(result)
            if output:
                table, what = update_table(dispatch_table(result), old_table)
                table.save(output)
    if output:
        typer.echo(f"wrote {output}" + (f" ({what})" if objective == "latency" else ""), err=True)
    typer.echo(text)


def _existing_table(output: Optional[Path]):
    """The dispatch table already at -o (tune adds to it), None if there is no file; another file is refused
    before anything is measured rather than overwritten."""
    from ..tune.dispatch import load_table

    if output is None or not output.exists():
        return None
    try:
        return load_table(output, reload=True)
    except UserError as exc:
        raise UserError(f"--output {output} exists and is not a dispatch table tune can add to ({exc}); "
                        "remove it or give another file") from None


@contextmanager
def _interrupt_note(store):
    """Ctrl-C: say what was kept (each workload's search is cached once it ends), exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo(f"attnbench: interrupted; each workload tuned to the end is cached in {store.path}, and the same "
                   "command continues from there (--force measures again).", err=True)
        raise typer.Exit(130)
