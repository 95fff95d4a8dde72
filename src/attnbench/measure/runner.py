"""Executes a sweep: workload x impl -> supports? -> correctness -> timing -> store, one cell at a time."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..analysis import device as devmod
from ..analysis.roofline import ceilings_for
from ..errors import UserError
from ..impls import Impl, Inputs, Unsupported, footprint_bytes, make_call, make_inputs, resolve_many
from ..spec import Workload
from ..store import Measurement, Store, params_key
from . import repeats
from .correctness import check
from .cuda_timers import GraphCaptureError
from .timers import AutoTimer
from .timing import (Timer, TimingPolicy, TimingResult, make_timer, measure, measure_interleaved, split_throttled,
                     throttled)


@dataclass
class RunConfig:
    workloads: list[Workload]
    impls: list[str | Impl]              # names, or Impl objects (impls.Alias): stored by name
    device: str | None = None            # None: the GPU if there is one, else the CPU
    timer: str = "auto"                  # auto: graph or cold by a probe on a GPU (AutoTimer), host on a CPU
    policy: TimingPolicy = field(default_factory=TimingPolicy)
    seed: int = 0
    name: str = ""
    params: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # impl -> param sets to run
    interleave: bool = False             # time a workload's impls round by round (measure_interleaved)
    discard_throttled: bool = False      # drop samples whose clock fell > 10% below the run's typical
    repeats: int = 1                     # the sweep measured this many times, repeat-major (measure.repeats)

    def to_dict(self) -> dict[str, Any]:
        policy = dataclasses.asdict(self.policy)
        if policy.get("min_batches") == TimingPolicy().min_batches:
            del policy["min_batches"]  # the default: configurations (and their hashes) read as before it existed
        d = {
            "workloads": [w.key for w in self.workloads],
            "impls": [getattr(i, "name", i) for i in self.impls],
            "device": self.device,
            "timer": self.timer,
            "policy": policy,
            "seed": self.seed,
            "params": self.params,
        }
        d.update({k: True for k in ("interleave", "discard_throttled") if getattr(self, k)})  # old hashes hold
        if self.repeats != 1:
            d["repeats"] = self.repeats
        return d

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:500]


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


@dataclass
class Prepared:
    """A cell ready to time: built, first call taken (compile time), correct, backend known."""

    impl: Impl
    call: Callable[[], Any]
    inputs: Inputs
    base: dict[str, Any]
    compile_ms: float
    check: Any
    backend: str
    peak: float | None
    extra: dict[str, Any]


class ClockTrack:
    """The run's typical SM clock: the median of its measurements' median clocks (this one included)."""

    def __init__(self) -> None:
        self.medians: list[float] = []

    def typical(self, clocks) -> float | None:
        from ..analysis.stats import median

        return median(self.medians + [median(clocks)]) if clocks else None

    def add(self, clocks) -> None:
        from ..analysis.stats import median

        if clocks:
            self.medians.append(median(clocks))


HOST_SHARE = 0.75   # of the host's available memory a CPU cell's own tensors may take
SHIFT_P = 0.01      # a level shift within a measurement is flagged at this p (rounds.batch_shift) ...
SHIFT_MIN = 0.03    # ... when it moves the median by at least this much (the gate's threshold)


def host_memory_problem(workload: Workload, device: str) -> str | None:
    """On the CPU, why a cell is not attempted: its tensors alone would take most of the available memory (a
    GPU-sized preset run on a CPU would push the machine into swap or the OOM killer, losing the sweep). A GPU
    reports its own out-of-memory errors, which the sweep records and survives."""
    if not device.startswith("cpu"):
        return None
    import psutil

    need, avail = footprint_bytes(workload), psutil.virtual_memory().available
    if need <= HOST_SHARE * avail:
        return None
    return (f"its tensors alone need about {need / 2**30:.1f} GiB, more than {HOST_SHARE:.0%} of the "
            f"{avail / 2**30:.1f} GiB this machine has available; not attempted")


def prepare_cell(impl: Impl, workload: Workload, device: str, timer_mode: str,
                 params: dict[str, Any] | None = None, seed: int = 0, env_id: str = "",
                 inputs: Inputs | None = None) -> Measurement | Prepared:
    """Everything before timing; a Measurement when the cell ends here (unsupported, incorrect, failed).
    `inputs` (another cell's) are timed on instead of fresh ones from make_inputs."""
    params = params or {}
    base = dict(workload=workload, impl=impl.name, params=params, env_id=env_id, device=device, timer=timer_mode)
    try:
        why = impl.supports(workload, device)
    except Exception as exc:  # a plugin's supports() is its own code: it fails as the cell, not the sweep
        return _failed(base, "supports()", exc, device)
    if why:
        return Measurement(status="unsupported", reason=why, **base)
    why = host_memory_problem(workload, device) if inputs is None else None
    if why:
        return Measurement(status="oom", reason=why, **base)
    stage = "build"
    try:
        inputs = make_inputs(workload, device, seed) if inputs is None else inputs
        t0 = time.perf_counter()
        fn = impl.build(workload, device, params)
        call = make_call(fn, workload, inputs)
        stage = "first call"
        call()
        _sync(device)
        compile_ms = (time.perf_counter() - t0) * 1e3
        with impl.context():
            stage = "correctness check"
            result = check(fn, workload, device)
            extra: dict[str, Any] = {"check_seed": result.seed, "checked_batch": result.checked_batch,
                                     "errors": result.details}
            if result.note:
                extra["check_note"] = result.note
            if not result.ok:
                return Measurement(status="incorrect", reason=result.reason, rel_err=result.rel_err,
                                   tolerance=result.tolerance, compile_ms=compile_ms, extra=extra, **base)
            stage = "backend detection"
            backend, kernels = impl.backend(fn, inputs, device)
            if kernels:
                extra["kernels"] = kernels
            peak = devmod.peak_memory_mb(call, device)
    except Unsupported as exc:
        return Measurement(status="unsupported", reason=str(exc), **base)
    except Exception as exc:  # the sweep goes on; the reason is kept
        return _failed(base, stage, exc, device)
    return Prepared(impl, call, inputs, base, compile_ms, result, backend, peak, extra)


def _failed(base: dict[str, Any], stage: str, exc: BaseException, device: str, **kw: Any) -> Measurement:
    _free(device)
    if _is_oom(exc):
        return Measurement(status="oom", reason=f"out of memory during {stage}", **kw, **base)
    return Measurement(status="error", reason=f"{stage}: {_one_line(exc)}", **kw, **base)


def invalid_samples(xs) -> str:
    """'' when every sample is a finite time above zero, else what is wrong, e.g. '2 invalid samples of 50 (1 NaN,
    1 inf)': an infinite or NaN reading, a zero (under the timer's resolution) or a negative one (a clock
    that went backwards) is not a time, and a median over it would be reported as one."""
    kinds = {"NaN": 0, "inf": 0, "zero": 0, "negative": 0}
    for x in xs:
        kind = ("NaN" if x != x else "inf" if math.isinf(x) else "zero" if x == 0 else "negative" if x < 0
                else None)
        if kind:
            kinds[kind] += 1
    n = sum(kinds.values())
    if not n:
        return ""
    what = ", ".join(f"{c} {k}" for k, c in kinds.items() if c)
    return f"{n} invalid sample{'s' if n > 1 else ''} of {len(xs)} ({what})"


def level_shift(samples_ms, sizes) -> dict[str, Any]:
    """{} or, when the time changed during the measurement (warm-up not over, a clock or power change), the
    change (after / before - 1), its p, the batch it came after and the batches: the median of such samples
    is of two levels, and the report says so instead of averaging them silently."""
    from ..analysis.rounds import batch_shift

    if len(samples_ms) < 6:
        return {}
    s = batch_shift(samples_ms, sizes)
    if s.p >= SHIFT_P or abs(s.change) < SHIFT_MIN:
        return {}
    return {"change": round(s.change, 4), "p": round(s.p, 6), "after_batch": s.at, "batches": s.batches}


def finish_cell(p: Prepared, timing: TimingResult, clocks: ClockTrack | None = None,
                discard_throttled: bool = False) -> Measurement:
    """A prepared cell and its timing -> the ok Measurement; throttling is flagged (and, on request,
    throttled samples are moved to extra['discarded_throttled'], never dropped silently)."""
    bad = invalid_samples(timing.samples_ms)
    if bad:
        return Measurement(status="error", reason=f"timer returned {bad}", compile_ms=p.compile_ms, **p.base)
    extra = dict(p.extra, warmup_calls=timing.warmup_calls, sampling_ms=round(timing.sampling_ms, 3))
    if timing.info:
        extra["timing"] = timing.info
    typical = clocks.typical(timing.clocks_mhz) if clocks is not None else None
    if clocks is not None:
        clocks.add(timing.clocks_mhz)
    if typical:
        extra["typical_mhz"] = typical
        if throttled(timing.clocks_mhz, typical):
            extra["throttled"] = True
            if discard_throttled:  # the kept samples' batch sizes and precision come with them
                timing, dropped = split_throttled(timing, typical)
                extra["discarded_throttled"] = dropped
    if timing.precision is not None and math.isfinite(timing.precision):
        extra["precision"] = timing.precision
    sizes = list(timing.batch_sizes)
    shift = level_shift(timing.samples_ms, sizes if sum(sizes) == len(timing.samples_ms) else None)
    if shift:
        extra["shift"] = shift
    return Measurement(
        status="ok", samples_ms=tuple(timing.samples_ms), host_ms=tuple(timing.host_ms),
        clocks_mhz=tuple(timing.clocks_mhz), batch_sizes=tuple(sizes) if sum(sizes) == len(timing.samples_ms)
        else (), stop_reason=timing.stop_reason, compile_ms=p.compile_ms,
        warmup_ms=timing.warmup_ms, rel_err=p.check.rel_err, tolerance=p.check.tolerance, backend=p.backend,
        peak_mem_mb=p.peak, extra=extra, **p.base)


def choose_timer(auto: AutoTimer, cells: list[Prepared], mode: str | None = None, why: str = "") -> Timer:
    """The AutoTimer's pick for cells timed together (one mode for all), recorded in each cell: its timer
    is the mode used, extra['timer_choice'] the probe and the rule. `mode` forces a mode (a fallback)."""
    if mode is None:
        probes = [auto.probe(p.call) for p in cells]
        mode, info = auto.choose(probes)
        for p, ms in zip(cells, probes):
            p.extra["timer_choice"] = dict(info, probe_ms=round(ms, 6))
    for p in cells:
        p.base["timer"] = mode
        if why:
            p.extra.setdefault("timer_choice", {}).update(chose=mode, fallback=why)
        auto.release(p.call, mode)
    return auto.timer(mode)


def measure_cell(impl: Impl, workload: Workload, device: str, timer: Timer | AutoTimer, policy: TimingPolicy,
                 params: dict[str, Any] | None = None, seed: int = 0, env_id: str = "", *,
                 clocks: ClockTrack | None = None, discard_throttled: bool = False) -> Measurement:
    """One (workload, impl, params) cell: every failure becomes a status with a reason. With an AutoTimer
    the cell is probed and timed by the mode it picks; a call that cannot be captured in a CUDA graph is
    then timed with cold instead, and the fallback is recorded."""
    p = prepare_cell(impl, workload, device, timer.mode, params, seed, env_id)
    if isinstance(p, Measurement):
        return p
    try:
        with impl.context():
            chosen = choose_timer(timer, [p]) if isinstance(timer, AutoTimer) else timer
            try:
                timing = measure(chosen, p.call, policy)
            except GraphCaptureError as exc:
                if not isinstance(timer, AutoTimer):
                    raise
                chosen = choose_timer(timer, [p], "cold", f"graph capture failed: {_one_line(exc)}")
                timing = measure(chosen, p.call, policy)
    except KeyboardInterrupt as exc:  # the completed batches become the cell, stop reason 'interrupted'
        exc.measurements = [finish_cell(p, r, clocks, discard_throttled)
                            for r in getattr(exc, "timings", {}).values()]
        raise
    except Exception as exc:
        return _failed(p.base, "timing", exc, device, compile_ms=p.compile_ms)
    return finish_cell(p, timing, clocks, discard_throttled)


def measure_together(cells: list[Prepared], device: str, timer: Timer | AutoTimer, policy: TimingPolicy,
                     seed: int = 0, *, clocks: ClockTrack | None = None,
                     discard_throttled: bool = False) -> list[Measurement]:
    """The timing phase of one workload's prepared cells, interleaved round by round (--interleave). With
    an AutoTimer all cells get one mode (compared cells share a timer); if graph capture fails for any,
    the whole group is timed again with cold."""
    keys = [f"{i}:{p.base['impl']}" for i, p in enumerate(cells)]
    errors: dict[str, BaseException] = {}
    try:
        with contextlib.ExitStack() as stack:
            for p in cells:
                stack.enter_context(p.impl.context())
            chosen = choose_timer(timer, cells) if isinstance(timer, AutoTimer) else timer
            calls = dict(zip(keys, (p.call for p in cells)))
            results = measure_interleaved(chosen, calls, policy, seed, errors)
            failed = next((e for e in errors.values() if isinstance(e, GraphCaptureError)), None)
            if isinstance(timer, AutoTimer) and failed is not None:
                errors.clear()
                chosen = choose_timer(timer, cells, "cold", f"graph capture failed: {_one_line(failed)}")
                results = measure_interleaved(chosen, calls, policy, seed, errors)
    except KeyboardInterrupt as exc:
        timings = getattr(exc, "timings", {})
        exc.measurements = [finish_cell(p, timings[k], clocks, discard_throttled) for k, p in zip(keys, cells)
                            if k in timings]
        raise
    except Exception as exc:
        return [_failed(p.base, "timing", exc, device, compile_ms=p.compile_ms) for p in cells]
    return [_failed(p.base, "timing", errors[k], device, compile_ms=p.compile_ms) if k in errors
            else finish_cell(p, results[k], clocks, discard_throttled) for k, p in zip(keys, cells)]


def workload_groups(cells: list[tuple[Workload, Impl, dict[str, Any]]]) -> list[list[tuple[Workload, Impl, dict]]]:
    """The cells split by workload, in first-seen order: the unit an executor sends to one worker."""
    groups: dict[str, list] = {}
    for c in cells:
        groups.setdefault(c[0].key, []).append(c)
    return list(groups.values())


def cell_text(cells: list[tuple[Workload, Impl, dict[str, Any]]]) -> str:
    """What the progress bar says while these cells (one workload's) are being measured."""
    w, impl, _ = cells[0]
    return f"{w.label} · {impl.name}" if len(cells) == 1 else f"{w.label} · {len(cells)} impls interleaved"


def measure_workload(cells: list[tuple[Workload, Impl, dict[str, Any]]], device: str, timer: Timer,
                     policy: TimingPolicy, seed: int = 0, env_id: str = "", *, interleave: bool = False,
                     clocks: ClockTrack | None = None, discard_throttled: bool = False,
                     on_start: Callable[[list], None] | None = None) -> Iterator[Measurement]:
    """One workload's cells, measured in this process and yielded one by one as each is taken; nothing is
    stored here (the caller commits: the runner, or an executor's client for a worker's results).

    With interleave, the cells are prepared in turn, all on the first prepared cell's inputs (so that no
    side gets other tensors, addresses or alignment, than another), then timed together round by round.
    `on_start(cells)` is told which cells are about to run: the progress bar, a worker's journal."""
    opts = dict(clocks=clocks, discard_throttled=discard_throttled)
    if not interleave:
        for w, impl, params in cells:
            if on_start:
                on_start([(w, impl, params)])
            yield measure_cell(impl, w, device, timer, policy, params, seed, env_id, **opts)
        return
    ready: list[Prepared] = []
    for w, impl, params in cells:
        if on_start:
            on_start([(w, impl, params)])
        p = prepare_cell(impl, w, device, timer.mode, params, seed, env_id,
                         inputs=ready[0].inputs if ready else None)
        if isinstance(p, Measurement):
            yield p
        else:
            ready.append(p)
    if ready:
        if on_start:
            on_start([(p.base["workload"], p.impl, p.base["params"]) for p in ready])
        yield from measure_together(ready, device, timer, policy, seed, **opts)


def annotate(m: Measurement, ceilings) -> Measurement:
    """Add the roofline placement and plausibility flag (metrics.assess) to an ok measurement's extra,
    so compare, tune and gate see an implausible figure as such."""
    if not m.ok or ceilings is None:
        return m
    from ..analysis.metrics import assess
    from ..analysis.stats import median

    host = median(m.host_ms) if m.host_ms and m.timer != "host" else None
    roof = assess(m.workload, median(m.samples_ms), host, ceilings)
    extra = dict(m.extra, plausibility=roof["plausibility"], regime=roof["regime"],
                 pct_peak=roof["pct_peak"], pct_bound=roof["pct_bound"])
    if roof["plausibility_reason"]:
        extra["plausibility_reason"] = roof["plausibility_reason"]
    return dataclasses.replace(m, extra=extra)


class _Progress:
    """A rich progress bar on stderr (workload, impl, ETA); silent when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("starting", total=total)

    def update(self, text: str) -> None:
        if self.bar:
            self.bar.update(self.task, description=text)

    def advance(self) -> None:
        if self.bar:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return devmod.detect_device()
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: torch sees no CUDA GPU here")
    elif device != "cpu":
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    return device


def run(config: RunConfig, store: Store, *, timer: Timer | AutoTimer | None = None, resume: bool = False,
        progress: bool | None = None, on_measurement: Callable[[Measurement], None] | None = None) -> int:
    """Measure every cell of the config and store each as soon as it is taken. Returns the run id.

    With `config.repeats` N > 1 the sweep is measured N times, repeat-major: every cell once, then every
    cell again (later passes in a shuffled order, seeded), each pass with fresh builds, inputs (seed + pass)
    and interleaving order; a cell's repeats are merged into its one measurement (measure.repeats), which
    is stored again after each pass. A cell that is not ok is not measured again.
    With resume, the newest unfinished run of the same configuration continues, skipping stored cells
    (and, with repeats, the repeats they already hold); a cell an interruption cut short (stored with its
    completed batches, stop reason 'interrupted') is measured again.
    `--timer auto` (the default) on a GPU picks graph or cold per cell (AutoTimer); on a CPU it is host.
    """
    device = resolve_device(config.device)
    impls = resolve_many(config.impls)
    if not config.workloads:
        raise UserError("the sweep has no workloads")
    if config.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {config.repeats}")
    if timer is None and config.timer == "auto" and device.startswith("cuda"):
        timer = AutoTimer(lambda mode: make_timer(mode, device))
    timer = timer or make_timer(config.timer, device)
    fp = devmod.fingerprint(device)
    eid = devmod.env_id(fp)
    store.add_environment(eid, fp)
    ceilings = ceilings_for(fp, store.get("ceilings", eid))
    chash = config.hash()
    run_id = None
    stored: dict[tuple[str, str, str], Measurement] = {}
    partial: dict[tuple[str, str, str], Measurement] = {}  # cells an interruption cut short: measured again
    if resume:
        previous = store.resumable_run(chash)
        if previous is not None:
            run_id = previous.run_id
            stored = {m.cell: m for m in store.measurements(run_id)}
            partial = {c: m for c, m in stored.items() if m.stop_reason == "interrupted"}
            stored = {c: m for c, m in stored.items() if c not in partial}
            store.reopen_run(run_id)
    if run_id is None:
        cfg = config.to_dict()
        cfg["device"] = device
        cfg["timer_mode"] = timer.mode
        run_id = store.start_run(eid, cfg, chash, config.name)

    cells = [(w, impl, p) for w in config.workloads for impl in impls
             for p in config.params.get(impl.name, [{}])]
    show = sys.stderr.isatty() if progress is None else progress
    total = config.repeats
    bar = _Progress(len(cells) * total, show)
    track = ClockTrack()

    def key(cell) -> tuple[str, str, str]:
        w, impl, params = cell
        return (w.key, impl.name, params_key(params))

    def emit(m: Measurement, rep: int) -> None:
        if total > 1:
            m = repeats.merge(stored.get(m.cell), m, rep, config.seed + rep)
        m = annotate(m, ceilings)
        stored[m.cell] = m
        cut = partial.pop(m.cell, None)
        if cut is not None and cut.timer != m.timer:  # same timer: replaced in place by add
            store.remove(run_id, cut)
        store.add(run_id, m)
        if on_measurement:
            on_measurement(m)
        bar.advance()
        _free(device)

    def pending(group, rep: int):
        """The cells of a group that still need pass `rep`: not stored yet (first pass), or ok with `rep`
        repeats; the others only advance the bar."""
        out = []
        for cell in group:
            m = stored.get(key(cell))
            if repeats.repeats_done(m) != rep or (m is not None and not m.ok):
                bar.advance()
            else:
                out.append(cell)
        return out

    try:
        for rep in range(total):
            order = random.Random(config.seed + rep)
            rep_text = f" · repeat {rep + 1}/{total}" if total > 1 else ""
            groups = workload_groups(cells)  # cells are workload-major
            if rep:
                order.shuffle(groups)
            for group in groups:
                todo = pending(group, rep)
                if rep and not config.interleave:
                    order.shuffle(todo)
                for m in measure_workload(todo, device, timer, config.policy, config.seed + rep, eid,
                                          interleave=config.interleave, clocks=track,
                                          discard_throttled=config.discard_throttled,
                                          on_start=lambda some: bar.update(cell_text(some) + rep_text)):
                    emit(m, rep)
                if config.interleave:
                    _free(device)  # the group's shared inputs are released only here
    except KeyboardInterrupt as exc:
        bar.close()
        # The completed batches of the cells in progress, stop reason 'interrupted' (--resume measures them
        # again). A later pass of --repeats is not kept: the cell's earlier passes are, and resume retakes it.
        for m in getattr(exc, "measurements", ()) if total == 1 else ():
            m = annotate(m, ceilings)
            cut = partial.pop(m.cell, None)
            if cut is not None and cut.timer != m.timer:
                store.remove(run_id, cut)
            store.add(run_id, m)
        store.finish_run(run_id, "interrupted")
        raise
    bar.close()
    store.finish_run(run_id, "complete")
    return run_id
