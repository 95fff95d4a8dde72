"""Autotuning: the fastest correct impl and params per workload, cached per environment (the search on one
workload: `search`; the data model: `model`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from ..errors import UserError
from ..measure.timing import TimingPolicy  # noqa: F401  (the CLI builds its policy from here)
from .model import (  # noqa: F401
    CACHE_NAMESPACE,
    EXHAUSTIVE_POLICY,
    REJECTED,
    Candidate,
    RacingPolicy,
    TuneConfig,
    TuneResult,
    WorkloadResult,
    _label,
    _space,
    cache_key,
    candidate_names,
    cli_impls,
)
from .search import search_workload


def _ceilings(fp: dict[str, Any], store, eid: str):
    from ..analysis.roofline import ceilings_for

    return ceilings_for(fp, store.get("ceilings", eid))


def tune(config: TuneConfig, store, *, timer=None, fingerprint: dict[str, Any] | None = None, ceilings=None,
         progress: Callable[[str], None] | None = None, executor=None) -> TuneResult:
    """Search every workload (cached per environment, workload and candidate list unless force). With a
    distributed executor (execute.open_executor), each workload's search is a task on a worker."""
    if executor is not None and executor.distributed:
        return _tune_on_workers(config, store, executor, timer, progress)
    from ..analysis import device as devmod
    from ..impls import resolve_many
    from ..measure.runner import resolve_device
    from ..measure.timing import make_timer

    if not config.workloads:
        raise UserError("nothing to tune: no workloads")
    device = resolve_device(config.device)
    timer = timer or make_timer(config.timer, device)
    fp = fingerprint if fingerprint is not None else devmod.fingerprint(device)
    eid = devmod.env_id(fp)
    store.add_environment(eid, fp)
    impls = resolve_many(candidate_names(config.impls, config.baseline))
    ceil = ceilings if ceilings is not None else _ceilings(fp, store, eid)
    t_start = timer.now_ms()
    out = []
    for i, w in enumerate(config.workloads):
        labels = [_label(impl.name, p) for impl in impls for p in _space(impl, w, device, config)]
        key = cache_key(eid, w, labels, config, timer.mode)
        hit = None if config.force else store.get(CACHE_NAMESPACE, key)
        if hit is not None:
            result = WorkloadResult.from_dict(hit, cached=True)
        else:
            budget = config.budget_s
            if config.budget_total_s is not None:
                left = config.budget_total_s * 1e3 - (timer.now_ms() - t_start)
                share = max(0.0, left / 1e3 / (len(config.workloads) - i))
                budget = share if budget is None else min(budget, share)
            result = search_workload(w, impls, device, timer, config, eid, budget, ceil)
            store.put(CACHE_NAMESPACE, key, result.to_dict())
        if progress:
            progress(_progress_line(result))
        out.append(result)
    settings = {"budget_s": config.budget_s, "budget_total_s": config.budget_total_s,
                "racing": dataclasses.asdict(config.racing), "policy": dataclasses.asdict(config.policy),
                "impls": [i.name for i in impls], "device": device}
    return TuneResult(env_id=eid, fingerprint=fp, mode=config.mode, timer=timer.mode, baseline=config.baseline,
                      workloads=tuple(out), settings=settings)


def _search_on_worker(args: tuple) -> WorkloadResult:
    """One workload's search on a worker, with the worker's timer and impls for this tune (execute.worker)."""
    from ..execute.worker import DEATHS, MEASURING, Journal, LostTwice, lost_reason, session

    setup, w, config, budget, ceil = args
    journal = Journal(setup)
    earlier = journal.earlier()
    if len(earlier) >= DEATHS:  # each earlier attempt died with its worker: a scheduler allowing more retries
        raise LostTwice(lost_reason(len(earlier), earlier[-1][0]))
    journal.note([])  # this attempt, for the next one to count if it dies
    with MEASURING:
        st = session(setup)
        return search_workload(w, st["impls"], st["device"], st["timer"], config, st["info"].env_id, budget, ceil)


def _tune_on_workers(config: TuneConfig, store, ex, timer, progress) -> TuneResult:
    """tune() with each uncached workload's search a task on a worker of one environment; results are
    cached here as they arrive. A search that kills its worker twice leaves that workload untuned (not
    cached) with the reason, and the sweep goes on. --budget-total is shared out over the workers."""
    import uuid

    from ..execute.sweep import timer_factory
    from ..execute.worker import Setup
    from ..impls import resolve_many

    if not config.workloads:
        raise UserError("nothing to tune: no workloads")
    factory = timer_factory(timer)
    names = candidate_names(config.impls, config.baseline)
    impls = resolve_many(names)
    token = uuid.uuid4().hex[:12]
    setup = Setup(token=token, impls=tuple(names), device=config.device, timer=config.timer,
                  timer_factory=factory, topic=f"attnbench-tune-{token}")
    workers = ex.probe(setup)
    envs = sorted({w.env_id for w in workers})
    if len(envs) > 1:
        raise UserError(f"tune: the workers hold {len(envs)} environments ({', '.join(envs)}); a dispatch table "
                        "is for one: tune on workers of one GPU model and software stack")
    fp, eid, device, mode = workers[0].fingerprint, envs[0], workers[0].device, workers[0].timer_mode
    store.add_environment(eid, fp)
    ceil = _ceilings(fp, store, eid)
    results: dict[int, WorkloadResult] = {}
    todo = []
    for i, w in enumerate(config.workloads):
        labels = [_label(impl.name, p) for impl in impls for p in _space(impl, w, device, config)]
        key = cache_key(eid, w, labels, config, mode)
        hit = None if config.force else store.get(CACHE_NAMESPACE, key)
        if hit is not None:
            results[i] = WorkloadResult.from_dict(hit, cached=True)
            if progress:
                progress(_progress_line(results[i]))
        else:
            todo.append((i, w, key))
    budget = config.budget_s
    if config.budget_total_s is not None and todo:
        share = config.budget_total_s * len(workers) / len(todo)
        budget = share if budget is None else min(budget, share)
    pending, futures = {}, []
    for i, w, key in todo:
        fut = ex.submit(_search_on_worker, (setup, w, dataclasses.replace(config, workloads=[w]), budget, ceil),
                        "attnbench-tune")
        pending[fut.key] = (i, w, key)
        futures.append(fut)
    try:
        for fut in ex.as_completed(futures):
            i, w, key = pending.pop(fut.key)
            out = ex.outcome(fut)
            if out.result is not None:
                store.put(CACHE_NAMESPACE, key, out.result.to_dict())
                results[i] = out.result
            else:
                results[i] = WorkloadResult(workload=w, mode=config.mode, candidates=(), chosen=None,
                                            stop_reason="worker-lost" if out.lost else "error", rounds=0, cost={},
                                            speedup=None, env_id=eid, notes=(f"search: {out.lost or out.failed}",))
            fut.release()
            if progress:
                progress(_progress_line(results[i]))
    except BaseException:
        ex.cancel([f for f in futures if not f.done()])
        raise
    settings = {"budget_s": config.budget_s, "budget_total_s": config.budget_total_s,
                "racing": dataclasses.asdict(config.racing), "policy": dataclasses.asdict(config.policy),
                "impls": names, "device": device, "executor": ex.name, "workers": len(workers)}
    return TuneResult(env_id=eid, fingerprint=fp, mode=config.mode, timer=mode, baseline=config.baseline,
                      workloads=tuple(results[i] for i in range(len(config.workloads))), settings=settings)


def _progress_line(r: WorkloadResult) -> str:
    win = r.winner
    what = f"{win.label} {win.median_ms:.4g} ms" if win else "no correct candidate"
    src = "cached" if r.cached else f"{r.stop_reason}, {r.cost.get('wall_s', 0):.1f} s"
    return f"{r.workload.label}: {what} ({src})"


# ---------------------------------------------------------------------------------------------
# Small parsers for the CLI
# ---------------------------------------------------------------------------------------------

def parse_duration(text: str | None, what: str = "--budget") -> float | None:
    """'60s', '2m', '500ms', '1h' or a plain number of seconds -> seconds."""
    if text is None:
        return None
    t = str(text).strip().lower()
    for suffix, factor in (("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if t.endswith(suffix):
            t, scale = t[: -len(suffix)], factor
            break
    else:
        scale = 1.0
    try:
        value = float(t) * scale
    except ValueError:
        raise UserError(f"{what}: expected a duration like 60s, 2m or 500ms, got {text!r}") from None
    if value < 0 or not math.isfinite(value):
        raise UserError(f"{what} must be a non-negative duration, got {text!r}")
    return value


def parse_ms(text: str, what: str = "--latency-budget") -> float:
    """'2ms', '0.5ms', '1s' or a plain number of milliseconds -> milliseconds."""
    t = str(text).strip().lower()
    if t.endswith("ms"):
        return _positive(t[:-2], text, what)
    if t.endswith("us"):
        return _positive(t[:-2], text, what) / 1e3
    if t.endswith("s"):
        return _positive(t[:-1], text, what) * 1e3
    return _positive(t, text, what)


def _positive(t: str, text: str, what: str) -> float:
    try:
        v = float(t)
    except ValueError:
        raise UserError(f"{what}: expected a time like 2ms, got {text!r}") from None
    if not v > 0:
        raise UserError(f"{what} must be positive, got {text!r}")
    return v


def expand_ellipsis(text: str | None) -> str | None:
    """'1,2,4,...,256' -> '1,2,4,8,16,32,64,128,256' (geometric when the two values before '...' have a
    ratio, else arithmetic); lists without '...' pass through."""
    if text is None or "..." not in text:
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    i = parts.index("...")
    if i < 2 or i != len(parts) - 2:
        raise UserError(f"{text!r}: write '...' after at least two values and before the last one")
    try:
        a, b, end = int(parts[i - 2]), int(parts[i - 1]), int(parts[-1])
    except ValueError:
        raise UserError(f"{text!r}: '...' needs integers around it") from None
    seq = [int(p) for p in parts[:i]]
    if b <= a:
        raise UserError(f"{text!r}: the values before '...' must increase")
    if len(seq) >= 3 and seq[-3] > 0 and seq[-1] * seq[-3] == seq[-2] ** 2 and b % a == 0:
        geometric = True
    elif len(seq) >= 3:
        geometric = False
        if seq[-1] - seq[-2] != seq[-2] - seq[-3]:
            raise UserError(f"{text!r}: the values before '...' are neither a geometric nor an arithmetic sequence")
    else:  # two values: a whole ratio reads as geometric (1,2,...,256), else arithmetic
        geometric = a > 0 and b % a == 0
    while True:
        nxt = seq[-1] * (b // a) if geometric else seq[-1] + (b - a)
        if nxt > end:
            break
        seq.append(nxt)
    if seq[-1] != end:
        seq.append(end)
    return ",".join(str(x) for x in seq)
