"""Thin typer app: each command parses, calls the library, prints. UserError -> one line, exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__
from .errors import UserError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Measure, compare, autotune and guard the speed of attention kernels.")

DB_OPT = typer.Option(None, "--db", help="results database (default: $ATTNBENCH_DB or ./attnbench.db)")

# Shape options shared by run, compare, gate and tune (each a comma list; the product is the sweep).
PRESET_OPT = typer.Option(None, "--preset", "-p", help="built-in sweep: characterize, llm-prefill, cpu-smoke")
SWEEP_OPT = typer.Option(None, "--sweep", help="sweep file (TOML or YAML)")
HEADS_OPT = typer.Option(None, "-H", "--heads", help="query heads, comma list")
KV_HEADS_OPT = typer.Option(None, "--kv-heads", help="KV heads (GQA), comma list")
SEQ_OPT = typer.Option(None, "-s", "--seq", help="query length, comma list")
KV_SEQ_OPT = typer.Option(None, "--kv-seq", help="key/value length, comma list")
DIM_OPT = typer.Option(None, "-d", "--dim", help="head dim, comma list")
DTYPE_OPT = typer.Option(None, "--dtype", help="fp16, bf16, fp32, fp64; comma list")
CAUSAL_OPT = typer.Option(None, "--causal/--no-causal", help="causal mask")
PASS_OPT = typer.Option(None, "--pass", help="fwd, bwd, fwd+bwd; comma list")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"attnbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    pass


def _open_store(db: Optional[str]):
    from .store import Store

    return Store(db)


def build_workloads(preset: Optional[str], sweep: Optional[Path], batch: Optional[str], heads: Optional[str],
                    kv_heads: Optional[str], seq: Optional[str], kv_seq: Optional[str], dim: Optional[str],
                    dtype: Optional[str], causal: Optional[bool], direction: Optional[str], device: str):
    """Workloads from a preset, a sweep file or shape flags (comma lists; the product is the sweep)."""
    from .spec import expand, load_preset, load_sweep, parse_list

    flags = {"batch": batch, "heads": heads, "kv_heads": kv_heads, "seq": seq, "kv_seq": kv_seq, "dim": dim,
             "dtype": dtype}
    given = {k: parse_list(v) for k, v in flags.items() if v is not None}
    if causal is not None:
        given["causal"] = [causal]
    if direction is not None:
        given["pass"] = parse_list(direction)
    sources = [s for s in (preset, sweep) if s is not None]
    if len(sources) > 1:
        raise UserError("give either --preset or --sweep, not both")
    if sources:
        sweep_obj = load_preset(preset) if preset else load_sweep(sweep)
        workloads = list(sweep_obj.workloads)
        if given:
            raise UserError("shape flags (-b, -H, -s, ...) cannot be combined with --preset/--sweep; "
                            "put the axes in a sweep file instead")
        return workloads, sweep_obj.name
    if not given:
        name = "characterize" if device.startswith("cuda") else "cpu-smoke"
        return list(load_preset(name).workloads), name
    # The original study's baseline shape fills the axes that were not given.
    axes = {"batch": ["32"], "heads": ["8"], "seq": ["512"], "dim": ["64"],
            "dtype": ["fp16" if device.startswith("cuda") else "fp32"], **given}
    return expand(axes), "custom"


def split_impls(given: Optional[List[str]]) -> List[str]:
    """--impl values, each repeatable and each a comma list (no impl name or plugin path holds a comma)."""
    return [name.strip() for item in given or [] for name in item.split(",") if name.strip()]


def default_impls() -> List[str]:
    from .impls import registry

    return list(registry())


@app.command()
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
    direction: Optional[str] = PASS_OPT,
    impl: Optional[List[str]] = typer.Option(None, "--impl", "-i",
                                             help="impl name or package.module:function (repeatable or a "
                                                  "comma list; default: all)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the GPU if any)"),
    timer: str = typer.Option("auto", "--timer", help="cold (GPU default), warm, graph, graph-warm, host (CPU default)"),
    samples: Optional[int] = typer.Option(None, "--samples", help="a fixed count of samples (adaptive stopping off)"),
    min_samples: int = typer.Option(10, "--min-samples"),
    max_samples: int = typer.Option(10_000, "--max-samples", help="sample limit of adaptive stopping"),
    warmup_ms: float = typer.Option(25.0, "--warmup-ms", help="warm-up by time, after the first call"),
    min_time_ms: float = typer.Option(20.0, "--min-time-ms", help="sample at least this long (adaptive)"),
    max_time_ms: float = typer.Option(2000.0, "--max-time-ms", help="time limit per measurement"),
    target_precision: Optional[float] = typer.Option(
        None, "--target-precision", help="stop when the median's 95% CI half-width is under this fraction "
        "(default 0.01; 0: a fixed count of --samples, default 50)"),
    interleave: bool = typer.Option(False, "--interleave", help="time a workload's impls round by round, in a "
                                    "seeded random order per round, so drift hits all alike"),
    discard_throttled: bool = typer.Option(False, "--discard-throttled", help="drop samples whose SM clock fell "
                                           "> 10% below the run's typical clock (kept aside in the store)"),
    resume: bool = typer.Option(False, "--resume", help="continue the newest unfinished run of this sweep"),
    name: str = typer.Option("", "--name", help="a label for the run"),
    db: Optional[str] = DB_OPT,
    fmt: str = typer.Option("md", "--format", help="md or json (the report printed at the end)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Measure every impl on every workload: correctness first, then timing; results go to the store."""
    from . import report as rep
    from .runner import RunConfig, resolve_device
    from .runner import run as run_sweep
    from .timing import policy_from_options

    if fmt not in ("md", "json"):
        raise UserError(f"--format must be md or json, got {fmt!r}")
    dev = resolve_device(device)
    workloads, sweep_name = build_workloads(preset, sweep, batch, heads, kv_heads, seq, kv_seq, dim, dtype,
                                            causal, direction, dev)
    policy = policy_from_options(samples=samples, min_samples=min_samples, max_samples=max_samples,
                                 warmup_ms=warmup_ms, min_time_ms=min_time_ms, max_time_ms=max_time_ms,
                                 target_precision=target_precision)
    config = RunConfig(workloads=workloads, impls=split_impls(impl) or default_impls(), device=dev,
                       timer=timer, policy=policy, name=name or sweep_name, interleave=interleave,
                       discard_throttled=discard_throttled)
    with _open_store(db) as store:
        try:
            run_id = run_sweep(config, store, resume=resume, progress=not quiet and sys.stderr.isatty())
        except KeyboardInterrupt:
            typer.echo(f"attnbench: interrupted; what was measured is stored in {store.path}. "
                       "Run the same command with --resume to finish.", err=True)
            raise typer.Exit(130)
        if fmt == "json":
            typer.echo(json.dumps(rep.json_report(store, run_id), indent=2, default=str))
        else:
            typer.echo(rep.markdown(store, run_id))


@app.command("list")
def list_impls(
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N"),
) -> None:
    """Every impl, and whether it can run here (with the reason when not)."""
    from .impls import registry
    from .runner import resolve_device
    from .spec import Workload

    dev = resolve_device(device)
    probe = Workload(batch=1, q_heads=8, kv_heads=8, q_len=128, kv_len=128, head_dim=64,
                     dtype="fp16" if dev.startswith("cuda") else "fp32")
    typer.echo(f"impls on {dev} (checked on {probe.label}):")
    impls = registry()
    width = max(len(n) for n in impls)
    for name, impl in impls.items():
        why = impl.supports(probe, dev)
        state = "yes" if why is None else f"no: {why}"
        typer.echo(f"  {name:<{width}}  {state:<40}  {impl.description}")
    typer.echo("plugins: --impl package.module:function, or the 'attnbench.impls' entry point group")


@app.command()
def report(
    run_id: Optional[str] = typer.Argument(None, help="run id (default: the newest)"),
    fmt: str = typer.Option("md", "--format", help="md, json, html or csv (--history: md or html)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="write to a file instead of stdout"),
    history: bool = typer.Option(False, "--history", help="every stored run: each cell's median over time"),
    workload: Optional[str] = typer.Option(None, "--workload", help="--history: workload key or label substring"),
    impl: Optional[str] = typer.Option(None, "--impl", help="--history: impl name or label"),
    db: Optional[str] = DB_OPT,
) -> None:
    """Print a stored run as Markdown, JSON, CSV or a self-contained HTML page; or the history of all runs."""
    from . import report as rep

    formats = ("md", "html") if history else ("md", "json", "html", "csv")
    if fmt not in formats:
        raise UserError(f"--format must be {', '.join(formats[:-1])} or {formats[-1]}"
                        f"{' with --history' if history else ''}, got {fmt!r}")
    if history and run_id is not None:
        raise UserError("--history covers every stored run; give no run id (filter with --workload/--impl)")
    if not history and (workload or impl):
        raise UserError("--workload and --impl filter --history only")
    with _open_store(db) as store:
        if history:
            from . import history as hist

            if fmt == "html":
                from .htmlreport import render_history

                text = render_history(store, workload, impl)
            else:
                text = hist.markdown(hist.gather(store, workload, impl))
        elif fmt == "md":
            text = rep.markdown(store, run_id)
        elif fmt == "json":
            text = json.dumps(rep.json_report(store, run_id), indent=2, default=str)
        elif fmt == "csv":
            text = rep.csv_report(store, run_id)
        else:
            from .htmlreport import render_run

            text = render_run(store, run_id)
    if output:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        typer.echo(f"wrote {output}", err=True)
    else:
        typer.echo(text, nl=not text.endswith("\n"))


@app.command()
def runs(db: Optional[str] = DB_OPT) -> None:
    """The stored runs, newest last."""
    import time

    with _open_store(db) as store:
        infos = store.runs()
        if not infos:
            typer.echo(f"no runs in {store.path}")
            return
        for r in infos:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
            typer.echo(f"{r.run_id:>4}  {when}  {r.status:<11}  {r.n_measurements:>4} measurements  "
                       f"env {r.env_id}  {r.name}")


@app.command()
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
    direction: Optional[str] = PASS_OPT,
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the GPU if any)"),
    timer: str = typer.Option("auto", "--timer", help="cold (GPU default), warm, host (CPU default)"),
    samples: int = typer.Option(50, "--samples", help="samples per measurement"),
    min_samples: int = typer.Option(10, "--min-samples"),
    warmup_ms: float = typer.Option(25.0, "--warmup-ms", help="warm-up by time, after the first call"),
    max_time_ms: float = typer.Option(2000.0, "--max-time-ms", help="time limit per measurement"),
    threshold: float = typer.Option(0.02, "--threshold", help="relative change below which A and B are 'same'"),
    fmt: str = typer.Option("md", "--format", help="md or json"),
    per_token: bool = typer.Option(False, "--per-token", help="compare throughput per token (different shapes)"),
    allow_env_mismatch: bool = typer.Option(False, "--allow-env-mismatch",
                                            help="compare stored runs from different environments (with a warning)"),
    cost_per_hour: Optional[float] = typer.Option(None, "--cost-per-hour", help="USD per GPU-hour: add a cost section"),
    calls_per_day: Optional[float] = typer.Option(None, "--calls-per-day", help="calls per day, for the cost section"),
    db: Optional[str] = DB_OPT,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Is A faster than B? Two impls measured now (--impl A --impl B) or two stored runs (RUN_A RUN_B).

    Exit code 0 whatever the verdict: compare informs, `gate` decides.
    """
    from . import compare as cmp
    from .compare_format import to_json, to_markdown

    if fmt not in ("md", "json"):
        raise UserError(f"--format must be md or json, got {fmt!r}")
    impls, runs_given = split_impls(impl), list(run_ids or [])
    if (len(impls), len(runs_given)) not in ((2, 0), (0, 2)):
        raise UserError("give exactly two --impl (measure now) or exactly two run ids (stored runs), "
                        f"got {len(impls)} --impl and {len(runs_given)} run ids")
    if (cost_per_hour is None) != (calls_per_day is None):
        raise UserError("--cost-per-hour and --calls-per-day go together")
    with _open_store(db) as store:
        if runs_given:
            result = cmp.compare_runs(store, runs_given[0], runs_given[1], allow_env_mismatch=allow_env_mismatch,
                                      threshold=threshold, per_token=per_token)
        else:
            from .runner import resolve_device
            from .timing import TimingPolicy

            dev = resolve_device(device)
            workloads, sweep_name = build_workloads(preset, sweep, batch, heads, kv_heads, seq, kv_seq, dim, dtype,
                                                    causal, direction, dev)
            if samples < 1 or min_samples < 1:
                raise UserError("--samples and --min-samples must be at least 1")
            policy = TimingPolicy(warmup_ms=warmup_ms, min_samples=min(min_samples, samples), max_samples=samples,
                                  max_time_ms=max_time_ms)
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


@app.command()
def env(
    fmt: str = typer.Option("text", "--format", help="text or json"),
    ceilings: bool = typer.Option(False, "--ceilings", help="measure matmul and copy ceilings (cached per environment)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N"),
    db: Optional[str] = DB_OPT,
) -> None:
    """The environment fingerprint (GPU, clocks, driver, CUDA, cuDNN, torch, triton, ...) and its id."""
    from . import device as devmod
    from .runner import resolve_device

    if fmt not in ("text", "json"):
        raise UserError(f"--format must be text or json, got {fmt!r}")
    dev = resolve_device(device)
    fp = devmod.fingerprint(dev)
    eid = devmod.env_id(fp)
    measured = None
    if ceilings:
        measured = devmod.measure_ceilings(dev)
        with _open_store(db) as store:
            store.add_environment(eid, fp)
            store.put("ceilings", eid, measured)
    if fmt == "json":
        typer.echo(json.dumps({"env_id": eid, "fingerprint": fp, "ceilings": measured}, indent=2, default=str))
        return
    typer.echo(devmod.format_env(fp))
    if measured is not None:
        typer.echo("")
        typer.echo(devmod.format_ceilings(measured, fp))


@app.command()
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
    timer: Optional[str] = typer.Option(None, "--timer", help="for a new baseline: cold, warm, host (default auto)"),
    samples: Optional[int] = typer.Option(None, "--samples", help="samples per cell (default: the baseline's; 100)"),
    min_samples: Optional[int] = typer.Option(None, "--min-samples"),
    warmup_ms: Optional[float] = typer.Option(None, "--warmup-ms", help="warm-up by time, after the first call"),
    max_time_ms: Optional[float] = typer.Option(None, "--max-time-ms", help="time limit per measurement"),
    db: Optional[str] = DB_OPT,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """CI ratchet: measure now, compare with the baseline; exit 1 on a confirmed, significant and large
    regression (or a kernel that broke), 2 on a usage or environment error."""
    from .gate_run import GateOptions, RunnerMeasurer, append_step_summary, policy_from_flags, run_gate
    from .runner import resolve_device

    if fmt not in ("md", "json"):
        raise UserError(f"--format must be md or json, got {fmt!r}")
    dev = resolve_device(device)
    shape = (batch, heads, kv_heads, seq, kv_seq, dim, dtype, causal, direction)
    workloads = None
    if preset or sweep or any(x is not None for x in shape) or not baseline.exists():
        workloads, _ = build_workloads(preset, sweep, *shape, dev)
    policy = policy_from_flags(samples, min_samples, warmup_ms, max_time_ms)
    opts = GateOptions(str(baseline), update=update, threshold=threshold, alpha=alpha, confirm=confirm, repeats=repeats,
                       normalize=normalize, allow_env_mismatch=allow_env_mismatch, accept=tuple(accept or ()),
                       reason=reason, workloads=workloads, impls=split_impls(impl) or None, timer=timer,
                       policy=policy)
    with _open_store(db) as store:
        measurer = RunnerMeasurer(store, dev, progress=not quiet and sys.stderr.isatty())
        result = run_gate(opts, measurer)
        measurer.record(result)
    text = result.markdown()
    append_step_summary(text)
    typer.echo(json.dumps(result.to_dict(), indent=2, default=str) if fmt == "json" else text, nl=fmt == "json")
    raise typer.Exit(result.exit_code)


@app.command()
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
    direction: Optional[str] = PASS_OPT,
    impl: Optional[List[str]] = typer.Option(None, "--impl", "-i", help="impl name or package.module:function "
                                             "(repeatable; default: all registered; plugins alone add to all)"),
    budget: str = typer.Option("60s", "--budget", help="time per workload for racing (gate included), e.g. 60s, 2m"),
    budget_total: Optional[str] = typer.Option(None, "--budget-total", help="time for the whole sweep, shared out"),
    exhaustive: bool = typer.Option(False, "--exhaustive", help="time every candidate fully (validates racing)"),
    samples: int = typer.Option(100, "--samples", help="samples per candidate: exhaustive count, racing maximum"),
    force: bool = typer.Option(False, "--force", help="measure again even where the cache has a result"),
    baseline: str = typer.Option("sdpa-auto", "--baseline", help="the default the speedup is stated against"),
    objective: str = typer.Option("latency", "--objective", help="latency (fastest impl per workload) or "
                                  "throughput (largest tokens/s batch within --latency-budget)"),
    latency_budget: Optional[str] = typer.Option(None, "--latency-budget", help="throughput objective: e.g. 2ms"),
    plan_impl: str = typer.Option("best", "--plan-impl", help="throughput objective: 'best' (tune each batch) "
                                  "or an impl name"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="write the dispatch table (latency) or "
                                          "the capacity plan JSON (throughput)"),
    fmt: str = typer.Option("md", "--format", help="md or json (the report printed at the end)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the GPU if any)"),
    timer: str = typer.Option("auto", "--timer", help="cold (GPU default), warm, host (CPU default)"),
    db: Optional[str] = DB_OPT,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress lines"),
) -> None:
    """The fastest correct impl per workload: correctness gate, then racing under a time budget;
    results cached per environment; -o writes a dispatch table for attnbench.attention."""
    from importlib import import_module

    from .capacity import capacity_json, capacity_markdown, plan_capacity
    from .runner import resolve_device
    from .tune_report import dispatch_table, json_report, markdown

    tn = import_module(".tune", __package__)  # not `from . import tune`: the package exports a function of that name

    if fmt not in ("md", "json"):
        raise UserError(f"--format must be md or json, got {fmt!r}")
    if objective not in ("latency", "throughput"):
        raise UserError(f"--objective must be latency or throughput, got {objective!r}")
    if samples < 1:
        raise UserError("--samples must be at least 1")
    dev = resolve_device(device)
    workloads, _ = build_workloads(preset, sweep, tn.expand_ellipsis(batch), heads, kv_heads, seq, kv_seq, dim,
                                   dtype, causal, direction, dev)
    racing = tn.RacingPolicy(max_samples=samples, first_samples=min(10, samples))
    config = tn.TuneConfig(workloads=workloads, impls=tn.cli_impls(split_impls(impl)), device=dev, timer=timer,
                           budget_s=tn.parse_duration(budget), budget_total_s=tn.parse_duration(budget_total,
                           "--budget-total"), exhaustive=exhaustive, racing=racing, baseline=baseline, force=force,
                           policy=tn.TimingPolicy(warmup_ms=25.0, min_samples=samples, max_samples=samples))
    say = None if quiet else (lambda line: typer.echo(line, err=True))
    with _open_store(db) as store:
        if objective == "throughput":
            if latency_budget is None:
                raise UserError("--objective throughput needs --latency-budget (e.g. 2ms)")
            plans = plan_capacity(config, store, tn.parse_ms(latency_budget), plan_impl, progress=say)
            data = capacity_json(plans)
            text = json.dumps(data, indent=2) if fmt == "json" else capacity_markdown(plans)
            if output:
                output.write_text(json.dumps(data, indent=2) + "\n")
        else:
            if latency_budget is not None:
                raise UserError("--latency-budget goes with --objective throughput")
            result = tn.tune(config, store, progress=say)
            text = json.dumps(json_report(result), indent=2, default=str) if fmt == "json" else markdown(result)
            if output:
                dispatch_table(result).save(output)
    if output:
        typer.echo(f"wrote {output}", err=True)
    typer.echo(text)


def main(argv: Optional[List[str]] = None) -> None:
    try:
        app(args=argv, prog_name="attnbench")
    except UserError as exc:
        print(f"attnbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
