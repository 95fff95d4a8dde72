"""Where cells run: in this process (inproc), one worker process per local GPU (gpus, dask-cuda's
LocalCUDACluster), or the workers of a running Dask scheduler (dask://HOST:PORT)."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..errors import UserError
from .worker import Setup, WorkerInfo

# A task whose worker dies is run again on another worker (the scheduler's own rescheduling); a second death
# marks it failed (KilledWorker). Clusters started here use this; a running scheduler keeps its own setting.
ALLOWED_FAILURES = 1


def parse_executor(text: str | None) -> tuple[str, str]:
    """'inproc' | 'gpus' | 'dask://HOST:PORT' -> (kind, scheduler address or '')."""
    t = (text or "inproc").strip()
    if t in ("inproc", "gpus"):
        return t, ""
    if t.startswith("dask://"):
        host, _, port = t[len("dask://"):].rpartition(":")
        # A host is a name or IPv4 address, or an IPv6 address in brackets ([::1]); a port 1 to 65535.
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if (not bare or not port.isdigit() or not 0 < int(port) < 65536 or any(c in bare for c in "/[] \t@")
                or (":" in bare and bare == host)):
            raise UserError(f"--executor {text!r}: expected dask://HOST:PORT (a running Dask scheduler)")
        return "dask", f"tcp://{host}:{port}"
    raise UserError(f"unknown --executor {text!r}; use inproc, gpus or dask://HOST:PORT")


def require_distributed(what: str, extra: str = "dask"):
    """The `distributed` module, or a one-line UserError that says which extra to install."""
    try:
        import distributed
    except ImportError:
        raise UserError(f"{what} needs Dask's distributed scheduler: pip install 'attnbench[{extra}]'") from None
    return distributed


@dataclass(frozen=True)
class Outcome:
    """How a task ended: its result, or lost (its worker died on every try), or failed (it raised)."""

    result: Any = None
    lost: str = ""         # why, in words, when the task killed its workers
    failed: str = ""       # the exception in one line, when the task raised
    worker: str = ""       # the last worker's address, when known


class InProcess:
    """Cells run in this process, one after another (the default)."""

    distributed = False
    name = "inproc"

    def device(self, requested: str | None) -> str:
        from ..measure.runner import resolve_device

        return resolve_device(requested)

    def close(self) -> None:
        pass

    def __enter__(self) -> "InProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DaskExecutor:
    """Tasks on the workers of a Dask cluster; this process (the client) submits them and collects results."""

    distributed = True

    def __init__(self, client: Any, cluster: Any = None, name: str = "", one_gpu_each: bool = False):
        self.client, self.cluster = client, cluster
        self.name = name or f"dask {client.scheduler.address}"
        self.one_gpu_each = one_gpu_each  # every worker sees only its own GPU, as cuda (cuda:0)
        self._n = 0

    # -- starting -------------------------------------------------------------------------------
    @classmethod
    def local_gpus(cls) -> "DaskExecutor":
        """One worker process per local GPU (LocalCUDACluster pins each with CUDA_VISIBLE_DEVICES), one
        thread each, so no two measurements share a GPU."""
        distributed = require_distributed("--executor gpus", "gpus")  # the extra that brings dask-cuda too
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise UserError("--executor gpus: torch sees no CUDA GPU on this machine; use inproc (the CPU) or "
                            "dask://HOST:PORT (a cluster with GPUs)")
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            raise UserError(f"--executor gpus needs dask-cuda ({exc}): pip install 'attnbench[gpus]'") from None
        import dask

        with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
            cluster = LocalCUDACluster(threads_per_worker=1, dashboard_address=None)
        client = distributed.Client(cluster)
        client.wait_for_workers(n)
        return cls(client, cluster, f"gpus ({n} local GPUs, dask-cuda)", one_gpu_each=True)

    @classmethod
    def connect(cls, address: str, timeout_s: float = 30.0) -> "DaskExecutor":
        distributed = require_distributed(f"--executor dask://{address.removeprefix('tcp://')}")
        try:
            client = distributed.Client(address, timeout=timeout_s)
        except OSError as exc:
            raise UserError(f"cannot reach a Dask scheduler at {address}: {exc}") from None
        except Exception as exc:  # something else answered there: its bytes are not Dask's protocol
            raise UserError(f"cannot reach a Dask scheduler at {address}: what answers there is not one "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        try:
            client.wait_for_workers(1, timeout=timeout_s)
        except Exception:
            client.close()
            raise UserError(f"the Dask scheduler at {address} has no workers (waited {timeout_s:.0f} s)") from None
        return cls(client, None, f"dask {address}")

    def close(self) -> None:
        # A client whose scheduler went away is reconnecting; closing it cancels that, which distributed logs as
        # an error with a traceback. The sweep has said what happened, in one line.
        log = logging.getLogger("distributed.client")
        level = log.level
        if self.client.status != "running":
            log.setLevel(logging.CRITICAL)
        try:
            self.client.close()
        finally:
            log.setLevel(level)
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what the workers are ------------------------------------------------------------------------
    def addresses(self) -> list[str]:
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    def _on_each(self, fn: Callable, arg: Any) -> list[Any]:
        """fn(arg) once on every worker; a UserError there (no GPU, say) is raised here with its name. A worker
        that leaves meanwhile (its process died) is left out: its task, pinned to it, could never run, and a
        worker that replaces it sets itself up with its first task."""
        from distributed import wait

        futures = {a: self.client.submit(fn, arg, workers=[a], allow_other_workers=False, pure=False)
                   for a in self.addresses()}
        out = []
        while futures:
            with contextlib.suppress(TimeoutError):
                wait(list(futures.values()), timeout=1.0, return_when="FIRST_COMPLETED")
            live = set(self.addresses())
            for address, fut in list(futures.items()):
                if address not in live:
                    fut.cancel()
                    del futures[address]
                elif fut.done():
                    try:
                        out.append(fut.result(timeout=5.0))
                    except TimeoutError:  # finished, but its worker is going: the next pass sees it gone
                        continue
                    except UserError as exc:
                        raise UserError(f"worker {address}: {exc}") from None
                    except Exception as exc:
                        raise UserError(f"worker {address} could not be set up: {type(exc).__name__}: {exc}") from None
                    del futures[address]
        if not out:
            raise UserError(f"{self.name}: no worker is left (each died or left while being set up)")
        return out

    def device(self, requested: str | None) -> str:
        """The device every worker measures on for --device `requested` (they must agree)."""
        from .worker import worker_device

        if self.one_gpu_each and (requested or "").startswith("cuda:"):
            raise UserError(f"--device {requested} picks one GPU; --executor gpus measures on every GPU, each worker "
                            "on its own (give --device cuda, or none)")
        found = Counter(self._on_each(worker_device, requested))
        if len(found) > 1:
            raise UserError(f"the workers would measure on different devices ({dict(found)}); give --device")
        return next(iter(found))

    def probe(self, setup: Setup) -> list[WorkerInfo]:
        """Set every worker up for a sweep and check that they can be used together: the same attnbench,
        the same device kind and timer, and no GPU shared by two workers (their timings would interfere)."""
        from .. import __version__
        from .worker import probe

        infos = self._on_each(probe, setup)
        for i in infos:
            if i.attnbench != __version__:
                raise UserError(f"worker {i.address} runs attnbench {i.attnbench}, this client {__version__}: "
                                "install the same version everywhere")
        kinds = {(i.device, i.timer_mode) for i in infos}
        if len(kinds) > 1:
            raise UserError("the workers would measure differently (device, timer: "
                            + ", ".join(f"{d} {t}" for d, t in sorted(kinds)) + "); give --device and --timer")
        seen: dict[tuple[str, str], str] = {}
        for i in infos:
            if i.gpu_uuid:
                other = seen.setdefault((i.host, i.gpu_uuid), i.address)
                if other != i.address:
                    raise UserError(f"workers {other} and {i.address} measure on the same GPU ({i.gpu_uuid}); "
                                    "start one worker per GPU (dask-cuda-worker does)")
        return infos

    def run_once(self, fn: Callable, *args: Any) -> Any:
        """fn(*args) on one worker (e.g. measuring the device ceilings where the GPU is)."""
        return self.client.submit(fn, *args, pure=False).result()

    # -- tasks ----------------------------------------------------------------------------------
    def submit(self, fn: Callable, arg: Any, name: str) -> Any:
        """A future for fn(arg); its key starts with `name` (unique per call)."""
        self._n += 1
        return self.client.submit(fn, arg, key=f"{name}-{self._n}", pure=False)

    def as_completed(self, futures: list) -> Any:
        """Futures as they finish; more can be added while iterating (`.add`)."""
        from distributed import as_completed

        return as_completed(futures)

    def outcome(self, fut: Any) -> Outcome:
        """What became of a finished future. A UserError raised on a worker is raised here."""
        from distributed.scheduler import KilledWorker

        if fut.status == "finished":
            return Outcome(result=fut.result())
        if fut.status == "cancelled":  # not the cell's doing: nothing is stored, and --resume runs it again
            try:
                fut.result(timeout=1.0)
            except Exception as exc:
                reason = str(getattr(exc, "reason", ""))
            else:
                reason = ""
            what = ("lost the connection to the Dask scheduler" if "connection-lost" in reason else
                    "the Dask scheduler cancelled attnbench's tasks (restarted?)")
            raise UserError(f"{self.name}: {what}; what arrived is stored: run the same command with --resume "
                            "to finish")
        from .worker import LostTwice, lost_reason

        exc = fut.exception()
        if isinstance(exc, UserError):
            raise exc
        if isinstance(exc, LostTwice):  # the task saw its earlier attempts die (a scheduler allowing more)
            return Outcome(lost=str(exc))
        if isinstance(exc, KilledWorker):
            tries = getattr(exc, "allowed_failures", ALLOWED_FAILURES) + 1
            last = getattr(getattr(exc, "last_worker", None), "address", "")
            return Outcome(lost=lost_reason(tries, last), worker=last)
        text = str(exc).strip().splitlines()
        return Outcome(failed=f"{type(exc).__name__}: {text[0] if text else ''}"[:500])

    def journal(self, topic: str, key: str) -> list[tuple[str, str, str]]:
        """The cells a task said last it was starting (worker.Journal); [] if none."""
        from .worker import task_topic

        try:
            events = self.client.get_events(task_topic(topic, key))
        except Exception:
            return []
        last = [msg for _, msg in events if isinstance(msg, dict) and msg.get("task") == key]
        return [tuple(c) for c in last[-1]["cells"]] if last else []

    def cancel(self, futures: list) -> None:
        with contextlib.suppress(Exception):
            self.client.cancel(futures)


def open_executor(spec: "str | InProcess | DaskExecutor | None") -> contextlib.AbstractContextManager:
    """A context manager giving the executor for 'inproc', 'gpus' or 'dask://HOST:PORT' (closed on exit;
    one given as an object, or a distributed.Client, is used and left open)."""
    if isinstance(spec, (InProcess, DaskExecutor)):
        return contextlib.nullcontext(spec)
    if spec is not None and not isinstance(spec, str):  # a distributed.Client made by the caller
        return contextlib.nullcontext(DaskExecutor(spec))
    kind, address = parse_executor(spec)
    if kind == "inproc":
        return InProcess()
    return _started(kind, address)


@contextlib.contextmanager
def _started(kind: str, address: str) -> Iterator[DaskExecutor]:
    ex = DaskExecutor.local_gpus() if kind == "gpus" else DaskExecutor.connect(address)
    try:
        yield ex
    finally:
        ex.close()
