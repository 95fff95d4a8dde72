"""tune: correctness gate, racing vs exhaustive, the cache, budgets, capacity planning, parsers."""

from collections import Counter

import pytest

from attnbench.tune.capacity import capacity_json, capacity_markdown, plan_capacity
from attnbench.errors import UserError
from attnbench.analysis.roofline import Ceilings
from attnbench.spec import Workload
from attnbench.store import Store
from attnbench.measure.timing import FakeTimer
from attnbench.tune.tuner import RacingPolicy, TuneConfig, expand_ellipsis, parse_duration, parse_ms, tune
from attnbench.tune.report import dispatch_table, markdown

W = Workload(batch=1, q_heads=2, kv_heads=2, q_len=32, kv_len=32, head_dim=16, dtype="fp32")
CHUNKED = "tests.fixtures.kernels:blockwise_qkv"
EXACT = "tests.fixtures.kernels:query_chunked"
SPY = "tests.tune.test_tune:spy_kernel"
BUILDS = Counter()


def spy_kernel(q, k, v, is_causal=False, enable_gqa=False, **_):
    """Exact attention that counts its calls (a build's first call and the correctness check call it)."""
    import torch.nn.functional as F

    BUILDS["spy"] += 1
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=enable_gqa)


class ByImplTimer(FakeTimer):
    """A fake timer whose median depends on the candidate tune says it is timing (via select)."""

    def __init__(self, medians, spread=0.02, seed=0, default=1.0):
        super().__init__(median_ms=default, spread=spread, seed=seed, call=False)
        self.medians, self.default = medians, default
        self.counts: Counter = Counter()
        self.runs = 0
        self.current = None

    def select(self, impl, params, workload):
        self.current = impl
        m = self.medians.get(impl, self.default)
        self.median_ms = m(workload) if callable(m) else m

    def run(self, fn, n):
        self.runs += 1
        self.counts[self.current] += n
        return super().run(fn, n)


FP = {"device_kind": "cpu", "torch": "test", "cpu_model": "test-cpu"}


def _tune(impls, medians, *, store=None, spread=0.02, fingerprint=FP, **cfg):
    timer = ByImplTimer(medians, spread=spread)
    cfg.setdefault("budget_s", None)
    config = TuneConfig(workloads=cfg.pop("workloads", [W]), impls=impls, device="cpu", **cfg)
    store = store or Store(":memory:")
    return tune(config, store, timer=timer, fingerprint=fingerprint), timer, store


def test_racing_picks_the_fastest_and_drops_clearly_slower_ones_early():
    medians = {"sdpa-flash": 1.0, "sdpa-auto": 1.06, "sdpa-math": 1.5, "reference": 5.0}
    impls = ["sdpa-flash", "sdpa-math", "reference"]  # sdpa-auto joins as the baseline
    race, rt, _ = _tune(impls, medians)
    full, et, _ = _tune(impls, medians, exhaustive=True)
    r, e = race.workloads[0], full.workloads[0]
    assert r.chosen == e.chosen == "sdpa-flash"
    assert r.stop_reason == "one-left" and e.stop_reason == "exhaustive"
    ref = r.get("reference")
    assert ref.dropped_round == 1 and len(ref.samples_ms) == RacingPolicy().first_samples
    assert "above sdpa-flash's upper bound" in ref.note
    assert r.get("sdpa-math").dropped_round == 1
    assert r.get("sdpa-auto").dropped_round is not None  # 6% slower: needs a few rounds, but goes
    assert all(len(c.samples_ms) == 100 for c in e.candidates)
    assert r.cost["samples"] < 0.5 * e.cost["samples"]
    assert r.cost["measure_ms"] < 0.3 * e.cost["measure_ms"]  # the slow ones dominate exhaustive time
    assert rt.counts["reference"] < et.counts["reference"] / 5
    # ranked by median; the speedup over sdpa-auto is about 1.06 with a CI around it
    assert [c.label for c in r.candidates] == ["sdpa-flash", "sdpa-auto", "sdpa-math", "reference"]
    s = r.speedup
    assert s["baseline"] == "sdpa-auto" and s["lo"] <= s["value"] <= s["hi"] and s["value"] == pytest.approx(1.06, rel=0.03)


def test_chunked_qkv_plugin_is_rejected_and_never_wins_even_when_fastest():
    medians = {CHUNKED: 0.01, "tests.fixtures.kernels:leaves_gaps": 0.01, EXACT: 0.9, "sdpa-math": 1.0}
    impls = ["sdpa-math", CHUNKED, EXACT, "tests.fixtures.kernels:leaves_gaps", "tests.fixtures.kernels:raises",
             "tests.fixtures.kernels:cpu_unsupported"]
    result, timer, _ = _tune(impls, medians, workloads=[W, W.replace(causal=True)])
    for r in result.workloads:
        status = {c.impl: (c.status, c.reason) for c in r.candidates}
        assert status[CHUNKED][0] == "incorrect" and "relative error" in status[CHUNKED][1]
        assert status["tests.fixtures.kernels:leaves_gaps"][0] == "incorrect"
        assert status["tests.fixtures.kernels:raises"] == ("error", "first call: RuntimeError: kernel exploded")
        assert status["tests.fixtures.kernels:cpu_unsupported"] == ("unsupported", "this test kernel never runs")
        assert r.chosen == EXACT  # the fastest *correct* one
        assert r.get(CHUNKED).samples_ms == ()  # never timed
    assert timer.counts[CHUNKED] == 0
    md = markdown(result)
    assert f"| {CHUNKED} | incorrect | relative error" in md
    table = dispatch_table(result)
    assert all(e.impl != CHUNKED for e in table.entries.values())


def test_implausible_timings_are_rejected():
    tiny = Ceilings(tflops={"fp32": 1e-6}, gbps=1e-3, tflops_source={"fp32": "measured"},
                           gbps_source="measured")
    timer = ByImplTimer({"sdpa-math": 1.0})
    config = TuneConfig(workloads=[W], impls=["sdpa-math"], baseline="", device="cpu", budget_s=None)
    r = tune(config, Store(":memory:"), timer=timer, fingerprint=FP, ceilings=tiny).workloads[0]
    c = r.get("sdpa-math")
    assert c.status == "implausible" and "TFLOP/s" in c.reason
    assert r.chosen is None and r.stop_reason == "none-correct"


def test_second_tune_reads_the_cache_and_force_measures_again():
    medians = {"sdpa-math": 1.0, SPY: 2.0}
    store = Store(":memory:")
    BUILDS.clear()
    first, t1, _ = _tune(["sdpa-math", SPY], medians, store=store)
    assert t1.runs > 0 and BUILDS["spy"] > 0 and not first.workloads[0].cached
    BUILDS.clear()
    again, t2, _ = _tune(["sdpa-math", SPY], medians, store=store)
    assert t2.runs == 0 and BUILDS["spy"] == 0  # no build, no check, no sample
    w1, w2 = first.workloads[0], again.workloads[0]
    assert w2.cached and w2.chosen == w1.chosen
    assert w2.get("sdpa-math").samples_ms == w1.get("sdpa-math").samples_ms  # raw samples kept
    assert "cached" in markdown(again)
    forced, t3, _ = _tune(["sdpa-math", SPY], medians, store=store, force=True)
    assert t3.runs > 0 and not forced.workloads[0].cached
    other_env, t4, _ = _tune(["sdpa-math", SPY], medians, store=store, fingerprint={**FP, "torch": "other"})
    assert t4.runs > 0 and other_env.env_id != first.env_id
    other_list, t5, _ = _tune(["sdpa-math"], medians, store=store)  # another candidate list: another key
    assert t5.runs > 0


def test_budget_ends_racing_with_the_best_median_and_says_so():
    medians = {"sdpa-flash": 1.0, "sdpa-math": 1.0}  # identical: never separable
    r = _tune(["sdpa-flash", "sdpa-math"], medians, budget_s=0.06, baseline="")[0].workloads[0]
    assert r.stop_reason == "budget"
    assert r.chosen == min((c for c in r.candidates if c.timed), key=lambda c: c.median_ms).label
    assert any("budget spent" in n for n in r.notes)
    assert r.cost["samples"] < 200


def test_budget_total_is_shared_out():
    medians = {"sdpa-flash": 1.0, "sdpa-math": 1.0}
    res = _tune(["sdpa-flash", "sdpa-math"], medians, budget_total_s=0.12, baseline="",
                workloads=[W, W.replace(q_len=64, kv_len=64)])[0]
    assert [r.stop_reason for r in res.workloads] == ["budget", "budget"]


def test_equivalent_candidates_stop_early_and_ties_go_to_the_baseline():
    r = _tune(["sdpa-flash", "sdpa-math"], {"sdpa-flash": 1.0, "sdpa-math": 1.005, "sdpa-auto": 1.3},
              spread=0.0)[0].workloads[0]
    assert r.stop_reason == "equivalent" and r.rounds == 1 and r.chosen == "sdpa-flash"
    tie = _tune(["sdpa-flash"], {"sdpa-flash": 1.0, "sdpa-auto": 1.004}, spread=0.0)[0].workloads[0]
    assert tie.chosen == "sdpa-auto" and any("ties go to the baseline" in n for n in tie.notes)
    assert tie.speedup["value"] == 1.0


def test_params_override_and_plugin_param_space():
    """Every (impl, params) pair is a candidate; the params reach the plugin as keyword arguments."""
    medians = {EXACT: lambda w: 1.0}
    r = _tune([EXACT], medians, baseline="", params={EXACT: [{"chunks": 2}, {"chunks": 4}]})[0].workloads[0]
    labels = sorted(c.label for c in r.candidates)
    assert labels == [f"{EXACT}[chunks=2]", f"{EXACT}[chunks=4]"]
    assert all(c.status == "ok" for c in r.candidates)
    bad = _tune([CHUNKED], {}, baseline="", params={CHUNKED: [{"chunks": 1}, {"chunks": 4}]})[0].workloads[0]
    status = {c.label: c.status for c in bad.candidates}
    assert status == {f"{CHUNKED}[chunks=1]": "ok", f"{CHUNKED}[chunks=4]": "incorrect"}  # one chunk is exact


def test_capacity_planning_picks_the_largest_batch_within_budget():
    # latency grows with batch; tokens/s grows too, so the best batch is the largest within 2 ms
    latency = {"sdpa-math": lambda w: 0.2 + 0.05 * w.batch}
    ws = [W.replace(batch=b) for b in (1, 2, 4, 8, 16, 32, 64, 128)]
    timer = ByImplTimer(latency, spread=0.01)
    config = TuneConfig(workloads=ws, impls=["sdpa-math"], device="cpu", budget_s=None)
    plans = plan_capacity(config, Store(":memory:"), 2.0, impl="sdpa-math", timer=timer, fingerprint=FP)
    assert len(plans) == 1
    p = plans[0]
    rows = {r.batch: r for r in p.rows}
    assert p.best_batch == 32
    assert rows[32].within_budget and rows[32].ci_ms[1] <= 2.0
    assert not rows[64].within_budget and rows[64].median_ms == pytest.approx(3.4, rel=0.02)
    assert rows[128].status == "not-measured"  # 64 is already confidently over the budget
    assert rows[16].tokens_per_s == pytest.approx(16 * 32 / (1.0e-3), rel=0.02)
    assert timer.counts["sdpa-auto"] == 0  # a named impl is timed alone
    md = capacity_markdown(plans)
    assert "| 32 | sdpa-math |" in md and "**yes (best)**" in md and "batch 32" in md
    data = capacity_json(plans)
    assert data["plans"][0]["best_batch"] == 32 and len(data["plans"][0]["rows"]) == 8


def test_capacity_planning_with_the_best_impl_per_batch():
    medians = {"sdpa-flash": lambda w: 0.3 + 0.1 * w.batch, "sdpa-auto": lambda w: 0.5 + 0.12 * w.batch}
    ws = [W.replace(batch=b) for b in (1, 4, 16)] + [W.replace(batch=b, q_len=64, kv_len=64) for b in (1, 4)]
    timer = ByImplTimer(medians, spread=0.01)
    config = TuneConfig(workloads=ws, impls=["sdpa-flash"], device="cpu", budget_s=None)
    plans = plan_capacity(config, Store(":memory:"), 1.0, timer=timer, fingerprint=FP)
    assert [p.best_batch for p in plans] == [4, 4]  # two shapes; batch 16 takes 1.9 ms
    assert all(r.impl == "sdpa-flash" for p in plans for r in p.rows if r.status == "ok")


def test_parsers():
    assert parse_duration("60s") == 60 and parse_duration("2m") == 120 and parse_duration("500ms") == 0.5
    assert parse_duration("1.5") == 1.5 and parse_duration(None) is None
    assert parse_ms("2ms") == 2 and parse_ms("1s") == 1000 and parse_ms("250us") == 0.25 and parse_ms("3") == 3
    assert expand_ellipsis("1,2,4,...,256") == "1,2,4,8,16,32,64,128,256"
    assert expand_ellipsis("8,16,...,64") == "8,16,32,64"
    assert expand_ellipsis("128,256,384,...,768") == "128,256,384,512,640,768"
    assert expand_ellipsis("1,2,3") == "1,2,3"
    for bad in ("1,...,8", "4,2,...,1", "1,2,5,...,64"):
        with pytest.raises(UserError):
            expand_ellipsis(bad)
    with pytest.raises(UserError):
        parse_duration("soon")
    with pytest.raises(UserError):
        parse_ms("0ms")


@pytest.mark.gpu
def test_tune_on_gpu_gates_races_and_writes_a_table():
    w = Workload(batch=4, q_heads=8, kv_heads=8, q_len=256, kv_len=256, head_dim=64, dtype="fp16")
    config = TuneConfig(workloads=[w], impls=["sdpa-flash", "sdpa-cudnn", "sdpa-math", "flex", CHUNKED], device="cuda",
                        budget_s=60, params={"flex": [{}, {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}]})
    result = tune(config, Store(":memory:"))
    r = result.workloads[0]
    assert r.get(CHUNKED).status == "incorrect"
    assert r.chosen is not None and r.winner.timed and r.chosen != CHUNKED
    assert r.get("sdpa-math").dropped_round == 1  # ~10x slower than the fused kernels
    assert r.speedup is not None and r.speedup["lo"] <= r.speedup["value"] <= r.speedup["hi"]
    assert {c.status for c in r.candidates if c.impl == "flex"} == {"ok"}
    table = dispatch_table(result)
    assert table.environment["gpu_name"] and len(table.entries) == 1


def test_without_a_baseline_the_report_says_so():
    result, _, _ = _tune(["sdpa-flash", "sdpa-math"], {"sdpa-flash": 1.0, "sdpa-math": 1.5}, baseline="")
    md = markdown(result)
    assert "| speedup (no --baseline) |" in md and "speedup vs  |" not in md
    assert {c.impl for c in result.workloads[0].candidates} == {"sdpa-flash", "sdpa-math"}


def test_the_report_says_whether_the_speedup_is_significant_or_the_baseline_was_chosen():
    def row(medians, spread):
        res = _tune(["sdpa-flash"], medians, spread=spread, racing=RacingPolicy(first_samples=10, max_samples=10))[0]
        line = next(line for line in markdown(res).splitlines() if line.startswith("| B1"))
        return res.workloads[0], line

    r, line = row({"sdpa-flash": 0.7, "sdpa-auto": 1.0}, 0.02)
    assert r.speedup["lo"] > 1 and "vs sdpa-auto: faster |" in line
    r, line = row({"sdpa-flash": 0.985, "sdpa-auto": 1.0}, 0.3)  # noisy: the best median, but within noise
    assert r.chosen == "sdpa-flash" and r.speedup["lo"] < 1 < r.speedup["hi"]
    assert "vs sdpa-auto: not significantly faster (the CI includes 1) |" in line
    r, line = row({"sdpa-flash": 1.0, "sdpa-auto": 1.004}, 0.0)  # a tie goes to the baseline: no speedup claimed
    assert r.chosen == "sdpa-auto" and "| none: sdpa-auto itself was chosen |" in line and "1x [1, 1]" not in line


def whole_tiles_only(q, k, v, is_causal=False, enable_gqa=False, **_):
    """Right only when kv_len is a multiple of 16: a partial last tile of keys is dropped."""
    import torch.nn.functional as F

    sk = k.shape[-2]
    whole = sk - sk % 16 or sk
    return F.scaled_dot_product_attention(q, k[..., :whole, :], v[..., :whole, :], is_causal=is_causal,
                                          enable_gqa=enable_gqa)


def test_a_kernel_right_only_on_whole_tiles_never_wins_the_bucket():
    """The table sends every length of a bucket (S 17..32 here) to the winner of S32: the gate checks the
    candidate on an odd length of the bucket too, so one right only at S32 is rejected, with the shape."""
    plugin = "tests.tune.test_tune:whole_tiles_only"
    r = _tune([plugin, "sdpa-math"], {plugin: 0.1, "sdpa-math": 1.0, "sdpa-auto": 1.2})[0].workloads[0]
    bad = r.get(plugin)
    assert r.chosen == "sdpa-math" and bad.status == "incorrect"
    assert "right on this shape but not on B1 H2 S31 D16 fp32" in bad.reason
    assert r.get("sdpa-math").status == "ok" and r.get("sdpa-auto").status == "ok"


def test_flex_passes_the_bucket_check_without_a_recompile_error():
    """flex's context() makes a compile after the first call an error (fail_on_recompile): the bucket check
    builds it for the odd shape and makes that first call outside the context, as the gate does for the
    workload itself (it was rejected as 'Detected recompile' on every CPU tune)."""
    from attnbench.impls import resolve

    if resolve("flex").supports(W, "cpu"):
        pytest.skip("this torch has no FlexAttention on the CPU")
    r = _tune(["flex"], {"flex": 1.0, "sdpa-auto": 1.2})[0].workloads[0]
    assert r.get("flex").status == "ok", r.get("flex").reason
    assert r.chosen == "flex"
