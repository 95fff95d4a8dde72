"""hf_compare: a model end to end, attnbench against sdpa: the output check first, then interleaved timing
(a fake timer here) and kernel compare's statistics."""

import math

import pytest

from attnbench.compare.format import to_json, to_markdown
from attnbench.integrations import hf_workloads as hw
from attnbench.integrations.hf_compare import build_models, compare_model
from attnbench.measure.timing import FakeTimer, TimingPolicy

from . import tiny
from .test_transformers import table_for

POLICY = TimingPolicy(warmup_ms=1.0, min_samples=20, max_samples=20)


def test_a_model_compared_end_to_end_with_a_verdict_and_its_ci():
    cfg = tiny.qwen2(window=12)
    table = table_for(hw.model_workloads(cfg, [2], [24]))
    tiny.CALLS.clear()
    c = compare_model(cfg, table, batches=[2], seqs=[24], timer=FakeTimer(median_ms=3.0, seed=1), policy=POLICY)
    assert (c.a_name, c.b_name, len(c.rows), c.excluded) == ("attnbench", "sdpa", 1, ())
    row = c.rows[0]
    assert row.label == "qwen2: 2 layers, H4/2 D16, 1 sliding (window 12) · forward B2 S24 fp32"
    assert row.n_a == row.n_b == 20 and row.speedup_ci[0] <= row.speedup <= row.speedup_ci[1]
    # paired round by round, as kernel compare pairs (not split into blocks "stored before schema 2")
    assert row.pairing == "rounds" and row.rounds == 10
    assert row.verdict == "same"  # one fake median for both sides
    assert math.isnan(row.a_tflops)  # a model step has no attention-only TFLOP/s
    assert tiny.CALLS["causal"] > 20 and tiny.CALLS["window:11"] > 20  # the table's kernel ran, timed calls too
    notes = "\n".join(c.notes)
    assert "within the dtype's attention tolerance" in notes and "schema 2" not in notes
    assert f"layers 0: {tiny.SPY}" in notes and "layers 1: " in notes
    text = to_markdown(c)
    assert "| qwen2: 2 layers" in text and "Verdicts: faster 0, slower 0, same 1" in text
    assert to_json(c)["rows"][0]["verdict"] == "same"


def test_a_wrong_kernel_is_caught_before_timing():
    cfg = tiny.llama()
    table = table_for(hw.model_workloads(cfg, [1], [32]), impl="tests.fixtures.kernels:blockwise_qkv")
    timer = FakeTimer(median_ms=1.0)
    c = compare_model(cfg, table, batches=[1], seqs=[32], timer=timer, policy=POLICY)
    assert not c.rows and len(c.excluded) == 1
    e = c.excluded[0]
    assert e.status_a == "incorrect" and "logits relative error" in e.reason and "> tolerance 0.002" in e.reason
    assert timer.log == []  # nothing was timed


def test_training_step_rows_and_several_shapes():
    cfg = tiny.llama()
    table = table_for(hw.model_workloads(cfg, [1], [16, 32]) + hw.model_workloads(cfg, [1], [16, 32],
                                                                                  direction="fwd+bwd"))
    tiny.CALLS.clear()
    timer = FakeTimer(median_ms=2.0, call=False)  # the output check still calls each side
    c = compare_model(cfg, table, batches=[1], seqs=[16, 32], train=True, timer=timer, policy=POLICY)
    assert [r.label.split(" · ")[1] for r in c.rows] == ["forward B1 S16 fp32", "forward B1 S32 fp32",
                                                        "training step B1 S16 fp32", "training step B1 S32 fp32"]
    assert all(r.verdict in ("same", "inconclusive") for r in c.rows)
    assert any("training step B1 S16 fp32, attnbench ran: layers 0,1: " + tiny.SPY in n for n in c.notes)


def test_the_models_share_weights_and_differ_only_in_attention():
    base, cand = build_models(tiny.mistral(), "fp32", "cpu")
    assert all(a is b for a, b in zip(base.parameters(), cand.parameters()))
    assert (base.config._attn_implementation, cand.config._attn_implementation) == ("sdpa", "attnbench")
    assert not base.training and not cand.training


def test_bad_inputs_are_user_errors(tmp_path):
    from attnbench.errors import UserError

    with pytest.raises(UserError, match="dispatch table not found"):
        compare_model(tiny.llama(), tmp_path / "none.json", timer=FakeTimer(), policy=POLICY)
    with pytest.raises(UserError, match="config file not found"):
        compare_model(tmp_path / "none.json", table_for([]), timer=FakeTimer(), policy=POLICY)
