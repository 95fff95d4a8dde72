"""Sweeps through a Dask cluster of two CPU worker processes: the same rows as in-process, nothing lost when a
worker dies or the client stops, a cell that kills its worker twice recorded as an error."""

import pickle
from functools import partial

import pytest

from attnbench.errors import UserError
from attnbench.execute import run_sweep
from attnbench.execute.cluster import DaskExecutor, Outcome
from attnbench.execute.sweep import _Sweep, timer_factory
from attnbench.execute.worker import Setup, WorkloadTask
from attnbench.impls import resolve_many
from attnbench.measure.runner import RunConfig
from attnbench.measure.timing import FakeTimer, TimingPolicy
from attnbench.spec import Workload
from attnbench.store import Store

W1 = Workload(batch=1, q_heads=2, kv_heads=2, q_len=32, kv_len=32, head_dim=16, dtype="fp32")
WORKLOADS = [W1, W1.replace(causal=True), W1.replace(q_len=64, kv_len=64)]
TWO = WORKLOADS[:2]
FAST = TimingPolicy(warmup_ms=0.0, min_samples=3, max_samples=3)
FIX = "tests.fixtures.kernels"
MIXED = ["reference", f"{FIX}:query_chunked", f"{FIX}:blockwise_qkv", f"{FIX}:raises", f"{FIX}:cpu_unsupported"]
FAKE = partial(FakeTimer, median_ms=0.5)


def cfg(impls, workloads=WORKLOADS, **kw):
    return RunConfig(workloads=list(workloads), impls=list(impls), device="cpu", policy=FAST, **kw)


def rows(store, rid):
    return {(m.cell, m.status) for m in store.measurements(rid)}


@pytest.mark.parametrize("interleave", [False, True])
def test_two_workers_give_the_same_rows_as_in_process(tmp_path, dask_client, interleave):
    with Store(tmp_path / "r.db") as store:
        config = cfg(MIXED, TWO, interleave=interleave)
        here = run_sweep(config, store, "inproc", timer=FAKE, progress=False)
        there = run_sweep(config, store, dask_client, timer=FAKE, progress=False)
        assert rows(store, there) == rows(store, here)
        assert {s for _, s in rows(store, there)} == {"ok", "incorrect", "error", "unsupported"}
        ms = store.measurements(there)
        assert len(ms) == len(TWO) * len(MIXED)
        info = store.run(there)
        assert info.status == "complete" and info.config["executor"].startswith("dask")
        assert info.config["workers"] == 2 and info.env_id == ms[0].env_id
        assert store.environment(info.env_id)["device_kind"] == "cpu"  # taken on the worker
        assert all(m.extra["worker"].startswith("w") for m in ms)  # which worker measured each row
        # The worker's Measurements travel by pickle; what is stored reads back the same.
        ok = next(m for m in ms if m.ok)
        assert pickle.loads(pickle.dumps(ok)) == ok and ok.timer == "fake" and len(ok.samples_ms) == 3


def test_a_worker_killed_mid_sweep_loses_nothing(tmp_path, dask_client, capsys):
    """The fixture kernel ends its worker process the first time it is called; the scheduler runs that
    workload again on the other worker and the sweep completes with every row."""
    impls = ["reference", "tests.fixtures.crash:crash_once"]
    config = cfg(impls)
    config.params = {"tests.fixtures.crash:crash_once": [{"marker": str(tmp_path / "died")}]}
    with Store(tmp_path / "r.db") as store:
        rid = run_sweep(config, store, dask_client, timer=FAKE, progress=True)
        bar = capsys.readouterr().err  # one bar for the sweep, each worker's count and rate beside it
        assert "sweep" in bar and "6/6" in bar and "/s)" in bar
        assert (tmp_path / "died").exists()  # a worker did die
        assert store.run(rid).status == "complete"
        assert {s for _, s in rows(store, rid)} == {"ok"} and len(rows(store, rid)) == 6
        here = run_sweep(config, store, "inproc", timer=FAKE, progress=False)  # the marker is there: no exit
        assert rows(store, here) == rows(store, rid)


def test_a_cell_that_kills_its_worker_twice_is_an_error_and_the_rest_is_measured(tmp_path, dask_client):
    config = cfg([f"{FIX}:query_chunked", "tests.fixtures.crash:crash", "reference"], [W1])
    with Store(tmp_path / "r.db") as store:
        rid = run_sweep(config, store, dask_client, timer=FAKE, progress=False)
        by = {m.impl.split(":")[-1]: m for m in store.measurements(rid)}
        assert by["crash"].status == "error"
        assert "died while running it, on 2 workers" in by["crash"].reason
        assert by["query_chunked"].status == by["reference"].status == "ok"  # the journal named the culprit
        assert store.run(rid).status == "complete"


def test_an_interrupted_client_keeps_what_arrived_and_resume_finishes(tmp_path, dask_client):
    config = cfg(["reference", f"{FIX}:query_chunked"])
    seen = []

    def stop_after_two(m):
        seen.append(m.cell)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with Store(tmp_path / "r.db") as store:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(config, store, dask_client, timer=FAKE, progress=False, on_measurement=stop_after_two)
        first = store.run()
        assert first.status == "interrupted" and first.n_measurements == 2
        before = {m.cell: m.samples_ms for m in store.measurements(first.run_id)}
        again = []
        rid = run_sweep(config, store, dask_client, timer=FAKE, resume=True, progress=False,
                        on_measurement=lambda m: again.append(m.cell))
        assert rid == first.run_id and store.run(rid).status == "complete"
        assert len(again) == 4 and not set(again) & set(seen)  # only the missing cells were measured
        final = store.measurements(rid)
        assert len(final) == 6
        assert all(m.samples_ms == before[m.cell] for m in final if m.cell in before)


def test_a_user_error_on_a_worker_is_a_user_error_here(tmp_path, dask_client):
    with Store(tmp_path / "r.db") as store:
        with pytest.raises(UserError, match=r"worker tcp://.*no CUDA GPU"):
            run_sweep(RunConfig(workloads=[W1], impls=["sdpa-math"], device="cuda"), store, dask_client,
                      timer=FAKE, progress=False)
        with pytest.raises(UserError, match="unknown impl"):
            run_sweep(cfg(["nope"]), store, dask_client, timer=FAKE, progress=False)


def test_a_timer_object_cannot_travel_but_a_factory_can():
    with pytest.raises(UserError, match="factory"):
        timer_factory(FakeTimer())
    assert timer_factory(FAKE) is FAKE and timer_factory(FakeTimer) is FakeTimer and timer_factory(None) is None


class _Journal:
    """Stands in for a DaskExecutor where only the journal matters."""

    def __init__(self, cells):
        self.cells = cells

    def journal(self, topic, key):
        return self.cells


class _Bar:
    def record(self, worker, cells):
        pass


def _after(tmp_path, cells, named):
    impls = resolve_many(["sdpa-math", "reference", "sdpa-flash"])
    setup = Setup(token="t", impls=("sdpa-math", "reference", "sdpa-flash"))
    task = WorkloadTask(setup, W1, tuple((i, {}) for i in cells))
    store = Store(tmp_path / "r.db")
    sweep = _Sweep(cfg(["sdpa-math"]), store, _Journal(named), None, None)
    sweep.run_id = store.start_run("e", {})
    lost = Outcome(lost="the worker process died")
    again = sweep._after_failure(task, lost, "k", impls, "cpu", "host", "e", _Bar())
    return [[i for i, _ in t.cells] for t in again], [(m.impl, m.status) for m in store.measurements(sweep.run_id)]


def test_after_a_lost_task_the_named_cell_is_an_error_and_the_rest_runs_again(tmp_path):
    named = [(W1.key, "reference", "")]
    assert _after(tmp_path, [0, 1, 2], named) == ([[0, 2]], [("reference", "error")])
    # Nothing named (it died before its first cell, say): every cell runs alone, so only the culprit fails.
    assert _after(tmp_path, [0, 1, 2], []) == ([[0], [1], [2]], [])
    # Several named (timed together when interleaved): those run alone, the others together.
    both = [(W1.key, "reference", ""), (W1.key, "sdpa-flash", "")]
    assert _after(tmp_path, [0, 1, 2], both) == ([[1], [2], [0]], [])
    # A task of one cell: that cell is the error.
    assert _after(tmp_path, [2], []) == ([], [("sdpa-flash", "error")])


def test_the_executor_runs_work_once_and_reports_failures(dask_client):
    ex = DaskExecutor(dask_client)
    assert ex.run_once(pow, 2, 5) == 32
    done = next(iter(ex.as_completed([ex.submit(int, "not a number", "bad")])))
    out = ex.outcome(done)
    assert out.result is None and out.failed.startswith("ValueError: invalid literal")


@pytest.fixture(scope="module")
def lenient_client():
    """A scheduler that retries a task whose worker died 3 times (Dask's default: a running scheduler the user
    started keeps its own setting), with two CPU worker processes."""
    import dask
    import distributed

    with dask.config.set({"distributed.scheduler.allowed-failures": 3}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_a_cell_kills_two_workers_at_most_whatever_the_schedulers_retries(tmp_path, lenient_client):
    marker = tmp_path / "deaths"
    crash = "tests.fixtures.crash:crash_counted"
    config = cfg([f"{FIX}:query_chunked", crash, "reference"], [W1])
    config.params = {crash: [{"marker": str(marker)}]}
    with Store(tmp_path / "r.db") as store:
        rid = run_sweep(config, store, lenient_client, timer=FAKE, progress=False)
        by = {m.impl.split(":")[-1]: m for m in store.measurements(rid)}
        crashed = by["crash_counted"]
        assert crashed.status == "error" and "died while running it, on 2 workers" in crashed.reason
        assert by["query_chunked"].status == by["reference"].status == "ok"
    assert len(marker.read_text().split()) == 2  # two worker processes ended, not the scheduler's four
    lenient_client.wait_for_workers(2, timeout=60)


def test_a_tune_search_kills_two_workers_at_most(tmp_path, lenient_client):
    from attnbench.tune.tuner import TuneConfig, tune

    marker = tmp_path / "deaths"
    crash = "tests.fixtures.crash:crash_counted"
    config = TuneConfig(workloads=[W1], impls=["reference", crash], device="cpu", baseline="reference",
                        budget_s=None, params={crash: [{"marker": str(marker)}]})
    with Store(tmp_path / "r.db") as store:
        result = tune(config, store, timer=FAKE, executor=DaskExecutor(lenient_client))
    (r,) = result.workloads
    assert r.stop_reason == "worker-lost" and "on 2 workers" in r.notes[0]
    assert len(marker.read_text().split()) == 2
    lenient_client.wait_for_workers(2, timeout=60)
