"""A sweep through an executor: one task per workload on the workers, every result committed by this process
(the store's single writer) as it arrives; lost workers and interruptions lose nothing already returned."""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from typing import Any, Callable

from ..errors import UserError
from ..store import Measurement, Store, params_key
from .cluster import DaskExecutor, open_executor
from .progress import SweepProgress
from .worker import Setup, TaskResult, WorkloadTask, measure_task


def _is_factory(timer: Any) -> bool:
    return isinstance(timer, type) or (callable(timer) and not hasattr(timer, "run"))


def timer_factory(timer: Any) -> Callable[[], Any] | None:
    """A Timer factory that can travel to a worker: a class or a callable (functools.partial(FakeTimer, ...));
    a Timer object cannot (worker processes share no objects): a one-line UserError says so."""
    if timer is None or _is_factory(timer):
        return timer
    raise UserError("a Timer object cannot be sent to worker processes; pass a factory instead "
                    "(e.g. functools.partial(FakeTimer, median_ms=1.0))")


def run_sweep(config, store: Store, executor: Any = "inproc", *, timer: Any = None, resume: bool = False,
              progress: bool | None = None, on_measurement: Callable[[Measurement], None] | None = None) -> int:
    """Measure every cell of a RunConfig through an executor and store each result. Returns the run id.

    `executor`: 'inproc' (runner.run in this process), 'gpus', 'dask://HOST:PORT', or one already open
    (cluster.open_executor; a distributed.Client). `timer`: a Timer (inproc only) or a factory of one.
    With resume, the newest unfinished run of the same configuration continues (whichever executor
    measured its first part), skipping the cells it holds."""
    with open_executor(executor) as ex:
        if not ex.distributed:
            from ..measure.runner import run

            return run(config, store, timer=timer() if _is_factory(timer) else timer, resume=resume,
                       progress=progress, on_measurement=on_measurement)
        return _Sweep(config, store, ex, timer_factory(timer), on_measurement).run(resume, progress)


class _Sweep:
    def __init__(self, config, store: Store, ex: DaskExecutor, factory, on_measurement):
        self.config, self.store, self.ex, self.on_measurement = config, store, ex, on_measurement
        self.factory = factory
        self.ceilings: dict[str, Any] = {}
        self.run_id = 0

    def _ceilings(self, eid: str, fp: dict | None = None):
        if eid not in self.ceilings:
            from ..analysis.roofline import ceilings_for

            fp = fp if fp is not None else (self.store.environment(eid) or {})
            self.ceilings[eid] = ceilings_for(fp, self.store.get("ceilings", eid))
        return self.ceilings[eid]

    def _commit(self, m: Measurement, bar: SweepProgress, worker: str | None) -> None:
        from ..measure.runner import annotate

        m = annotate(m, self._ceilings(m.env_id))
        self.store.add(self.run_id, m)
        if self.on_measurement:
            self.on_measurement(m)
        bar.record(worker, 1)

    def run(self, resume: bool, progress: bool | None) -> int:
        from ..impls import resolve_many

        config, store = self.config, self.store
        impls = resolve_many(config.impls)  # names are checked here, before any worker is asked
        if not config.workloads:
            raise UserError("the sweep has no workloads")
        if getattr(config, "repeats", 1) > 1:
            raise UserError("--repeats N > 1 measures in this process only (--executor inproc); "
                            "through workers, run the sweep N times instead")
        token = uuid.uuid4().hex[:12]
        setup = Setup(token=token, impls=tuple(config.impls), device=config.device, timer=config.timer,
                      timer_factory=self.factory, policy=config.policy, seed=config.seed,
                      interleave=config.interleave, discard_throttled=config.discard_throttled,
                      topic=f"attnbench-{token}")
        workers = self.ex.probe(setup)
        for w in workers:
            store.add_environment(w.env_id, w.fingerprint)
        eid = Counter(w.env_id for w in workers).most_common(1)[0][0]
        device, mode = workers[0].device, workers[0].timer_mode
        env_of = {w.address: w.env_id for w in workers}
        chash = config.hash()
        done: set[tuple[str, str, str]] = set()
        previous = store.resumable_run(chash) if resume else None
        if previous is not None:
            self.run_id = previous.run_id
            done = store.cells(self.run_id)
            store.reopen_run(self.run_id)
        else:
            cfg = config.to_dict()
            cfg.update(device=device, timer_mode=mode, executor=self.ex.name, workers=len(workers))
            self.run_id = store.start_run(eid, cfg, chash, config.name)

        index = {id(i): n for n, i in enumerate(impls)}
        cells = [(w, impl, p) for w in config.workloads for impl in impls for p in config.params.get(impl.name, [{}])]
        groups: dict[str, tuple[Any, list]] = {}
        for w, impl, p in cells:
            if (w.key, impl.name, params_key(p)) not in done:
                groups.setdefault(w.key, (w, []))[1].append((index[id(impl)], p))
        show = sys.stderr.isatty() if progress is None else progress
        bar = SweepProgress(len(cells), show, already=len(cells) - sum(len(c) for _, c in groups.values()))
        pending: dict[str, WorkloadTask] = {}
        submitted: list = []

        def submit(task: WorkloadTask) -> Any:
            fut = self.ex.submit(measure_task, task, f"attnbench-{token}")
            pending[fut.key] = task
            submitted.append(fut)
            return fut

        stream = self.ex.as_completed([submit(WorkloadTask(setup, w, tuple(c))) for w, c in groups.values()])
        try:
            for fut in stream:
                task = pending.pop(fut.key)
                out = self.ex.outcome(fut)
                if out.result is not None:
                    res: TaskResult = out.result
                    store.add_environment(res.worker.env_id, res.worker.fingerprint)  # a worker that joined late
                    self._ceilings(res.worker.env_id, res.worker.fingerprint)
                    for m in res.measurements:
                        self._commit(m, bar, res.worker.label)
                else:
                    for again in self._after_failure(task, out, fut.key, impls, device, mode,
                                                     env_of.get(out.worker, eid), bar):
                        stream.add(submit(again))
                fut.release()
        except BaseException:
            self.ex.cancel([f for f in submitted if not f.done()])
            bar.close()
            store.finish_run(self.run_id, "interrupted")
            raise
        bar.close()
        store.finish_run(self.run_id, "complete")
        return self.run_id

    def _after_failure(self, task: WorkloadTask, out, key: str, impls, device: str, mode: str, eid: str,
                       bar: SweepProgress) -> list[WorkloadTask]:
        """A task that raised: its cells are recorded as errors. A task that killed its workers: the cell its
        journal names is recorded as an error and the workload's other cells run again as a task of their
        own; when the journal names no single cell, each cell runs as its own task, so that only the one
        that kills its worker is recorded as `error`. Returns the tasks to run again."""

        def error(i: int, params: dict, reason: str) -> None:
            m = Measurement(workload=task.workload, impl=impls[i].name, status="error", reason=reason,
                            params=params, env_id=eid, device=device, timer=mode)
            self._commit(m, bar, None)

        if out.failed:
            for i, p in task.cells:
                error(i, p, f"worker: {out.failed}")
            return []
        named = set(self.ex.journal(task.setup.topic, key))
        at = [(i, p) for i, p in task.cells if (task.workload.key, impls[i].name, params_key(p)) in named]
        if len(task.cells) == 1 or len(at) == 1:  # the cell that killed its workers is known
            culprit = at[0] if at else task.cells[0]
            error(*culprit, out.lost)
            rest = tuple(c for c in task.cells if c != culprit)
            return [WorkloadTask(task.setup, task.workload, rest)] if rest else []
        alone = at or list(task.cells)  # several suspects (timed together), or none named: one task each
        rest = tuple(c for c in task.cells if c not in alone)
        return ([WorkloadTask(task.setup, task.workload, (c,)) for c in alone]
                + ([WorkloadTask(task.setup, task.workload, rest)] if rest else []))
