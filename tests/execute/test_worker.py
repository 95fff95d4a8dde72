"""The worker side, called directly (no cluster): one task measured with the sweep's session, nothing stored."""

from functools import partial

from attnbench.execute import worker
from attnbench.execute.worker import Setup, WorkloadTask, measure_task, probe
from attnbench.measure.timing import FakeTimer, TimingPolicy
from attnbench.spec import Workload

W = Workload(batch=1, q_heads=2, kv_heads=2, q_len=32, kv_len=32, head_dim=16, dtype="fp32")
FAST = TimingPolicy(warmup_ms=0.0, min_samples=3, max_samples=3)


def test_a_task_is_measured_with_the_sweeps_session_and_returned():
    setup = Setup(token="a", impls=("reference", "tests.fixtures.kernels:blockwise_qkv"), device="cpu",
                  timer_factory=partial(FakeTimer, median_ms=0.25), policy=FAST, topic="attnbench-a")
    info = probe(setup)
    assert info.device == "cpu" and info.timer_mode == "fake" and info.env_id and info.label == "wlocal"
    timer = worker._STATE["timer"]
    res = measure_task(WorkloadTask(setup, W, ((0, {}), (1, {"chunks": 2}))))
    assert [(m.impl, m.status) for m in res.measurements] == [
        ("reference", "ok"), ("tests.fixtures.kernels:blockwise_qkv", "incorrect")]
    assert res.measurements[1].params == {"chunks": 2} and res.worker == info
    assert all(m.env_id == info.env_id and m.extra["worker"].startswith("wlocal@") for m in res.measurements)
    assert all(0.2 < x < 0.3 for x in res.measurements[0].samples_ms)
    measure_task(WorkloadTask(setup, W.replace(causal=True), ((0, {}),)))
    assert worker._STATE["timer"] is timer  # one timer (and typical clock) per sweep and process
    probe(Setup(token="b", impls=("reference",), device="cpu", timer_factory=FakeTimer))
    assert worker._STATE["timer"] is not timer  # a new sweep starts afresh


def test_a_worker_named_by_its_address_is_labelled_by_it():
    from attnbench.execute.worker import WorkerInfo

    named = WorkerInfo("3", "tcp://10.0.0.7:4100", "h", "cuda", "cold", "e", {}, visible="3")
    by_address = WorkerInfo("tcp://10.0.0.7:4100", "tcp://10.0.0.7:4100", "h", "cpu", "host", "e", {})
    assert named.label == "w3/gpu3" and by_address.label == "10.0.0.7:4100"
