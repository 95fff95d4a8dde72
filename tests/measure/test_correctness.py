import pytest
import torch
import torch.nn.functional as F

from attnbench.measure.correctness import check, tolerance
from attnbench.impls.reference import attention_math, reference_output
from attnbench.spec import Workload
from tests.fixtures import kernels


def wl(**kw):
    base = dict(batch=2, q_heads=4, kv_heads=4, q_len=64, kv_len=64, head_dim=16, dtype="fp32")
    base.update(kw)
    return Workload(**base)


def sdpa(causal, gqa=False):
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_passes(causal):
    r = check(sdpa(causal), wl(causal=causal), "cpu")
    assert r.ok, r.reason
    assert r.rel_err < 1e-5


def test_chunking_qkv_together_is_wrong_and_query_chunking_is_exact():
    w = wl(q_len=512, kv_len=512)
    bad = check(lambda q, k, v: kernels.blockwise_qkv(q, k, v), w, "cpu")
    assert not bad.ok
    assert bad.rel_err > 1.0  # about 1.7 in the original study's case
    assert "relative error" in bad.reason
    good = check(lambda q, k, v: kernels.query_chunked(q, k, v), w, "cpu")
    assert good.ok and good.rel_err < 1e-6
    good_causal = check(lambda q, k, v: kernels.query_chunked(q, k, v, is_causal=True), w.replace(causal=True), "cpu")
    assert good_causal.ok, good_causal.reason


def test_wrong_causality_and_unwritten_output_fail():
    assert not check(sdpa(False), wl(causal=True), "cpu").ok
    gaps = check(lambda q, k, v: kernels.leaves_gaps(q, k, v), wl(), "cpu")
    assert not gaps.ok and "NaN/Inf" in gaps.reason


def test_shape_and_type_errors_fail():
    r = check(lambda q, k, v: q[:, :, :1], wl(), "cpu")
    assert not r.ok and "output shape" in r.reason
    r = check(lambda q, k, v: 3.0, wl(), "cpu")
    assert not r.ok and "not a tensor" in r.reason


def test_inputs_are_fresh_each_check():
    seen = []

    def spy(q, k, v):
        seen.append(q.clone())
        assert q.abs().sum() > 0  # never zeros
        return F.scaled_dot_product_attention(q, k, v)

    check(spy, wl(), "cpu")
    check(spy, wl(), "cpu")
    assert not torch.equal(seen[0], seen[1])


def test_gqa_and_low_precision_tolerances():
    w = wl(q_heads=8, kv_heads=2, dtype="bf16")
    r = check(sdpa(False, gqa=True), w, "cpu")
    assert r.ok, r.reason
    assert r.tolerance == tolerance("bf16")
    assert tolerance("fp16") < tolerance("bf16")
    assert tolerance("fp32", grad=True) > tolerance("fp32")


@pytest.mark.parametrize("direction", ["bwd", "fwd+bwd"])
def test_gradients_are_checked(direction):
    w = wl(direction=direction, q_heads=4, kv_heads=2)
    ok = check(sdpa(True, gqa=True), w.replace(causal=True), "cpu")
    assert ok.ok, ok.reason
    assert {"dq", "dk", "dv"} <= set(ok.details)

    def wrong_grad(q, k, v):
        # Same forward value, but the gradient to v is cut: dv must fail.
        out = F.scaled_dot_product_attention(q, k, v.detach(), enable_gqa=True)
        return out + 0 * v.sum()

    bad = check(wrong_grad, w, "cpu")
    assert not bad.ok and "dv" in bad.reason


def test_reference_chunking_matches_unchunked():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 8, generator=g) for _ in range(3))
    full = attention_math(q.double(), k.double(), v.double(), causal=True)
    chunked = reference_output(q, k, v, causal=True, budget_bytes=2 * 40 * 8 * 7)  # 7 rows per chunk
    torch.testing.assert_close(full, chunked)
