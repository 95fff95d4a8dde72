import weakref

import pytest

from attnbench.errors import UserError
from attnbench.measure.runner import RunConfig, measure_cell, run
from attnbench.impls import Alias, resolve
from attnbench.spec import Workload
from attnbench.store import Store
from attnbench.measure.timing import FakeTimer, TimingPolicy

W1 = Workload(batch=1, q_heads=2, kv_heads=2, q_len=64, kv_len=64, head_dim=16, dtype="fp32")
W2 = W1.replace(causal=True)
FAST = TimingPolicy(warmup_ms=0.0, min_samples=5, max_samples=5)
FIX = "tests.fixtures.kernels"


def cfg(impls, workloads=(W1, W2)):
    return RunConfig(workloads=list(workloads), impls=impls, device="cpu", policy=FAST)


def test_statuses_for_every_kind_of_outcome(tmp_path):
    impls = ["sdpa-math", "sdpa-cudnn", f"{FIX}:blockwise_qkv", f"{FIX}:query_chunked", f"{FIX}:raises",
             f"{FIX}:cpu_unsupported", f"{FIX}:leaves_gaps"]
    with Store(tmp_path / "r.db") as store:
        rid = run(cfg(impls, [W1]), store, timer=FakeTimer(median_ms=2.0), progress=False)
        by = {m.impl.split(":")[-1]: m for m in store.measurements(rid)}
        assert by["sdpa-math"].status == "ok" and len(by["sdpa-math"].samples_ms) == 5
        assert by["sdpa-math"].backend == "math"
        assert by["sdpa-cudnn"].status == "unsupported" and "CUDA" in by["sdpa-cudnn"].reason
        assert by["blockwise_qkv"].status == "incorrect" and by["blockwise_qkv"].samples_ms == ()
        assert by["blockwise_qkv"].rel_err > 0.5
        assert by["query_chunked"].status == "ok"
        assert by["raises"].status == "error" and "kernel exploded" in by["raises"].reason
        assert "\n" not in by["raises"].reason
        assert by["cpu_unsupported"].status == "unsupported"
        assert by["leaves_gaps"].status == "incorrect"
        assert store.run(rid).status == "complete"


def test_sdpa_auto_records_the_backend_that_ran(tmp_path):
    with Store(tmp_path / "r.db") as store:
        rid = run(cfg(["sdpa-auto"], [W1]), store, timer=FakeTimer(), progress=False)
        (m,) = store.measurements(rid)
        assert m.status == "ok"
        assert m.backend in ("flash", "math")  # what torch's CPU dispatcher picked, read from the profiler


def test_interrupted_run_resumes_without_remeasuring(tmp_path):
    config = cfg(["sdpa-math", "reference"])
    seen = []

    def stop_after_two(m):
        seen.append(m.cell)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with Store(tmp_path / "r.db") as store:
        with pytest.raises(KeyboardInterrupt):
            run(config, store, timer=FakeTimer(), progress=False, on_measurement=stop_after_two)
        first = store.run()
        assert first.status == "interrupted" and first.n_measurements == 2
        stored_before = {m.cell: m.samples_ms for m in store.measurements(first.run_id)}
        again = []
        rid = run(config, store, timer=FakeTimer(seed=1), resume=True, progress=False,
                  on_measurement=lambda m: again.append(m.cell))
        assert rid == first.run_id
        assert len(again) == 2 and not set(again) & set(seen)  # only the missing cells were measured
        final = store.measurements(rid)
        assert len(final) == 4 and store.run(rid).status == "complete"
        assert all(m.samples_ms == stored_before[m.cell] for m in final if m.cell in stored_before)
        # A new run (no --resume) starts afresh.
        assert run(config, store, timer=FakeTimer(), progress=False) != rid


def test_params_expand_cells_and_reach_the_impl(tmp_path):
    config = cfg([f"{FIX}:blockwise_qkv"], [W1])
    config.params = {f"{FIX}:blockwise_qkv": [{"chunks": 1}, {"chunks": 4}]}
    with Store(tmp_path / "r.db") as store:
        rid = run(config, store, timer=FakeTimer(), progress=False)
        by = {m.params["chunks"]: m for m in store.measurements(rid)}
        assert by[1].status == "ok"  # one chunk is plain attention
        assert by[4].status == "incorrect"


CALLS: list[tuple[str, bool, int]] = []  # (tag, causal, q.data_ptr()) of every call of a recording plugin
LIVE: list[int] = []  # at each cell's supports(): how many q tensors the plugin saw are still alive
SEEN: list[weakref.ref] = []


def _recording(tag):
    """A plugin that records the q tensor it is called on, then runs SDPA."""
    def fn(q, k, v, **kw):
        import torch.nn.functional as F

        CALLS.append((tag, kw["is_causal"], q.data_ptr()))
        SEEN.append(weakref.ref(q))
        return F.scaled_dot_product_attention(q, k, v, **kw)

    def supports(workload, device):
        LIVE.append(sum(ref() is not None for ref in SEEN))
        return None

    fn.supports = supports
    return fn


record_a, record_b = _recording("a"), _recording("b")


class ForgetfulTimer(FakeTimer):
    """A FakeTimer without its log, which would keep every timed call, and so its tensors, alive."""

    def run(self, fn, n):
        out = super().run(fn, n)
        self.log.clear()
        return out


def test_interleaved_cells_share_one_set_of_inputs_freed_before_the_next_workload(tmp_path):
    for records in (CALLS, LIVE, SEEN):
        records.clear()
    config = cfg([f"tests.measure.test_runner:record_{t}" for t in "ab"])
    config.interleave = True
    with Store(tmp_path / "r.db") as store:
        rid = run(config, store, timer=ForgetfulTimer(), progress=False)
        assert [m.status for m in store.measurements(rid)] == ["ok"] * 4
    for causal in (False, True):
        timed = {tag: ptr for tag, c, ptr in CALLS if c == causal}  # the last call of each: a timed one
        assert timed["a"] == timed["b"]
    assert LIVE[2] == 0  # the first workload's tensors are gone when the second one's first cell starts


def test_an_alias_is_a_second_cell_of_the_same_impl_stored_by_name(tmp_path):
    config = cfg(["sdpa-math", Alias(resolve("sdpa-math"), "sdpa-math (B)")], [W1])
    config.interleave = True
    with Store(tmp_path / "r.db") as store:
        rid = run(config, store, timer=FakeTimer(), progress=False)
        ms = store.measurements(rid)
        assert [(m.impl, m.status, m.backend) for m in ms] == [("sdpa-math", "ok", "math"),
                                                               ("sdpa-math (B)", "ok", "math")]
        assert store.run(rid).config["impls"] == ["sdpa-math", "sdpa-math (B)"]
    by_name = cfg(["sdpa-math", "sdpa-math (B)"], [W1])
    by_name.interleave = True
    assert config.hash() == by_name.hash()


def test_measure_cell_keeps_compile_time_apart():
    m = measure_cell(resolve("sdpa-math"), W1, "cpu", FakeTimer(median_ms=5.0), FAST)
    assert m.status == "ok" and m.compile_ms is not None and m.compile_ms < 5_000
    assert all(4.0 < x < 6.0 for x in m.samples_ms)
    assert m.stop_reason == "fixed" and m.rel_err < 1e-5


def test_bad_config_is_a_user_error(tmp_path):
    with Store(tmp_path / "r.db") as store:
        with pytest.raises(UserError, match="unknown impl 'nope'"):
            run(cfg(["nope"]), store, timer=FakeTimer(), progress=False)
        with pytest.raises(UserError, match="no workloads"):
            run(cfg(["sdpa-math"], []), store, timer=FakeTimer(), progress=False)
        with pytest.raises(UserError, match="cannot import"):
            run(cfg(["no_such_module:fn"]), store, timer=FakeTimer(), progress=False)


@pytest.mark.slow
def test_flex_compiles_once_per_workload_and_is_checked(tmp_path):
    with Store(tmp_path / "r.db") as store:
        rid = run(cfg(["flex"]), store, timer=FakeTimer(), progress=False)
        ms = store.measurements(rid)
        assert [m.status for m in ms] == ["ok", "ok"], [m.reason for m in ms]
        assert all(m.rel_err < 1e-4 for m in ms)
        assert all(m.compile_ms > 0 for m in ms)
