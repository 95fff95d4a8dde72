import weakref

import pytest

from attnbench.errors import UserError
from attnbench.measure.runner import RunConfig, measure_cell, run
from attnbench.impls import Alias, resolve
from attnbench.spec import Workload
from attnbench.store import Store
from attnbench.measure.timing import FakeTimer, Sample, TimingPolicy

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


# -- run --repeats ---------------------------------------------------------------------------------


def test_repeats_pool_into_one_measurement_per_cell_in_sweep_order(tmp_path):
    config = cfg(["sdpa-math", "reference"])
    config.repeats = 3
    emitted = []
    with Store(tmp_path / "r.db") as store:
        rid = run(config, store, timer=FakeTimer(median_ms=1.0), progress=False,
                  on_measurement=lambda m: emitted.append((m.cell, len(m.extra["repeats"]))))
        ms = store.measurements(rid)
        assert store.run(rid).config["repeats"] == 3
    assert [(m.workload, m.impl) for m in ms] == [(W1, "sdpa-math"), (W1, "reference"), (W2, "sdpa-math"),
                                                  (W2, "reference")]  # the sweep's order, whatever the passes'
    for m in ms:
        assert m.status == "ok" and len(m.samples_ms) == 15 and m.batch_sizes == (1,) * 15
        reps = m.extra["repeats"]
        assert [r["repeat"] for r in reps] == [1, 2, 3] and [r["seed"] for r in reps] == [0, 1, 2]
        assert all(r["n"] == 5 and r["batches"] == 5 and r["median_ms"] > 0 for r in reps)
        assert m.stop_reason == "fixed" and len(m.host_ms) == len(m.clocks_mhz) == 15
    # Repeat-major: every cell once before any cell twice; later passes in another (seeded) order.
    assert [n for _, n in emitted] == [1] * 4 + [2] * 4 + [3] * 4
    orders = [[c for c, n in emitted if n == k] for k in (1, 2, 3)]
    assert orders[0] == [m.cell for m in ms] and sorted(orders[1]) == sorted(orders[0]) and orders[1:] != orders[:2]
    assert config.hash() != cfg(["sdpa-math", "reference"]).hash()
    assert "repeats" not in cfg(["sdpa-math"]).to_dict()  # one pass: the configuration (and its hash) as before


def test_repeats_are_resumed_after_an_interruption_keeping_every_sample(tmp_path):
    config = cfg(["sdpa-math", "reference"], [W1])
    config.repeats = 3
    seen = []

    def stop_in_second_pass(m):
        seen.append(len(m.extra["repeats"]))
        if len(seen) == 3:  # pass 1: two cells; pass 2: the first cell, then stop
            raise KeyboardInterrupt

    with Store(tmp_path / "r.db") as store:
        with pytest.raises(KeyboardInterrupt):
            run(config, store, timer=FakeTimer(), progress=False, on_measurement=stop_in_second_pass)
        first = store.run()
        assert first.status == "interrupted"
        before = {m.cell: m.samples_ms for m in store.measurements(first.run_id)}
        assert sorted(len(x) for x in before.values()) == [5, 10]
        rid = run(config, store, timer=FakeTimer(seed=1), resume=True, progress=False)
        assert rid == first.run_id and store.run(rid).status == "complete"
        for m in store.measurements(rid):
            assert len(m.samples_ms) == 15 and m.samples_ms[:len(before[m.cell])] == before[m.cell]
            assert [r["repeat"] for r in m.extra["repeats"]] == [1, 2, 3]


FLAKY = {"broken": False}


def flaky(q, k, v, **kw):
    """A plugin that works until FLAKY['broken'] is set."""
    import torch.nn.functional as F

    if FLAKY["broken"]:
        raise RuntimeError("kernel went bad")
    return F.scaled_dot_product_attention(q, k, v, **kw)


def test_a_repeat_that_fails_fails_the_cell_and_keeps_the_earlier_samples(tmp_path):
    FLAKY["broken"] = False
    config = cfg(["tests.measure.test_runner:flaky"], [W1])
    config.repeats = 3

    def break_after_first(m):
        FLAKY["broken"] = True

    with Store(tmp_path / "r.db") as store:
        rid = run(config, store, timer=FakeTimer(), progress=False, on_measurement=break_after_first)
        (m,) = store.measurements(rid)
    FLAKY["broken"] = False
    assert m.status == "error" and m.reason.startswith("repeat 2: first call: RuntimeError: kernel went bad")
    assert len(m.samples_ms) == 5 and [r["status"] for r in m.extra["repeats"]] == ["ok", "error"]
    assert not m.ok  # no longer compared or reported as a timing


def test_interleaved_repeats_are_sessions_of_their_own(tmp_path):
    config = cfg(["sdpa-math", "reference"], [W1])
    config.repeats, config.interleave = 2, True
    with Store(tmp_path / "r.db") as store:
        rid = run(config, store, timer=FakeTimer(), progress=False)
        ms = store.measurements(rid)
    sessions = [[r["session"] for r in m.extra["repeats"]] for m in ms]
    assert sessions[0] == sessions[1] and sessions[0][0] != sessions[0][1]  # shared per pass, new each pass


def test_repeats_must_be_positive(tmp_path):
    config = cfg(["sdpa-math"], [W1])
    config.repeats = 0
    with Store(tmp_path / "r.db") as store, pytest.raises(UserError, match="--repeats must be at least 1"):
        run(config, store, timer=FakeTimer(), progress=False)


def test_a_cpu_cell_larger_than_the_available_memory_is_not_attempted(tmp_path, monkeypatch):
    """A GPU-sized cell on a CPU is recorded `oom` with its size, never allocated; the sweep goes on."""
    import collections

    import psutil

    from attnbench.impls import footprint_bytes

    big = W1.replace(batch=64, q_len=4096, kv_len=4096, head_dim=128)   # 1.25 GiB: Q, K, V, out, an fp32 draw
    assert footprint_bytes(big) == 4 * (2 * 64 * 2 * 4096 * 128 * 2) + 4 * 64 * 2 * 4096 * 128
    mem = collections.namedtuple("mem", "available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: mem(2**29))  # 512 MiB available
    with Store(tmp_path / "r.db") as store:
        rid = run(cfg(["sdpa-math"], [big, W1]), store, timer=FakeTimer(median_ms=2.0), progress=False)
        first, second = store.measurements(rid)
    assert first.status == "oom" and "not attempted" in first.reason and "1.2 GiB" in first.reason, first.reason
    assert second.status == "ok"


class _BadSamples(FakeTimer):
    """A FakeTimer whose every batch holds one of `values` in place of its first sample."""

    def __init__(self, value, **kw):
        super().__init__(**kw)
        self.value = value

    def run(self, fn, n):
        out = super().run(fn, n)
        return [Sample(self.value, s.host_ms, s.clock_mhz) if i == 0 else s for i, s in enumerate(out)]


@pytest.mark.parametrize("value, kind", [(float("inf"), "inf"), (float("nan"), "NaN"), (0.0, "zero"),
                                         (-0.002, "negative")])
def test_invalid_samples_make_the_cell_an_error_that_says_which(value, kind):
    """An infinite reading passed as a time (the check was x == x and x > 0), and its median was stored."""
    policy = TimingPolicy(warmup_ms=0.0, min_samples=10, max_samples=20)
    m = measure_cell(resolve("sdpa-math"), W1, "cpu", _BadSamples(value), policy)
    assert m.status == "error" and m.samples_ms == ()
    assert m.reason == f"timer returned 10 invalid samples of 20 (10 {kind})"
    assert m.compile_ms is not None and m.compile_ms > 0


class _CtrlC(FakeTimer):
    """A FakeTimer that raises KeyboardInterrupt at its `at`-th run() call (1-based), mid-batch."""

    def __init__(self, at: int, **kw):
        super().__init__(**kw)
        self.at = at

    def run(self, fn, n):
        if len(self.log) + 1 == self.at:
            self.log.append((fn, n, self._now))
            raise KeyboardInterrupt
        return super().run(fn, n)


def test_an_interruption_mid_measurement_keeps_its_completed_batches_and_resume_retakes_the_cell(tmp_path):
    """Ctrl-C during a cell's sampling lost every sample of that cell; now its completed batches are stored
    with stop reason 'interrupted', and --resume measures that cell again (in place of the partial one)."""
    from attnbench.measure.timing import measure

    policy = TimingPolicy(warmup_ms=0.5, min_samples=10, max_samples=50)  # one warm-up call; 10 batches of 5
    with pytest.raises(KeyboardInterrupt) as info:
        measure(_CtrlC(at=6), lambda: None, policy)  # run() 1: the first call, 2: warm-up, 3-5: three batches
    assert type(info.value) is KeyboardInterrupt  # re-raised as it was (SIGTERM's cli.Terminated stays one)
    r = info.value.timings[""]
    assert r.stop_reason == "interrupted" and r.batch_sizes == [5, 5, 5] and len(r.samples_ms) == 15

    config = RunConfig(workloads=[W1], impls=["sdpa-math", "reference"], device="cpu", policy=policy)
    with Store(tmp_path / "r.db") as store:
        with pytest.raises(KeyboardInterrupt):
            # cell 1: first call, warm-up, 10 batches = 12 run() calls; cell 2: the same to 3 batches, then Ctrl-C
            run(config, store, timer=_CtrlC(at=12 + 6), progress=False)
        info = store.run()
        assert info.status == "interrupted"
        first, cut = store.measurements(info.run_id)
        assert first.stop_reason == "fixed" and len(first.samples_ms) == 50
        assert cut.status == "ok" and cut.stop_reason == "interrupted" and cut.batch_sizes == (5, 5, 5)
        again = []
        other = FakeTimer(seed=1)
        other.mode = "fake-b"  # as --timer auto may pick another mode the second time: the partial row goes
        rid = run(config, store, timer=other, resume=True, progress=False,
                  on_measurement=lambda m: again.append(m.impl))
        assert rid == info.run_id and again == ["reference"] and store.run(rid).status == "complete"
        final = store.measurements(rid)
        assert [m.stop_reason for m in final] == ["fixed", "fixed"] and final[0].samples_ms == first.samples_ms
        assert final[1].timer == "fake-b"


def test_an_interleaved_interruption_keeps_every_cells_completed_rounds(tmp_path):
    policy = TimingPolicy(warmup_ms=0.5, min_samples=10, max_samples=50)
    config = RunConfig(workloads=[W1], impls=["sdpa-math", "reference"], device="cpu", policy=policy,
                       interleave=True)
    with Store(tmp_path / "r.db") as store:
        with pytest.raises(KeyboardInterrupt):  # two first calls, two warm-ups, four rounds, then Ctrl-C
            run(config, store, timer=_CtrlC(at=4 + 2 * 4 + 1), progress=False)
        ms = store.measurements(store.run().run_id)
        assert [m.stop_reason for m in ms] == ["interrupted", "interrupted"]
        assert sorted(len(m.batch_sizes) for m in ms) == [4, 4]
        assert all(m.extra["timing"]["interleaved"]["rounds"] >= 4 for m in ms)
