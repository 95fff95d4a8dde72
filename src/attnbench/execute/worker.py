"""The worker side of an executor: one task (a workload with all its cells), measured where it lands."""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..spec import Workload
from ..store import Measurement, params_key


@dataclass(frozen=True)
class Setup:
    """What every task of one sweep shares; small, so it travels with each task."""

    token: str                                     # the sweep's id: worker-local state is kept per sweep
    impls: tuple = ()                              # the config's impls: names, plugin specs or Impl objects
    device: str | None = None                      # None: the worker's GPU if it has one, else its CPU
    timer: str = "auto"
    timer_factory: Callable[[], Any] | None = None  # picklable, no arguments -> a Timer (tests: FakeTimer)
    policy: Any = None
    seed: int = 0
    interleave: bool = False
    discard_throttled: bool = False
    topic: str = ""                                # the scheduler's event topic of the journal ('': none)


@dataclass(frozen=True)
class WorkloadTask:
    setup: Setup
    workload: Workload
    cells: tuple[tuple[int, dict], ...]            # (index into setup.impls, params)


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as it sees itself: where it is, which device and timer it measures with, its environment."""

    name: str
    address: str
    host: str
    device: str
    timer_mode: str
    env_id: str
    fingerprint: dict
    gpu_uuid: str = ""                             # the GPU it measures on ('' on a CPU)
    visible: str = ""                              # its CUDA_VISIBLE_DEVICES ('' when unset)
    attnbench: str = ""

    @property
    def label(self) -> str:
        """A short name for the progress bar: the worker's name and its GPU."""
        gpu = self.visible.split(",")[0] if self.visible else ""
        # `dask worker --nworkers N` names each worker by its address: shown as it is, not as 'wtcp://...'
        name = self.name.split("://", 1)[1] if "://" in self.name else f"w{self.name}"
        return name + (f"/gpu{gpu}" if gpu else "")


@dataclass(frozen=True)
class TaskResult:
    measurements: tuple[Measurement, ...]
    worker: WorkerInfo
    wall_s: float


# One measurement at a time per process, whatever the worker's thread count: two cells timed at once on
# one device would measure each other.
MEASURING = threading.Lock()
_STATE: dict[str, Any] = {}


def _dask_worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # not inside a Dask worker (a direct call, in tests)
        return None


def _gpu_uuid(device: str) -> str:
    if not device.startswith("cuda"):
        return ""
    import torch

    try:
        return str(torch.cuda.get_device_properties(torch.device(device)).uuid)
    except Exception:  # an old torch without uuid: the check for shared GPUs is skipped
        return ""


def session(setup: Setup) -> dict[str, Any]:
    """This process's device, timer, impls, WorkerInfo and typical-clock track for the sweep (built once per
    sweep; call it holding MEASURING)."""
    if _STATE.get("token") == setup.token:
        return _STATE
    from .. import __version__
    from ..analysis import device as devmod
    from ..impls import resolve_many
    from ..measure.runner import ClockTrack, resolve_device
    from ..measure.timing import make_timer

    _STATE.clear()
    device = resolve_device(setup.device)
    timer = setup.timer_factory() if setup.timer_factory is not None else make_timer(setup.timer, device)
    fp = devmod.fingerprint(device)
    w = _dask_worker()
    info = WorkerInfo(name=str(w.name) if w else "local", address=w.address if w else "", host=socket.gethostname(),
                      device=device, timer_mode=timer.mode, env_id=devmod.env_id(fp), fingerprint=fp,
                      gpu_uuid=_gpu_uuid(device), visible=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                      attnbench=__version__)
    _STATE.update(token=setup.token, device=device, timer=timer, info=info, clocks=ClockTrack(),
                  impls=resolve_many(list(setup.impls)))
    return _STATE


def probe(setup: Setup) -> WorkerInfo:
    """Set the worker up for the sweep (device, timer, impls, fingerprint) and say what it is."""
    with MEASURING:
        return session(setup)["info"]


def worker_device(requested: str | None) -> str:
    """The device a worker would measure on for --device `requested`."""
    from ..measure.runner import resolve_device

    return resolve_device(requested)


def task_topic(topic: str, key: str) -> str:
    """The scheduler's event topic of one task's journal (one per task: a worker reads only its own task's)."""
    return f"{topic}/{key}"


# A task whose worker processes died this many times is not run again as it was: the scheduler's own limit
# (distributed.scheduler.allowed-failures) is attnbench's on clusters it starts, but a running scheduler
# keeps its own (3 by default: a crashing kernel would kill 4 workers in turn).
DEATHS = 2


def lost_reason(deaths: int, last: str = "") -> str:
    """Why a task (or cell) was given up after killing its workers, in words."""
    return (f"the worker process died while running it, on {deaths} workers in turn (out of memory, or a "
            f"crashing kernel)" + (f"; last on {last}" if last else ""))


class LostTwice(Exception):
    """Raised by a task whose earlier attempts each died with their worker (the client records it as lost)."""


class Journal:
    """Tells the scheduler which cells this attempt of a task is about to run (synchronously: the note is there
    even if the next call kills the process), so that the client can name the cell that killed a worker and a
    later attempt can see what killed the earlier ones. Inert outside a Dask worker."""

    def __init__(self, setup: Setup):
        w = _dask_worker()
        self.client = None
        if setup.topic and w is not None:
            import uuid

            from distributed import get_client

            self.key, self.client = w.get_current_task(), get_client()
            self.topic, self.attempt, self.worker = task_topic(setup.topic, self.key), uuid.uuid4().hex, w.address

    def earlier(self) -> list[tuple[str, tuple]]:
        """(worker, the cells it noted last) for each earlier attempt of this task: each ended with its worker,
        since the task runs again."""
        if self.client is None:
            return []
        try:
            events = self.client.get_events(self.topic)
        except Exception:  # the journal is a help; measuring goes on without it
            return []
        last: dict[str, tuple[str, tuple]] = {}
        for _, msg in events:
            if isinstance(msg, dict) and msg.get("task") == self.key and msg.get("attempt"):
                last[msg["attempt"]] = (msg.get("worker", ""), tuple(tuple(c) for c in msg.get("cells", ())))
        return [v for a, v in last.items() if a != self.attempt]

    def note(self, cells: list) -> None:
        if self.client is None:
            return
        try:
            self.client.log_event(self.topic, {"task": self.key, "attempt": self.attempt, "worker": self.worker,
                                               "cells": [[c[0].key, c[1].name, params_key(c[2])] for c in cells]})
        except Exception:  # the journal is a help for attribution; measuring goes on without it
            pass


def killers(earlier: list[tuple[str, tuple]]) -> dict[tuple, list[str]]:
    """The cells that were alone and last in DEATHS or more earlier attempts, with those attempts' workers."""
    seen: dict[tuple, list[str]] = {}
    for worker, cells in earlier:
        if len(cells) == 1:
            seen.setdefault(cells[0], []).append(worker)
    return {c: ws for c, ws in seen.items() if len(ws) >= DEATHS}


def measure_task(task: WorkloadTask) -> TaskResult:
    """Measure one workload's cells in this process and return the Measurements (nothing is stored here:
    the client is the store's single writer). A cell that killed the worker of DEATHS earlier attempts of
    this task is not run again: it is returned as `error` with that reason, whatever the scheduler's limit."""
    from ..measure.runner import _free, measure_workload

    with MEASURING:
        st = session(task.setup)
        s, info = task.setup, st["info"]
        t0 = time.perf_counter()
        journal = Journal(s)
        dead = killers(journal.earlier())
        cells, out = [], []
        for i, p in task.cells:
            impl = st["impls"][i]
            workers = dead.get((task.workload.key, impl.name, params_key(p)))
            if workers:
                out.append(Measurement(workload=task.workload, impl=impl.name, status="error", params=dict(p),
                                       reason=lost_reason(len(workers), workers[-1]), env_id=info.env_id,
                                       device=st["device"], timer=st["timer"].mode))
            else:
                cells.append((task.workload, impl, dict(p)))
        for m in measure_workload(cells, st["device"], st["timer"], s.policy, s.seed, info.env_id,
                                  interleave=s.interleave, clocks=st["clocks"], discard_throttled=s.discard_throttled,
                                  on_start=journal.note):
            out.append(dataclasses.replace(m, extra=dict(m.extra, worker=f"{info.label}@{info.host}")))
            _free(st["device"])
        _free(st["device"])
        return TaskResult(tuple(out), info, time.perf_counter() - t0)
