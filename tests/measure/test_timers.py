"""The `auto` timer policy (AutoTimer + the runner) with fake timers: probe, choice, record, fallback."""

import pytest

from attnbench.impls import resolve
from attnbench.measure.cuda_timers import GraphCaptureError
from attnbench.measure.runner import RunConfig, measure_cell, run
from attnbench.measure.timers import AUTO_GRAPH_BELOW_MS, TIMER_TEXT, AutoTimer, FakeTimer
from attnbench.measure.timing import TimingPolicy
from attnbench.report.tables import markdown
from attnbench.spec import Workload
from attnbench.store import Store

W = Workload(batch=1, q_heads=2, kv_heads=2, q_len=32, kv_len=32, head_dim=16, dtype="fp32")
FAST = TimingPolicy(warmup_ms=0.0, min_samples=5, max_samples=5)


class Factory:
    """Fake timers by mode: `cold` reads `cold_ms`, `graph` reads `graph_ms`; each made once and logged."""

    def __init__(self, cold_ms, graph_ms, graph_fails=False):
        self.cold_ms, self.graph_ms, self.graph_fails = cold_ms, graph_ms, graph_fails
        self.made = []

    def __call__(self, mode):
        self.made.append(mode)
        if mode == "graph" and self.graph_fails:
            t = CaptureFails()
        else:
            t = FakeTimer(median_ms=self.cold_ms if mode == "cold" else self.graph_ms, spread=0.01, seed=len(self.made))
        t.mode = mode
        return t


class CaptureFails(FakeTimer):
    def run(self, fn, n):
        raise GraphCaptureError("cannot capture the call in a CUDA graph: RuntimeError: synchronizes")


def test_choose_picks_graph_under_the_threshold_from_the_fastest_probe():
    auto = AutoTimer(Factory(1.0, 1.0))
    assert auto.choose([0.007])[0] == "graph"
    assert auto.choose([AUTO_GRAPH_BELOW_MS * 1.01])[0] == "cold"
    mode, info = auto.choose([0.5, 0.012])          # cells timed together share the fastest's mode
    assert mode == "graph" and info["fastest_probe_ms"] == 0.012 and "under 20 us" in info["rule"]
    assert AutoTimer(Factory(1, 1), threshold_ms=0.005).choose([0.007])[0] == "cold"


@pytest.mark.parametrize("cold_ms, graph_ms, want", [(0.009, 0.007, "graph"), (0.400, 0.390, "cold")])
def test_a_cell_is_probed_then_timed_by_the_chosen_mode_and_says_so(cold_ms, graph_ms, want):
    factory = Factory(cold_ms, graph_ms)
    m = measure_cell(resolve("sdpa-math"), W, "cpu", AutoTimer(factory), FAST)
    assert m.status == "ok" and m.timer == want
    choice = m.extra["timer_choice"]
    assert choice["chose"] == want and choice["probe_calls"] == 5 and "fallback" not in choice
    assert choice["probe_ms"] == pytest.approx(cold_ms, rel=0.05)        # the probe is the cold timer's
    used = graph_ms if want == "graph" else cold_ms
    assert all(abs(x / used - 1) < 0.1 for x in m.samples_ms)             # the samples are the chosen one's
    assert factory.made == (["cold", "graph"] if want == "graph" else ["cold"])


def test_a_graph_capture_failure_falls_back_to_cold_and_is_recorded():
    m = measure_cell(resolve("sdpa-math"), W, "cpu", AutoTimer(Factory(0.008, 0.007, graph_fails=True)), FAST)
    assert m.status == "ok" and m.timer == "cold"
    assert m.extra["timer_choice"]["chose"] == "cold"
    assert "graph capture failed" in m.extra["timer_choice"]["fallback"]
    assert all(abs(x / 0.008 - 1) < 0.1 for x in m.samples_ms)


def test_an_explicit_graph_timer_still_errors_on_a_capture_failure():
    t = CaptureFails()
    t.mode = "graph"
    m = measure_cell(resolve("sdpa-math"), W, "cpu", t, FAST)
    assert m.status == "error" and "CUDA graph" in m.reason


def test_run_with_auto_records_modes_rule_and_unsupported_rows(tmp_path):
    config = RunConfig(workloads=[W, W.replace(q_len=64, kv_len=64)], impls=["sdpa-math", "sdpa-cudnn"],
                       device="cpu", policy=FAST)
    with Store(tmp_path / "r.db") as store:
        rid = run(config, store, timer=AutoTimer(Factory(0.009, 0.007)), progress=False)
        ms = store.measurements(rid)
        assert [(m.impl, m.status, m.timer) for m in ms] == [
            ("sdpa-math", "ok", "graph"), ("sdpa-cudnn", "unsupported", "auto")] * 2
        assert store.run(rid).config["timer_mode"] == "auto"
        text = markdown(store, rid)
    assert "timer graph (auto, probe 9" in text
    assert TIMER_TEXT["auto"] in text and TIMER_TEXT["graph"] in text


def test_interleaved_cells_share_one_mode_chosen_by_the_fastest(tmp_path):
    fast, slow = "tests.fixtures.kernels:query_chunked", "sdpa-math"
    factory = Factory(0.3, 0.25)
    auto = AutoTimer(factory)
    probes = iter([0.300, 0.012])  # the second cell probes short: the group goes to graph

    auto.probe = lambda fn: next(probes)
    config = RunConfig(workloads=[W], impls=[slow, fast], device="cpu", policy=FAST, interleave=True)
    with Store(tmp_path / "r.db") as store:
        rid = run(config, store, timer=auto, progress=False)
        ms = store.measurements(rid)
    assert [m.timer for m in ms] == ["graph", "graph"]
    assert [m.extra["timer_choice"]["probe_ms"] for m in ms] == [0.3, 0.012]
    assert {m.extra["timer_choice"]["fastest_probe_ms"] for m in ms} == {0.012}


def test_interleaved_graph_failure_times_the_whole_group_with_cold(tmp_path):
    config = RunConfig(workloads=[W], impls=["sdpa-math", "reference"], device="cpu", policy=FAST, interleave=True)
    with Store(tmp_path / "r.db") as store:
        rid = run(config, store, timer=AutoTimer(Factory(0.008, 0.007, graph_fails=True)), progress=False)
        ms = store.measurements(rid)
    assert [(m.status, m.timer) for m in ms] == [("ok", "cold"), ("ok", "cold")]
    assert all("graph capture failed" in m.extra["timer_choice"]["fallback"] for m in ms)


def test_timer_accuracy_has_decode_shapes_and_judges_auto_from_5_us():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "timer_accuracy.py"
    spec = importlib.util.spec_from_file_location("bench_timer_accuracy_decode", path)
    ta = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ta)
    todo = ta.cases(flex=False, decode=True)
    assert len(todo) == 3 * len(ta.DECODE_SHAPES) and all(s in ta.DECODE_SHAPES for s, _ in todo)
    for shape in ta.DECODE_SHAPES:
        w = ta.workload(shape)
        assert w.mask == "causal-br" and w.dtype == "bf16" and w.q_len in (1, 16)
        assert 16 * 2**20 <= 2 * w.batch * w.kv_heads * w.kv_len * w.head_dim * 2 <= 300 * 2**20
    case = {"shape": "dec B1 H32/8 kv4k", "ncu": {"ms": 0.006, "cycles": 10_000},
            "timers": {"auto": {"chose": "graph", "ms": 0.0065}}}
    assert ta.verdict(case)["met"] is True          # 8% high
    case["timers"]["auto"]["ms"] = 0.0068
    assert ta.verdict(case)["met"] is False         # 13% high
    case["ncu"]["ms"] = 0.004
    assert ta.verdict(case)["met"] is None          # under 5 us: not judged
