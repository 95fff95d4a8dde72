"""Executors: parsing --executor, clear one-line errors (no Dask, no GPU, shared GPUs), and run, tune and gate
through a Dask scheduler from the command line and the library."""

import json
import sys
from functools import partial

import pytest

from attnbench.errors import UserError
from attnbench.execute.cluster import DaskExecutor, parse_executor, require_distributed
from attnbench.execute.progress import throughput_text
from attnbench.execute.worker import Setup, WorkerInfo
from attnbench.measure.timing import FakeTimer
from attnbench.spec import Workload
from attnbench.store import Store
from tests.clitools import cli

W = Workload(batch=1, q_heads=2, kv_heads=2, q_len=32, kv_len=32, head_dim=16, dtype="fp32")
SHAPE = ["-b", "1", "-H", "2", "-s", "32", "-d", "16", "--dtype", "fp32"]


def address(client) -> str:
    return "dask://" + client.scheduler.address.removeprefix("tcp://")


def test_parse_executor():
    assert parse_executor(None) == ("inproc", "") and parse_executor("gpus") == ("gpus", "")
    assert parse_executor("dask://10.0.0.5:8786") == ("dask", "tcp://10.0.0.5:8786")
    for bad in ("dask://nohost", "dask://:8786", "cluster", "dask://h:port"):
        with pytest.raises(UserError, match="executor"):
            parse_executor(bad)


def test_without_dask_the_message_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"pip install 'attnbench\[dask\]'"):
        require_distributed("--executor dask://h:1")
    code, _, err = cli(capsys, "run", "--executor", "dask://127.0.0.1:1", "--db", str(tmp_path / "r.db"))
    assert code == 2 and err.strip().endswith("pip install 'attnbench[dask]'") and len(err.splitlines()) == 1
    code, _, err = cli(capsys, "run", "--executor", "gpus", "--db", str(tmp_path / "r.db"))
    assert code == 2 and err.strip().endswith("pip install 'attnbench[gpus]'")  # dask-cuda comes with it


def test_gpus_on_a_machine_without_gpus_says_so(capsys, tmp_path):
    code, _, err = cli(capsys, "run", "--executor", "gpus", "--db", str(tmp_path / "r.db"))
    assert code == 2 and "torch sees no CUDA GPU on this machine" in err and len(err.splitlines()) == 1
    code, _, err = cli(capsys, "run", "--executor", "nowhere", "--db", str(tmp_path / "r.db"))
    assert code == 2 and "unknown --executor 'nowhere'" in err


class _SharedGpu(DaskExecutor):
    """Two workers that report the same GPU (workers started without pinning)."""

    def __init__(self):
        self.name, self.one_gpu_each = "fake", True

    def _on_each(self, fn, arg):
        from attnbench import __version__

        return [WorkerInfo(str(i), f"tcp://w{i}", "host", "cuda", "cold", "e", {}, gpu_uuid="GPU-1",
                           attnbench=__version__) for i in range(2)]


def test_two_workers_on_one_gpu_are_refused_and_so_is_one_gpu_for_all():
    with pytest.raises(UserError, match="measure on the same GPU"):
        _SharedGpu().probe(Setup(token="t"))
    with pytest.raises(UserError, match="--device cuda:1 picks one GPU"):
        _SharedGpu().device("cuda:1")


def test_throughput_text():
    assert throughput_text({}, 1.0) == "waiting for workers"
    assert throughput_text({"w1/gpu1": 3, "w0/gpu0": 8}, 4.0) == "w0/gpu0 8 (2.00/s) · w1/gpu1 3 (0.75/s)"


def test_run_and_gate_from_the_command_line_on_a_dask_scheduler(capsys, tmp_path, dask_client):
    db = str(tmp_path / "r.db")
    code, out, err = cli(capsys, "run", "--executor", address(dask_client), *SHAPE, "-i", "reference,sdpa-math",
                         "--samples", "3", "--warmup-ms", "0", "--db", db, "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert [m["status"] for m in data["measurements"]] == ["ok", "ok"]
    assert data["run"]["config"]["executor"].startswith("dask tcp://") and data["run"]["config"]["device"] == "cpu"
    base = tmp_path / "base.json"
    code, out, err = cli(capsys, "gate", "--update", "--baseline", str(base), "--executor", address(dask_client),
                         *SHAPE, "-i", "reference", "--samples", "8", "--repeats", "1", "--db", db)
    assert code == 0, err
    with Store(db) as store:
        worker_env = store.measurements(store.run().run_id)[0].env_id
    assert json.loads(base.read_text())["env_id"] == worker_env


class _ByImpl(FakeTimer):
    """Medians by impl (tune's select() names the candidate), rebuilt on each worker from its arguments."""

    def __init__(self, medians):
        super().__init__(median_ms=1.0, call=False)
        self.by = medians

    def select(self, impl, params, workload):
        self.median_ms = self.by.get(impl, 1.0)


def test_tune_on_workers_picks_what_in_process_picks_and_caches_it(tmp_path, dask_client):
    from attnbench.tune.tuner import TuneConfig, tune

    factory = partial(_ByImpl, {"reference": 0.5, "sdpa-math": 1.0})
    config = TuneConfig(workloads=[W, W.replace(causal=True)], impls=["reference", "sdpa-math"], device="cpu",
                        baseline="sdpa-math", budget_s=None)
    with Store(tmp_path / "r.db") as store:
        here = tune(config, store, timer=factory())
        lines = []
        there = tune(config, store, timer=factory, executor=DaskExecutor(dask_client), progress=lines.append)
        assert [r.chosen for r in there.workloads] == [r.chosen for r in here.workloads] == ["reference"] * 2
        assert all(r.cached for r in there.workloads)  # the same environment's cache answered
        forced = tune(TuneConfig(**{**config.__dict__, "force": True}), store, timer=factory,
                      executor=DaskExecutor(dask_client))
        assert [r.chosen for r in forced.workloads] == ["reference"] * 2 and not any(r.cached for r in forced.workloads)
        assert forced.settings["workers"] == 2 and forced.env_id == here.env_id and len(lines) == 2


def _die_on(address, arg):
    """Ends the worker process at `address` (as an OOM kill would) and answers `arg` on any other."""
    import os

    from distributed import get_worker

    if get_worker().address == address:
        os._exit(17)
    return arg


def test_a_worker_that_dies_while_being_set_up_is_left_out_not_waited_for(dask_client):
    """A task pinned to a worker that died can run nowhere: waiting for it would hang the sweep for ever."""
    ex = DaskExecutor(dask_client)
    first, second = ex.addresses()[:2]
    assert ex._on_each(partial(_die_on, first), "up") == ["up"]  # the survivor's answer; the dead one is dropped
    dask_client.wait_for_workers(2, timeout=60)  # the nanny starts a new worker in its place


def test_malformed_addresses_are_refused_before_connecting():
    for bad in ("dask://h:1:2", "dask://127.0.0.1:99999", "dask://127.0.0.1:0", "dask://a b:8786", "dask://h/x:1"):
        with pytest.raises(UserError, match="expected dask://HOST:PORT"):
            parse_executor(bad)
    assert parse_executor("dask://[::1]:8786") == ("dask", "tcp://[::1]:8786")


def test_an_address_that_is_not_a_dask_scheduler_is_a_one_line_error(capsys, tmp_path):
    """Something else listening there (a web server, say): the bytes it answers are not Dask's protocol."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def answer():
        while True:
            try:
                conn, _ = server.accept()
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)
            except OSError:
                return

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(UserError, match="cannot reach a Dask scheduler at tcp://127.0.0.1:"):
            DaskExecutor.connect(f"tcp://127.0.0.1:{server.getsockname()[1]}", timeout_s=5)
    finally:
        server.close()


def test_a_scheduler_that_dies_mid_sweep_is_one_line(caplog, tmp_path):
    """The client's tasks are cancelled when its scheduler's process dies: the error says so (what arrived is
    stored), and closing the client, mid-reconnect, logs no traceback."""
    import logging
    import socket
    import subprocess
    import time

    import distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-dashboard"], cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ex = DaskExecutor(distributed.Client(f"tcp://127.0.0.1:{port}", timeout=60))
        fut = ex.submit(time.sleep, 60, "attnbench-sleep")  # no worker: it waits
        scheduler.kill()
        done = next(iter(ex.as_completed([fut])))
        with pytest.raises(UserError, match="lost the connection to the Dask scheduler; what arrived is stored"):
            ex.outcome(done)
        with caplog.at_level(logging.ERROR, logger="distributed"):
            ex.close()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    finally:
        scheduler.kill()
        scheduler.wait()
