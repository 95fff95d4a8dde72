"""One gate run: load the baseline, measure, check with confirmation, ratchet, accept and write."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

from ..errors import UserError
from ..store import Measurement
from .baseline import Baseline, Cell, accept, impl_label, ratchet, resolve_cell
from .decision import IMPL_GONE, IMPROVEMENT, NEW, GateResult, check, environment_mismatch


class Measurer(Protocol):
    """Where measurements come from: the runner (CLI), direct cells (benchmarks) or synthetic (tests)."""

    def fingerprint(self) -> dict[str, Any]: ...

    def ceilings(self, dtypes: list[str]) -> dict[str, Any] | None: ...

    def measure(self, cells: list[Cell], timer: str, policy: Any, name: str) -> list[Measurement]: ...


@dataclass
class GateOptions:
    baseline: str
    update: bool = False
    threshold: float = 0.03
    alpha: float = 0.05
    confirm: int = 1
    normalize: bool = False
    allow_env_mismatch: bool = False
    accept: tuple[str, ...] = ()
    reason: str | None = None
    repeats: int = 5                         # independent measurements pooled into a cell's baseline
    workloads: list[Any] | None = None       # None: the baseline's workloads
    impls: list[str] | None = None           # None: the baseline's impls (all registered ones for a new baseline)
    timer: str | None = None                 # None: the baseline's timer mode
    policy: Any = None                       # a TimingPolicy; None: the baseline's


def policy_from_flags(samples: int | None, min_samples: int | None, warmup_ms: float | None,
                      max_time_ms: float | None) -> Any:
    """A TimingPolicy from the CLI's flags, or None when none was given (then the baseline's is used)."""
    if all(x is None for x in (samples, min_samples, warmup_ms, max_time_ms)):
        return None
    from ..measure.timing import TimingPolicy, check_time_flags

    check_time_flags(warmup_ms=warmup_ms, max_time_ms=max_time_ms)
    d = TimingPolicy()
    n = d.max_samples if samples is None else samples
    lo = min(d.min_samples if min_samples is None else min_samples, n)
    if n < 1 or lo < 1:
        raise UserError("--samples and --min-samples must be at least 1")
    return TimingPolicy(warmup_ms=d.warmup_ms if warmup_ms is None else warmup_ms, min_samples=lo, max_samples=n,
                        max_time_ms=d.max_time_ms if max_time_ms is None else max_time_ms)


def _plan(opts: GateOptions, base: Baseline | None) -> list[Cell]:
    known = list(base.cells.values()) if base else []
    if opts.workloads is None:
        cells = [c.cell for c in known if opts.impls is None or c.cell.impl in opts.impls
                 or impl_label(c.cell.impl, c.cell.params) in opts.impls]
    else:
        if opts.impls is not None:
            names = list(opts.impls)
        elif known:
            names = list(dict.fromkeys(c.cell.impl for c in known))
        else:
            from ..impls import registry

            names = list(registry())
        params = {n: [c.cell.params for c in known if c.cell.impl == n] or [{}] for n in names}
        cells = [Cell(w, n, dict(p)) for w in opts.workloads for n in names
                 for p in {json.dumps(q, sort_keys=True): q for q in params[n]}.values()]
    if not cells:
        raise UserError("nothing to measure: the baseline has no cells for these impls; give --preset, --sweep "
                        "or shape flags")
    return cells


def run_gate(opts: GateOptions, measurer: Measurer, *, date: str | None = None) -> GateResult:
    """The whole gate: load (or start) the baseline, check the environment, measure ceilings and cells,
    check with confirmation, then --update (ratchet) and --accept, writing the file when it changed."""
    from ..analysis import device
    from ..measure.timing import TimingPolicy

    path = Path(opts.baseline)
    check_options(opts)
    exists = path.exists()
    if not exists and not opts.update:
        raise UserError(f"no baseline at {path}; create one with --update")
    if opts.accept and not (opts.reason or "").strip():
        raise UserError("--accept needs --reason TEXT (it is recorded in the baseline's history)")
    if opts.accept and not exists:
        raise UserError(f"--accept needs an existing baseline; {path} does not exist")
    base = Baseline.load(path) if exists else None
    fp = measurer.fingerprint()
    warnings: list[str] = []
    if base is not None:
        diff = environment_mismatch(base.fingerprint, fp)
        if diff and not opts.allow_env_mismatch:
            raise UserError(f"{path} was measured in another environment ({'; '.join(diff)}); compare anyway with "
                            "--allow-env-mismatch, or delete it and create a new baseline here with --update")
        if diff and (opts.update or opts.accept):
            raise UserError(f"{path} was measured in another environment; --update and --accept would mix the two "
                            "in one file: delete it and create a new baseline here with --update")
        if diff:
            warnings.append("the environment differs from the baseline's (compared anyway: --allow-env-mismatch): "
                            + "; ".join(diff))
        if opts.timer not in (None, "auto", base.timer):
            raise UserError(f"{path} was measured with the {base.timer!r} timer, not {opts.timer!r}: "
                            "different quantities cannot be compared")
    timer = base.timer if base is not None else (opts.timer or "auto")
    policy = opts.policy or (base.timing_policy() if base is not None else TimingPolicy())
    _check_policy(policy, "--samples/--min-samples" if opts.policy else f"the timing policy of {path}")
    cells = _plan(opts, base)
    if opts.accept:  # before measuring: a misspelt cell must not cost a whole gate run first
        for k in opts.accept:
            resolve_cell(k, sorted({c.key for c in cells} | set(base.cells)))
    ceilings = measurer.ceilings(sorted({c.workload.dtype for c in cells}))
    current = _one_environment(measurer.measure(cells, timer, policy, "gate"))
    extra: list[Measurement] = []  # more rounds for the cells whose baseline is (re)written
    if base is None:
        for _ in range(opts.repeats - 1):
            extra += _one_environment(measurer.measure(cells, timer, policy, "gate-baseline"), current)
    modes = {m.timer for m in current if m.ok}
    if base is not None and modes - {base.timer}:
        raise UserError(f"{path} was measured with the {base.timer!r} timer; this run used {', '.join(sorted(modes))}")
    if base is None and len(modes) > 1:
        raise UserError(f"the cells were timed with different timers ({', '.join(sorted(modes))}); a baseline keeps "
                        "one, so that every cell is compared with the same quantity: give --timer")
    if base is None and not modes:
        first = next((f"{Cell.of(m).key}: {m.status} {m.reason}" for m in current), "no cells")
        raise UserError(f"no cell measured ok, so no baseline was written ({first})")
    if base is None:
        base = Baseline.empty(fp, device.env_id(fp), next(iter(modes), timer), dataclasses.asdict(policy),
                              ceilings, date)
        creating = True
    else:
        creating = False
    normalize = None
    if opts.normalize:
        if ceilings and base.ceilings:
            normalize = ceilings
        else:
            warnings.append("--normalize: times NOT normalized: device ceilings are measured on a GPU only and "
                            f"{'this run' if not ceilings else 'the baseline'} has none")
    result = check(base, current, opts.threshold, opts.alpha, normalize, confirm=opts.confirm,
                   remeasure=lambda cs: _one_environment(measurer.measure(cs, timer, policy, "gate-confirm"), current),
                   warnings=warnings)
    result.baseline_path, result.created = str(path), creating
    if ceilings and base.ceilings and not creating:
        result.notes.append(_ceiling_drift(base.ceilings, ceilings))
    new, commit = base, repo_commit(path)
    if not creating and opts.repeats > 1 and (opts.update or opts.accept):
        now_ok = {Cell.of(m).key: Cell.of(m) for m in current if m.ok}
        moving = [r.key for r in result.cells if opts.update and r.verdict in (NEW, IMPROVEMENT)]
        moving += [resolve_cell(k, sorted(set(base.cells) | set(now_ok))) for k in opts.accept]
        todo = [now_ok[k] for k in dict.fromkeys(moving) if k in now_ok]
        for _ in range(opts.repeats - 1 if todo else 0):
            extra += _one_environment(measurer.measure(todo, timer, policy, "gate-baseline"), current)
    if opts.update:
        new, notes = ratchet(new, result.cells, current + extra, creating=creating, commit=commit, date=date)
        result.notes += notes
    if opts.accept:
        new, notes = accept(new, result.cells, current + extra, opts.accept, opts.reason, commit=commit, date=date)
        result.notes += notes
    if creating or new is not base:
        new.save(path)
        result.notes.append(f"wrote {path}")
    return result


def repo_commit(path: str | Path) -> str | None:
    """Short commit (git HEAD) of the repository that holds the baseline file, for its history: the change an
    entry belongs to. (The fingerprint's git_commit is attnbench's own checkout, None when it is installed.)
    None outside a git repository or without git; never raises."""
    import re
    import subprocess

    here = Path(path).resolve().parent
    while not here.is_dir():  # a new baseline's folder may not exist yet
        here = here.parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{4,40}", commit) else None


def check_options(opts: GateOptions) -> None:
    """The options' own errors (UserError), found before anything is measured."""
    if not 0 <= opts.threshold < 1:
        raise UserError(f"--threshold must be a fraction in [0, 1), e.g. 0.03 for 3%, got {opts.threshold!r}")
    if not 0 < opts.alpha < 1:
        raise UserError(f"--alpha must be in (0, 1), got {opts.alpha!r}")
    if opts.confirm < 0:
        raise UserError(f"--confirm must be >= 0, got {opts.confirm!r}")
    if opts.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {opts.repeats}")


def _check_policy(policy: Any, which: str) -> None:
    """A timing policy whose measurements can end with fewer batches than a verdict needs is refused: a cell
    that slows down into the time limit would then get no verdict, and the gate would pass it."""
    from ..analysis.rounds import MIN_ROUNDS

    least = min(policy.min_samples, policy.min_batches)
    if least < MIN_ROUNDS:
        raise UserError(f"{which}: a measurement can stop after {least} samples or batches, and the "
                        f"gate tests batches and needs at least {MIN_ROUNDS} per measurement (use --samples and "
                        f"--min-samples of at least {MIN_ROUNDS}; the default takes 100 samples in 10 batches)")


def _one_environment(ms: list[Measurement], also: list[Measurement] = ()) -> list[Measurement]:
    """The measurements `ms`, refused (UserError) when they and `also` come from more than one environment
    (workers of different GPUs or software): a gate compares one environment with its baseline, never a pool."""
    envs = sorted({m.env_id for m in list(ms) + list(also) if m.env_id})
    if len(envs) > 1:
        raise UserError(f"gate: the measurements come from {len(envs)} environments ({', '.join(envs)}); a gate "
                        "compares one environment with its baseline: use workers of one GPU model and software")
    return ms


def _ceiling_drift(base: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    parts = []
    if base.get("gbps") and now.get("gbps"):
        parts.append(f"copy {now['gbps'] / base['gbps']:.3f}x")
    for d, v in sorted((now.get("tflops") or {}).items()):
        if v and (base.get("tflops") or {}).get(d):
            parts.append(f"matmul {d} {v / base['tflops'][d]:.3f}x")
    return "device ceilings now/baseline: " + (", ".join(parts) if parts else "not comparable")


def append_step_summary(text: str, env: Mapping[str, str] | None = None) -> bool:
    """Append the Markdown to $GITHUB_STEP_SUMMARY when it is set (GitHub Actions); True if written."""
    target = (env if env is not None else os.environ).get("GITHUB_STEP_SUMMARY")
    if not target:
        return False
    with open(target, "a", encoding="utf-8") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    return True


# -------------------------------------------------------------------------------------------------
# Measuring through the runner (the CLI)
# -------------------------------------------------------------------------------------------------

class RunnerMeasurer:
    """Measures through runner.run into the store (runs named 'gate' and 'gate-confirm'), so history
    pages see gate runs; `record(result)` stores the verdicts under kv namespace 'gate', key run id.
    With a distributed executor (execute.open_executor) the cells run on its workers, which must all be of
    one environment: a gate compares one environment with its baseline."""

    def __init__(self, store: Any, device: str, *, timer: Any = None, progress: bool = False, executor: Any = None):
        self.store, self.device, self.timer, self.progress = store, device, timer, progress
        self.executor = executor
        self.run_ids: list[int] = []
        self._worker_env: Any = None

    @property
    def _distributed(self) -> bool:
        return self.executor is not None and self.executor.distributed

    def _workers(self) -> Any:
        """The workers' one environment (a WorkerInfo); refused when they hold several."""
        if self._worker_env is None:
            import uuid

            from ..execute.sweep import timer_factory
            from ..execute.worker import Setup

            infos = self.executor.probe(Setup(token=uuid.uuid4().hex[:12], device=self.device,
                                              timer_factory=timer_factory(self.timer)))
            envs = sorted({i.env_id for i in infos})
            if len(envs) > 1:
                raise UserError(f"gate: the workers hold {len(envs)} environments ({', '.join(envs)}); a gate "
                                "compares one environment with its baseline: use workers of one GPU model and "
                                "software stack")
            self._worker_env = infos[0]
        return self._worker_env

    def fingerprint(self) -> dict[str, Any]:
        if self._distributed:
            return self._workers().fingerprint
        from ..analysis import device

        return device.fingerprint(self.device)

    def ceilings(self, dtypes: list[str]) -> dict[str, Any] | None:
        if not self.device.startswith("cuda"):
            return None  # CPU figures are too rough to normalize by
        from ..analysis import device

        keys = [d for d in dtypes if d in ("fp16", "bf16", "fp32")] or ["fp16"]
        if self._distributed:  # measured where the GPUs are
            return self.executor.run_once(device.measure_ceilings, self.device, tuple(keys))
        return device.measure_ceilings(self.device, tuple(keys))

    def measure(self, cells: list[Cell], timer: str, policy: Any, name: str) -> list[Measurement]:
        from ..execute.sweep import run_sweep
        from ..measure.runner import RunConfig

        if timer == "auto":  # one mode for every cell: auto would pick graph for some and cold for others
            timer = "cold" if self.device.startswith("cuda") else "host"
        out: list[Measurement] = []
        gone = self._unresolved({c.impl for c in cells})
        for c in cells:  # a baseline's impl that is gone is reported on its cells; the other cells still run
            if c.impl in gone:
                out.append(Measurement(workload=c.workload, impl=c.impl, params=dict(c.params), device=self.device,
                                       timer=timer, **gone[c.impl]))
        cells = [c for c in cells if c.impl not in gone]
        # One run per set of workloads shared by some (impl, params): exactly the cells asked for.
        groups: dict[tuple[str, ...], dict[str, Any]] = {}
        for c in cells:
            g = groups.setdefault(tuple(x.workload.key for x in cells if (x.impl, x.params) == (c.impl, c.params)),
                                  {"workloads": [], "params": {}})
            if c.workload not in g["workloads"]:
                g["workloads"].append(c.workload)
            sets = g["params"].setdefault(c.impl, [])
            if c.params not in sets:
                sets.append(c.params)
        for g in groups.values():
            config = RunConfig(workloads=g["workloads"], impls=list(g["params"]), device=self.device, timer=timer,
                               policy=policy, name=name, params=g["params"])
            run_id = run_sweep(config, self.store, self.executor or "inproc", timer=self.timer,
                               progress=self.progress)
            self.run_ids.append(run_id)
            out += self.store.measurements(run_id)
        return out

    @staticmethod
    def _unresolved(names: set[str]) -> dict[str, dict[str, str]]:
        """{impl: status and reason} for the names that no longer resolve: a registered name that is gone
        (renamed or removed: unsupported, so its cells are missing) or a plugin that no longer imports (error:
        its cells are broken). The runner would stop the whole gate on either."""
        from ..impls import resolve

        out = {}
        for name in sorted(names):
            try:
                resolve(name)
            except UserError as exc:
                out[name] = ({"status": "error", "reason": str(exc)} if ":" in name else
                             {"status": "unsupported", "reason": IMPL_GONE.format(name=name)})
        return out

    def record(self, result: GateResult) -> None:
        for run_id in self.run_ids:
            self.store.put("gate", str(run_id), result.to_dict())
