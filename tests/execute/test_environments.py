"""Measurements from different environments (workers of different GPUs or software) are never pooled:
compare and gate refuse them, reports name the device of every row."""

import pytest

from attnbench.compare.comparison import compare_runs
from attnbench.errors import UserError
from attnbench.gate import orchestrate as gr
from attnbench.report import tables
from attnbench.spec import Workload
from attnbench.store import Measurement, Store

W = Workload(batch=1, q_heads=2, kv_heads=2, q_len=32, kv_len=32, head_dim=16, dtype="fp32")
H200 = {"device_kind": "cuda", "gpu_name": "NVIDIA H200", "sm_count": 132, "torch": "2.11.0", "cuda": "13.0"}
A100 = dict(H200, gpu_name="NVIDIA A100-SXM4-80GB", sm_count=108)


def meas(w, env_id, median=1.0, impl="sdpa-math"):
    return Measurement(workload=w, impl=impl, status="ok", env_id=env_id, timer="fake", device="cuda",
                       samples_ms=tuple(median * (1 + 0.01 * i) for i in range(10)))


def two_env_store(tmp_path):
    store = Store(tmp_path / "r.db")
    store.add_environment("envh200", H200)
    store.add_environment("enva100", A100)
    mixed = store.start_run("envh200", {})
    store.add(mixed, meas(W, "envh200"))
    store.add(mixed, meas(W.replace(causal=True), "enva100"))
    plain = store.start_run("envh200", {})
    store.add(plain, meas(W, "envh200", 1.1))
    store.add(plain, meas(W.replace(causal=True), "envh200", 1.1))
    return store, mixed, plain


def test_compare_refuses_a_run_that_holds_two_environments(tmp_path):
    store, mixed, plain = two_env_store(tmp_path)
    for a, b in ((mixed, plain), (plain, mixed)):
        with pytest.raises(UserError, match=f"run {mixed} holds measurements from different environments "
                                            r"\(gpu_name: NVIDIA H200 -> NVIDIA A100"):
            compare_runs(store, a, b, allow_env_mismatch=True)
    assert compare_runs(store, plain, plain).rows  # one environment: compared as before
    store.close()


def test_the_report_names_the_device_of_every_row_when_a_run_holds_several(tmp_path):
    store, mixed, plain = two_env_store(tmp_path)
    md = tables.markdown(store, mixed)
    assert "Device: 2 environments (NVIDIA H200" in md and "never pooled" in md
    assert "| workload | impl | device | status |" in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| B1")]
    assert "NVIDIA H200 · envh20" in lines[0] and "NVIDIA A100-SXM4-80GB · enva10" in lines[1]
    assert "| device |" not in tables.markdown(store, plain)  # one environment: the table is as before
    data = tables.json_report(store, mixed)
    assert set(data["environments"]) == {"envh200", "enva100"}
    assert data["environments"]["enva100"]["gpu_name"] == "NVIDIA A100-SXM4-80GB"
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(tables.csv_report(store, mixed))))
    assert [(r["env_id"], r["device"]) for r in rows] == [("envh200", "NVIDIA H200"),
                                                          ("enva100", "NVIDIA A100-SXM4-80GB")]
    from attnbench.report.html import gather_run, render_run

    # The page's table and plots keep each device's rows apart (a plot line never joins two GPUs).
    assert [e.series for e in gather_run(store, mixed).entries] == [
        "sdpa-math · NVIDIA H200 · envh20", "sdpa-math · NVIDIA A100-SXM4-80GB · enva10"]
    assert "NVIDIA A100-SXM4-80GB · enva10" in render_run(store, mixed)
    assert [e.series for e in gather_run(store, plain).entries] == ["sdpa-math"] * 2
    store.close()


class TwoGpus:
    """A measurer whose cells come back from two environments, as from workers of two GPU models."""

    def fingerprint(self):
        return H200

    def ceilings(self, dtypes):
        return None

    def measure(self, cells, timer, policy, name):
        return [meas(c.workload, ("envh200", "enva100")[i % 2], impl=c.impl) for i, c in enumerate(cells)]


def test_gate_refuses_measurements_from_two_environments(tmp_path):
    opts = gr.GateOptions(str(tmp_path / "base.json"), update=True, workloads=[W, W.replace(causal=True)],
                          impls=["sdpa-math"], repeats=1)
    with pytest.raises(UserError, match="gate: the measurements come from 2 environments"):
        gr.run_gate(opts, TwoGpus())
    assert not (tmp_path / "base.json").exists()


class _Workers:
    """Stands in for a distributed executor whose workers are of two environments."""

    distributed = True

    def probe(self, setup):
        from attnbench.execute.worker import WorkerInfo

        return [WorkerInfo(str(i), f"tcp://w{i}", "h", "cuda", "cold", e, fp)
                for i, (e, fp) in enumerate((("envh200", H200), ("enva100", A100)))]


def test_gate_and_tune_refuse_workers_of_two_environments(tmp_path):
    from attnbench.tune.tuner import TuneConfig, tune

    with Store(tmp_path / "r.db") as store:
        with pytest.raises(UserError, match="gate: the workers hold 2 environments"):
            gr.RunnerMeasurer(store, "cuda", executor=_Workers()).fingerprint()
        with pytest.raises(UserError, match="tune: the workers hold 2 environments"):
            tune(TuneConfig(workloads=[W], impls=["sdpa-math"]), store, executor=_Workers())
