"""Tests for attnbench.compare and compare_format: synthetic samples with known effects (lognormal, and bursty
interleaved rounds), pairing by round, matching rules, per-token normalization, environment checks, output
text, and `attnbench compare` end to end on the CPU."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from attnbench.compare import comparison as C
from attnbench.compare import format as F
from attnbench.analysis import stats
from attnbench.errors import UserError
from attnbench.store import Measurement
from attnbench.spec import Workload
from attnbench.store import Store
from attnbench.measure.timing import FakeTimer, TimingPolicy
from tests.analysis import bursty

W = Workload(batch=1, q_heads=2, kv_heads=2, q_len=64, kv_len=64, head_dim=32, dtype="fp32")
FAST = TimingPolicy(warmup_ms=0.0, min_samples=8, max_samples=8)
CPU_FLAGS = ["-b", "1", "-H", "2", "-s", "64", "-d", "32", "--samples", "8", "--warmup-ms", "0", "-q"]


def lognormal(n=60, median=1.0, sigma=0.05, seed=0):
    return tuple(float(x) for x in median * np.random.default_rng(seed).lognormal(0.0, sigma, n))


def mk(w=W, samples=None, impl="x", status="ok", **kw):
    if samples is None:
        samples = lognormal() if status == "ok" else ()
    return Measurement(workload=w, impl=impl, status=status, samples_ms=tuple(samples), timer=kw.pop("timer", "fake"),
                       **kw)


def shapes(n):
    return [W.replace(q_len=64 * (i + 1), kv_len=64 * (i + 1)) for i in range(n)]


# --------------------------------------------------------------------------- statistics on known effects


def test_ten_percent_faster_is_faster_with_a_ci_excluding_one():
    a = [mk(samples=lognormal(100, 0.9, seed=1), impl="new")]
    b = [mk(samples=lognormal(100, 1.0, seed=2), impl="old")]
    c = C.compare_measurements(a, b)
    (r,) = c.rows
    assert r.verdict == "faster"
    assert r.speedup == pytest.approx(1 / 0.9, rel=0.03)
    assert 1.0 < r.speedup_ci[0] <= r.speedup <= r.speedup_ci[1]
    assert r.cliffs_delta > 0.474 and r.magnitude == "large"  # positive = A faster
    # No batch sizes recorded: 10 contiguous blocks per side, Mann-Whitney on their medians.
    assert (r.pairing, r.rounds) == ("blocks", 10)
    assert r.p_holm == r.p_value < 1e-3  # a family of one: Holm changes nothing
    assert (c.a_name, c.b_name) == ("new", "old")
    # The same data seen from B's side: the reciprocal speedup, a "slower" verdict, the opposite delta.
    back = C.compare_measurements(b, a).rows[0]
    assert back.verdict == "slower" and back.speedup == pytest.approx(1 / r.speedup)
    assert back.cliffs_delta == pytest.approx(-r.cliffs_delta)
    assert c.geomean_speedup == pytest.approx(r.speedup) and c.counts["faster"] == 1


def test_identical_distributions_give_no_faster_or_slower_after_holm():
    ws = shapes(10)
    a = [mk(w, lognormal(50, 1.0, seed=i)) for i, w in enumerate(ws)]
    b = [mk(w, lognormal(50, 1.0, seed=100 + i)) for i, w in enumerate(ws)]
    c = C.compare_measurements(a, b)
    assert len(c.rows) == 10
    assert c.counts["faster"] == c.counts["slower"] == 0
    assert sum(c.counts.values()) == 10
    assert all(r.p_holm >= r.p_value for r in c.rows)
    # The suite CI has no multiplicity correction: it may miss 1 in 5% of seeds, so check only closeness.
    assert c.geomean_speedup == pytest.approx(1.0, abs=0.01)
    assert c.geomean_ci[0] <= c.geomean_speedup <= c.geomean_ci[1]


def test_holm_adjustment_turns_a_lone_win_into_inconclusive_and_shows_in_the_output():
    a_win = mk(W, lognormal(40, 0.96, seed=3))
    b_win = mk(W, lognormal(40, 1.0, seed=103))
    alone = C.compare_measurements([a_win], [b_win]).rows[0]
    assert alone.verdict == "faster" and 0.001 < alone.p_value < 0.05

    others = shapes(10)[1:]
    a = [a_win] + [mk(w, lognormal(40, 1.0, seed=i)) for i, w in enumerate(others)]
    b = [b_win] + [mk(w, lognormal(40, 1.0, seed=200 + i)) for i, w in enumerate(others)]
    c = C.compare_measurements(a, b)
    row = next(r for r in c.rows if r.key == W.key)
    assert row.p_value == pytest.approx(alone.p_value)
    assert row.p_holm > 0.05 and row.verdict == "inconclusive"
    assert row.p_holm == pytest.approx(stats.holm([r.p_value for r in c.rows])[0])
    md = F.to_markdown(c)
    assert "Holm p (raw p)" in md
    assert f"| {row.p_holm:.2g} ({row.p_value:.2g}) | inconclusive |" in md
    assert "Holm-adjusted over the 10 rows compared here" in md


# --------------------------------------------------------------------------- rounds


def interleaved_pair(seed, ratio=1.0, rounds=10, w=W, session=None, **kw):
    """A and B of one interleaved session (bursty noise), as the runner stores them."""
    a, sa, b, sb = bursty.interleaved(np.random.default_rng(seed), rounds=rounds, ratio=ratio, **kw)
    extra = {"timing": {"interleaved": {"rounds": rounds, "seed": seed, "of": 2, "session": session or f"s{seed}"}}}
    return (mk(w, a, impl="new", batch_sizes=tuple(sa), extra=extra),
            mk(w, b, impl="old", batch_sizes=tuple(sb), extra=extra))


def test_one_interleaved_session_is_paired_by_round():
    ma, mb = interleaved_pair(1, ratio=1 / 1.46, base=0.076)
    c = C.compare_measurements([ma], [mb])
    (r,) = c.rows
    assert (r.pairing, r.rounds) == ("rounds", 10)
    assert r.verdict == r.verdict_label == "faster" and r.speedup_ci[0] > 1.0
    assert r.p_value == pytest.approx(2 / 2 ** 10)  # every round agrees: the exact signed-rank floor
    assert r.speedup == pytest.approx(1.46, rel=0.1)
    md = F.to_markdown(c)
    assert "| 10 rounds |" in md and "pair A and B by round" in md and "bootstrap over rounds" in md
    assert "Rows marked `rounds` (A and B interleaved in one session)" in md
    # Another session's B: measured apart, so unpaired blocks, and the output says so.
    _, other = interleaved_pair(2, base=0.076)
    apart = C.compare_measurements([ma], [other]).rows[0]
    assert apart.pairing == "batches" and "rounds cannot be paired" in " ".join(C.compare_measurements(
        [ma], [other]).notes)


def test_too_few_rounds_is_inconclusive_and_says_how_many():
    ma, mb = interleaved_pair(3, ratio=0.5, rounds=4)
    c = C.compare_measurements([ma], [mb])
    (r,) = c.rows
    assert r.speedup_ci[0] > 1.0 and r.verdict == "inconclusive" and r.verdict_label == "inconclusive: 4 rounds"
    assert "| inconclusive: 4 rounds |" in F.to_markdown(c)
    assert any("fewer than 8 rounds" in n for n in c.notes)
    row = F.to_json(c)["rows"][0]
    assert (row["verdict"], row["verdict_label"], row["rounds"], row["pairing"]) == (
        "inconclusive", "inconclusive: 4 rounds", 4, "rounds")


def test_aa_suites_of_bursty_interleaved_rounds_rarely_get_a_verdict_and_real_wins_stay_faster():
    """Through compare_measurements: 40 A/A suites of five rows (bursty, autocorrelated noise) give a
    faster/slower verdict in at most 2 (the family-wise rate is 5%); a 1.46x win is `faster` in every one,
    with a CI that excludes 1; the suite's geometric mean CI covers 1 in the A/A suites that had no verdict."""
    false = 0
    for seed in range(40):
        pairs = [interleaved_pair(1000 * seed + i, w=w, session=f"{seed}-{i}") for i, w in enumerate(shapes(5))]
        c = C.compare_measurements([a for a, _ in pairs], [b for _, b in pairs], seed=seed)
        assert all(r.pairing == "rounds" for r in c.rows)
        false += c.counts["faster"] + c.counts["slower"] > 0
        ma, mb = interleaved_pair(50_000 + seed, ratio=1 / 1.46, base=0.076)
        r = C.compare_measurements([ma], [mb]).rows[0]
        assert r.verdict == "faster" and r.speedup_ci[0] > 1.0
    assert false <= 2


def test_too_few_rounds_for_holm_over_many_rows_is_said():
    pairs = [interleaved_pair(i, w=w, rounds=9) for i, w in enumerate(shapes(20))]
    c = C.compare_measurements([a for a, _ in pairs], [b for _, b in pairs])
    assert any("with 9 rounds the signed-rank test cannot go below p = 0.0039" in n
               and "compare --rounds 10" in n for n in c.notes)
    assert c.counts["faster"] == c.counts["slower"] == 0
    pairs = [interleaved_pair(i, w=w, rounds=10) for i, w in enumerate(shapes(20))]
    assert not any("cannot go below" in n for n in C.compare_measurements([a for a, _ in pairs],
                                                                         [b for _, b in pairs]).notes)


def test_suite_geomean_is_bootstrapped_over_rounds():
    pairs = [interleaved_pair(10 + i, ratio=0.8, w=w) for i, w in enumerate(shapes(3))]
    c = C.compare_measurements([a for a, _ in pairs], [b for _, b in pairs])
    want = float(np.exp(np.mean([np.log(r.speedup) for r in c.rows])))
    assert c.geomean_speedup == pytest.approx(want)
    assert c.geomean_ci[0] <= c.geomean_speedup <= c.geomean_ci[1] and c.geomean_ci[0] > 1.0
    assert "bootstrap over each row's rounds" in F.to_markdown(c)


# --------------------------------------------------------------------------- matching: like with like


def test_workloads_on_one_side_only_are_listed_never_compared():
    w2, w3 = W.replace(causal=True), W.replace(head_dim=64)
    c = C.compare_measurements([mk(W), mk(w2)], [mk(W), mk(w3)])
    assert [r.key for r in c.rows] == [W.key]
    assert {(u.side, u.key) for u in c.unmatched} == {("A", w2.key), ("B", w3.key)}
    md = F.to_markdown(c)
    assert f"- A only: {w2.label}" in md and f"- B only: {w3.label}" in md
    assert "never compared" in md


def test_disjoint_workloads_are_refused_naming_them():
    big = W.replace(q_len=128, kv_len=128)
    with pytest.raises(UserError) as err:
        C.compare_measurements([mk(W)], [mk(big)])
    msg = str(err.value)
    assert W.label in msg and big.label in msg and "--per-token" in msg and "\n" not in msg


def test_per_token_compares_throughput_across_shapes_and_says_so():
    big = W.replace(q_len=128, kv_len=128)  # twice the tokens, twice the FLOPs per token
    a = [mk(W, lognormal(80, 1.0, sigma=0.01, seed=1), impl="k")]
    b = [mk(big, lognormal(80, 2.0, sigma=0.01, seed=2), impl="k")]  # twice the time: same tokens/s
    c = C.compare_measurements(a, b, per_token=True)
    (r,) = c.rows
    assert c.mode == "per-token" and c.different_workloads
    assert (r.workload_a, r.workload_b) == (W, big)
    assert r.speedup == pytest.approx(1.0, abs=0.01) and r.verdict == "same"
    assert r.a_tokens_per_s == pytest.approx(64 / 1.0e-3, rel=0.01)
    # TFLOP/s ratio = tokens/s ratio x (FLOP per token of A / of B) = 1 x (64 / 128).
    assert r.tflops_ratio == pytest.approx(0.5 * r.speedup)
    assert r.tflops_ratio_ci[0] == pytest.approx(0.5 * r.speedup_ci[0])
    md = F.to_markdown(c)
    assert "Normalized comparison (per token): different workloads" in md
    assert "tokens/s ratio" in md and f"| {W.label} | {big.label} |" in md
    # each side's tokens/s with its interval (the median's CI inverted), not bare
    tokens = W.batch * W.q_len
    assert (f"| {r.a_tokens_per_s:.4g} [{tokens / (r.a_ci_ms[1] * 1e-3):.4g}, "
            f"{tokens / (r.a_ci_ms[0] * 1e-3):.4g}] |") in md
    assert F.to_json(c)["normalized"] == "per token: different workloads"


def test_per_token_pairs_by_impl_then_position():
    big = W.replace(q_len=128, kv_len=128)
    a = [mk(W, impl="p"), mk(W, impl="q"), mk(W.replace(causal=True), impl="q")]
    b = [mk(big, impl="q"), mk(big, impl="p")]
    c = C.compare_measurements(a, b, per_token=True)
    assert sorted((r.impl_a, r.impl_b, r.workload_a.causal) for r in c.rows) == [("p", "p", False),
                                                                                  ("q", "q", False)]
    assert [(u.side, u.impl) for u in c.unmatched] == [("A", "q")]


def test_per_token_pairs_a_workload_both_sides_hold_with_itself_whatever_the_order():
    """Two runs of the same shapes stored in another order were paired by position: S64 against S128, a change
    of workload reported as 'different workloads' with a throughput ratio."""
    big = W.replace(q_len=128, kv_len=128)
    a = [mk(W, lognormal(seed=1), impl="k"), mk(big, lognormal(median=2.0, seed=2), impl="k")]
    b = [mk(big, lognormal(median=2.0, seed=3), impl="k"), mk(W, lognormal(seed=4), impl="k"),
         mk(W.replace(head_dim=64), impl="k")]
    c = C.compare_measurements(a, b, per_token=True)
    assert [(r.workload_a, r.workload_b) for r in c.rows] == [(W, W), (big, big)]
    assert not c.different_workloads and "same workloads" in F.to_markdown(c)
    assert [(u.side, u.key) for u in c.unmatched] == [("B", W.replace(head_dim=64).key)]


def test_pairs_by_workload_and_impl_when_a_side_holds_several_impls():
    a = [mk(W, impl="p"), mk(W, impl="q")]
    b = [mk(W, impl="q", samples=lognormal(seed=5)), mk(W, impl="r")]
    c = C.compare_measurements(a, b)
    assert [(r.impl_a, r.impl_b) for r in c.rows] == [("q", "q")]
    assert {(u.side, u.impl) for u in c.unmatched} == {("A", "p"), ("B", "r")}
    assert c.rows[0].label == f"{W.label} · q"
    with pytest.raises(UserError, match="no \\(workload, impl\\) cell in common"):
        C.compare_measurements([mk(W, impl="p"), mk(W, impl="q")], [mk(W, impl="r"), mk(W, impl="s")])


def test_rows_without_usable_timing_are_listed_and_left_out_of_the_family():
    w2, w3 = W.replace(causal=True), W.replace(head_dim=64)
    a = [mk(W), mk(w2), mk(w3, timer="cold")]
    b = [mk(W), mk(w2, status="unsupported", reason="needs a CUDA GPU"), mk(w3, timer="warm")]
    c = C.compare_measurements(a, b)
    assert [r.key for r in c.rows] == [W.key]
    assert c.rows[0].p_holm == c.rows[0].p_value  # a family of one: the excluded rows did not count
    by = {e.key: e for e in c.excluded}
    assert by[w2.key].status_b == "unsupported" and "needs a CUDA GPU" in by[w2.key].reason
    assert "timer modes differ (cold vs warm)" in by[w3.key].reason
    md = F.to_markdown(c)
    assert "Not compared" in md and "B unsupported: needs a CUDA GPU" in md


def test_implausible_measurements_keep_a_visible_flag():
    extra = {"plausibility": "implausible", "plausibility_reason": "131% of the fp16 peak"}  # runner.annotate
    c = C.compare_measurements([mk(W, extra=extra)], [mk(W)])
    assert c.rows[0].flags == ("A implausible: 131% of the fp16 peak",)
    assert "A implausible: 131% of the fp16 peak" in F.to_markdown(c)
    assert C.compare_measurements([mk(W, extra={"plausibility": "ok"})], [mk(W)]).rows[0].flags == ()


def test_clock_difference_is_flagged():
    a = mk(W, clocks_mhz=(1755.0,) * 5)
    b = mk(W, clocks_mhz=(1500.0,) * 5)
    assert C.compare_measurements([a], [b]).rows[0].flags == ("SM clock differs: A 1755 MHz, B 1500 MHz",)


# --------------------------------------------------------------------------- stored runs and environments


def _store_run(store, env_id, fp, ms):
    store.add_environment(env_id, fp)
    rid = store.start_run(env_id, {})
    for m in ms:
        store.add(rid, m)
    store.finish_run(rid)
    return rid


FP = {"device_kind": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "cuda": "13.0"}


def test_compare_runs_refuses_different_environments_unless_allowed(tmp_path):
    with Store(tmp_path / "r.db") as store:
        r1 = _store_run(store, "e1", FP, [mk(W, lognormal(seed=1), impl="sdpa-flash")])
        r2 = _store_run(store, "e2", dict(FP, torch="2.12.0"), [mk(W, lognormal(seed=2), impl="sdpa-flash")])
        with pytest.raises(UserError) as err:
            C.compare_runs(store, r1, r2)
        assert "torch: 2.11.0 -> 2.12.0" in str(err.value) and "--allow-env-mismatch" in str(err.value)
        c = C.compare_runs(store, r1, r2, allow_env_mismatch=True)
        assert len(c.rows) == 1 and c.run_ids == (r1, r2)
        assert len(c.warnings) == 1 and "torch: 2.11.0 -> 2.12.0" in c.warnings[0]
        md = F.to_markdown(c)
        assert md.index("**Warning:** environments differ") < md.index("| workload |")
        assert c.a_name == f"run {r1} (sdpa-flash)"
        # the output says where each side was measured (it named no device at all)
        assert c.notes[0] == ("A measured on NVIDIA H100 80GB HBM3, torch 2.11.0, CUDA 13.0; "
                              "B measured on NVIDIA H100 80GB HBM3, torch 2.12.0, CUDA 13.0")
        r3 = _store_run(store, "e1", FP, [mk(W, lognormal(seed=3), impl="sdpa-flash")])
        assert C.compare_runs(store, r1, r3).notes[0] == "measured on NVIDIA H100 80GB HBM3, torch 2.11.0, CUDA 13.0"
        assert "- measured on NVIDIA H100 80GB HBM3" in F.to_markdown(C.compare_runs(store, r1, r3))


def test_compare_runs_warns_of_a_run_that_did_not_complete(tmp_path):
    """An interrupted run was compared as if whole: its unmeasured cells read as unmatched with no word why."""
    with Store(tmp_path / "r.db") as store:
        r1 = _store_run(store, "e1", FP, [mk(W, lognormal(seed=1), impl="sdpa-flash")])
        r2 = _store_run(store, "e1", FP, [mk(W, lognormal(seed=2), impl="sdpa-flash")])
        store.finish_run(r2, "interrupted")
        c = C.compare_runs(store, r1, r2)
        assert c.warnings == (f"run {r2} is interrupted, not complete: cells it never measured are listed as "
                              "unmatched; `attnbench run ... --resume` finishes it",)
        assert not C.compare_runs(store, r1, r1).warnings


def test_compare_runs_matches_workload_by_impl_and_filters_by_impl(tmp_path):
    with Store(tmp_path / "r.db") as store:
        both = lambda s: [mk(W, lognormal(seed=s), impl="sdpa-math"),  # noqa: E731
                          mk(W, lognormal(median=2.0, seed=s + 1), impl="reference")]
        r1 = _store_run(store, "e1", FP, both(1))
        r2 = _store_run(store, "e1", FP, both(3))
        c = C.compare_runs(store, r1, r2)
        assert sorted(r.impl_a for r in c.rows) == ["reference", "sdpa-math"]
        assert all(r.impl_a == r.impl_b for r in c.rows) and not c.warnings
        only = C.compare_runs(store, r1, r2, impl="reference")
        assert [r.impl_a for r in only.rows] == ["reference"] and only.rows[0].label == W.label
        with pytest.raises(UserError, match="no measurements of impl 'nope'"):
            C.compare_runs(store, r1, r2, impl="nope")


def test_compare_impls_measures_both_in_one_run_with_a_fake_timer(tmp_path):
    with Store(tmp_path / "r.db") as store:
        c, rid = C.compare_impls("sdpa-math", "reference", [W, W.replace(causal=True)], store, device="cpu",
                                 timer=FakeTimer(median_ms=1.0, seed=3), policy=FAST)
        assert c.run_ids == (rid,) and len(store.measurements(rid)) == 4
        assert (c.a_name, c.b_name) == ("sdpa-math", "reference") and len(c.rows) == 2
        assert all(r.n_a == r.n_b == 8 for r in c.rows)
        assert c.counts["faster"] == c.counts["slower"] == 0  # one fake distribution for both
        assert any(f"run {rid}" in n for n in c.notes)
        assert c.notes[0].startswith("measured on CPU (")


def test_compare_impls_with_itself_is_one_interleaved_run(tmp_path):
    timer = FakeTimer(median_ms=10.0, seed=4)  # 10 ms samples, 25 ms batches when interleaved: four rounds
    policy = TimingPolicy(warmup_ms=20.0, min_samples=8, max_samples=8)
    with Store(tmp_path / "r.db") as store:
        c, rid = C.compare_impls("sdpa-math", "sdpa-math", [W], store, device="cpu", timer=timer, policy=policy)
        assert c.run_ids == (rid,) and len(store.runs()) == 1
        ms = store.measurements(rid)
        assert sorted(m.impl for m in ms) == ["sdpa-math", "sdpa-math (B)"]  # B stored under an alias
        assert all(m.extra["timing"]["interleaved"]["of"] == 2 for m in ms)
    calls = [fn for fn, _, _ in timer.log]
    assert len(set(calls)) == 2
    assert sum(a is not b for a, b in zip(calls, calls[1:])) >= 4  # A and B take turns, not A's run then B's
    assert (c.a_name, c.b_name) == ("sdpa-math", "sdpa-math") and len(c.rows) == 1
    assert (c.rows[0].impl_a, c.rows[0].impl_b) == ("sdpa-math", "sdpa-math") and c.rows[0].n_a == c.rows[0].n_b == 8
    assert f"A/A comparison: one run (run {rid}), A and B interleaved, on the same input tensors" in c.notes
    assert c.rows[0].verdict in ("same", "inconclusive")


# --------------------------------------------------------------------------- output


def test_markdown_layout_and_convention():
    c = C.compare_measurements([mk(W, lognormal(seed=1), impl="new")], [mk(W, lognormal(seed=2), impl="old")])
    md = F.to_markdown(c)
    assert md.startswith("# attnbench compare: A = new (candidate) vs B = old (baseline)")
    assert "Speedup = median time of B / median time of A: above 1 means A (new) is faster" in md
    r = c.rows[0]
    # each median with its 95% CI (a median shown bare was a number without its uncertainty)
    assert (f"| {W.label} | {r.a_median_ms:.4g} [{r.a_ci_ms[0]:.4g}, {r.a_ci_ms[1]:.4g}] | {r.b_median_ms:.4g} "
            f"[{r.b_ci_ms[0]:.4g}, {r.b_ci_ms[1]:.4g}] | {r.speedup:.3f} [{r.speedup_ci[0]:.3f}, {r.speedup_ci[1]:.3f}] |"
            ) in md
    assert "| A median ms [95% CI] (new) | B median ms [95% CI] (old) |" in md
    assert "Suite (1 row): geometric-mean speedup" in md
    assert "Verdicts: faster 0, slower 0, same 0, inconclusive 1 (threshold 2%" in md
    assert "timer `fake`" in md


def test_threshold_widens_same():
    a, b = [mk(W, lognormal(200, 1.0, sigma=0.01, seed=1))], [mk(W, lognormal(200, 1.01, sigma=0.01, seed=2))]
    assert C.compare_measurements(a, b, threshold=0.0).rows[0].verdict != "same"
    assert C.compare_measurements(a, b, threshold=0.05).rows[0].verdict == "same"


def test_json_output_is_complete_and_serializable():
    a = [mk(W, lognormal(seed=1)), mk(W.replace(causal=True))]
    b = [mk(W, lognormal(seed=2)), mk(W.replace(causal=True), status="oom", reason="out of memory")]
    d = F.to_json(C.compare_measurements(a, b))
    text = json.dumps(d)
    assert json.loads(text)["format"] == "attnbench-compare" and d["format_version"] == F.FORMAT_VERSION
    row = d["rows"][0]
    for key in ("a_median_ms", "b_median_ms", "speedup", "speedup_ci", "cliffs_delta", "magnitude", "p_value",
                "p_holm", "verdict", "flags"):
        assert key in row
    assert row["workload_a"]["key"] == W.key and len(row["speedup_ci"]) == 2
    assert d["format_version"] == 2 and row["pairing"] == "blocks" and row["rounds"] == 10
    assert d["suite"]["min_rounds"] == 8
    assert d["suite"]["n"] == 1 and sum(d["suite"]["counts"].values()) == 1
    assert d["excluded"][0]["status_b"] == "oom"
    assert "Speedup = median time of B / median time of A" in d["convention"]


def test_cost_section_in_markdown_and_json():
    a = [mk(W, samples=(1.0,) * 9)]
    b = [mk(W, samples=(2.0,) * 9)]
    c = C.with_cost(C.compare_measurements(a, b), calls_per_day=86.4e6, usd_per_hour=2.0)
    row = c.cost["rows"][0]
    assert row["a"]["usd_per_month"]["estimate"] == pytest.approx(1440.0)
    assert row["b"]["usd_per_month"]["estimate"] == pytest.approx(2880.0)
    assert row["saving"]["usd_per_month"]["estimate"] == pytest.approx(1440.0)
    md = F.to_markdown(c)
    assert "## Cost" in md and "one GPU serves the calls one after another" in md
    assert "$1,440 [$1,440, $1,440]" in md and "50.0% [50.0%, 50.0%]" in md
    assert F.to_json(c)["cost"]["calls_per_day"] == 86.4e6
    big = W.replace(q_len=128, kv_len=128)
    per_token = C.compare_measurements([mk(W)], [mk(big)], per_token=True)
    with pytest.raises(UserError, match="same workload"):
        C.with_cost(per_token, 1e6, 2.0)


# --------------------------------------------------------------------------- the CLI, end to end on the CPU


def cli(args, capsys):
    from attnbench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_cli_compare_two_impls_now(tmp_path, capsys):
    db = str(tmp_path / "c.db")
    code, out, err = cli(["compare", "--impl", "sdpa-math", "--impl", "sdpa-flash", *CPU_FLAGS, "--db", db], capsys)
    assert code == 0, err
    assert "A = sdpa-math (candidate) vs B = sdpa-flash (baseline)" in out
    assert "| B1 H2 S64 D32 fp32 |" in out and "speedup [95% CI]" in out
    assert "Verdicts:" in out and "timer `host`" in out
    code, out, err = cli(["compare", "-i", "sdpa-math", "-i", "sdpa-flash", *CPU_FLAGS, "--db", db,
                          "--format", "json", "--cost-per-hour", "2", "--calls-per-day", "1000000"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["a"] == "sdpa-math" and d["b"] == "sdpa-flash" and len(d["rows"]) == 1
    assert d["rows"][0]["verdict"] in stats.Verdict.ALL and d["cost"]["usd_per_hour"] == 2.0


def test_cli_compare_an_impl_with_itself(tmp_path, capsys):
    db = str(tmp_path / "c.db")
    code, out, err = cli(["compare", "--impl", "sdpa-math", "--impl", "sdpa-math", *CPU_FLAGS, "--db", db,
                          "--format", "json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["a"] == d["b"] == "sdpa-math" and len(d["rows"]) == 1 and d["run_ids"] == [1]
    assert d["rows"][0]["impl_a"] == d["rows"][0]["impl_b"] == "sdpa-math"
    assert any(n.startswith("A/A comparison: one run (run 1), A and B interleaved") for n in d["notes"])


def test_cli_compare_two_stored_runs(tmp_path, capsys):
    db = str(tmp_path / "c.db")
    for _ in range(2):
        code, _, err = cli(["run", "--impl", "sdpa-math", *CPU_FLAGS, "--db", db], capsys)
        assert code == 0, err
    code, out, err = cli(["compare", "1", "2", "--db", db, "--threshold", "0.5"], capsys)
    assert code == 0, err
    assert "A = run 1 (sdpa-math) (candidate) vs B = run 2 (sdpa-math) (baseline)" in out
    assert "| B1 H2 S64 D32 fp32 |" in out and "threshold 50%" in out
    assert "| 24 batches |" in out and "rounds cannot be paired" in out  # 3 repeats x 8 batches a side


def test_cli_compare_rounds(tmp_path, capsys):
    db = str(tmp_path / "c.db")
    code, out, err = cli(["compare", "-i", "sdpa-math", "-i", "sdpa-math", *CPU_FLAGS, "--rounds", "4", "--db", db],
                         capsys)
    assert code == 0, err
    # At least 4 batches a side (more if a slow sample capped a batch on this shared CPU): too few rounds.
    k = int(re.search(r"\| (\d+) rounds \|", out).group(1))
    assert 4 <= k < 8 and f"| inconclusive: {k} rounds |" in out
    code, out, err = cli(["compare", "-i", "sdpa-math", "-i", "sdpa-math", *CPU_FLAGS, "--rounds", "9", "--db", db],
                         capsys)
    assert code == 2 and "--rounds must be between 1 and --samples (8)" in err


@pytest.mark.parametrize("args", [
    ["compare", "--impl", "sdpa-math"],
    ["compare", "1"],
    ["compare", "1", "2", "--impl", "sdpa-math", "--impl", "sdpa-flash"],
    ["compare", "1", "2", "--cost-per-hour", "2"],
    ["compare", "1", "2", "--format", "csv"],
])
def test_cli_usage_errors_are_one_line_exit_2(args, tmp_path, capsys):
    code, out, err = cli(args + ["--db", str(tmp_path / "c.db")], capsys)
    assert code == 2 and out == ""
    assert err.startswith("attnbench: error: ") and err.count("\n") == 1


def test_a_verdict_on_an_implausible_side_says_so_and_a_narrow_interval_keeps_its_digits():
    """A warm-cache A (above a ceiling) read as a plain 'faster' with the flag in the last column, and a ratio of
    1.0029 [1.0027, 1.0031] printed as '1.003 [1.003, 1.003]', an interval of no width."""
    extra = {"plausibility": "implausible", "plausibility_reason": "131% of the fp16 peak"}
    c = C.compare_measurements([mk(W, lognormal(100, 0.5, seed=1), extra=extra)], [mk(W, lognormal(100, 1.0, seed=2))])
    assert c.rows[0].verdict == "faster"
    md = F.to_markdown(c)
    assert "| faster (A implausible: see flags) | A implausible: 131% of the fp16 peak |" in md
    assert "1 row with a side above a device ceiling" in md
    assert F._ratio(1.0029, (1.00274, 1.00311)) == "1.0029 [1.0027, 1.0031]"
    assert F._ratio(1.25, (1.2, 1.3)) == "1.250 [1.200, 1.300]" and F._ratio(1.0, (1.0, 1.0)) == "1.000 [1.000, 1.000]"
