"""FlexAttention's mask_mods, score_mods and block masks for every mask kind, against the float64 reference:
eagerly (fast) for every kind, and compiled through the impl for a few (slow on a CPU)."""

import warnings

import pytest

from attnbench.impls import flex, resolve
from attnbench.impls.base import make_call, make_inputs
from attnbench.impls.reference import reference_output
from attnbench.measure.correctness import check, rel_error
from attnbench.spec import Workload

MASKS = [("full", 6, 10), ("causal", 12, 12), ("causal", 5, 9), ("causal-br", 4, 13), ("causal-br", 1, 9),
         ("causal-br", 7, 3), ("window:3", 12, 12), ("window:4", 3, 20), ("document:5+1+6", 12, 12),
         ("document:rand:3", 16, 16)]


@pytest.mark.parametrize("mask,q,kv", MASKS)
@pytest.mark.parametrize("mod", ["", "softcap:2", "alibi"])
def test_mask_and_score_mods_match_the_reference(mask, q, kv, mod):
    from torch.nn.attention.flex_attention import flex_attention

    w = Workload(2, 4, 2, q, kv, 16, "fp32", mask=mask, score_mod=mod)
    x = make_inputs(w, "cpu", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is not compiled: intended here
        out = flex_attention(x.q, x.k, x.v, score_mod=flex.score_mod(w, "cpu"), block_mask=flex.block_mask(w, "cpu"),
                             enable_gqa=True)
    assert rel_error(out, reference_output(x.q, x.k, x.v, w.mask, score_mod=mod)) < 1e-5


def test_a_mask_that_keeps_every_pair_needs_no_block_mask():
    w = Workload(2, 4, 2, 1, 300, 16, "fp32", mask="causal-br")
    assert flex.mask_mod(w, "cpu") is None and flex.block_mask(w, "cpu") is None
    assert resolve("flex").supports(w.replace(mask="window:7", score_mod="softcap:30"), "cpu") is None


@pytest.mark.slow
@pytest.mark.parametrize("w", [
    Workload(2, 4, 2, 64, 64, 16, "fp32", mask="document:rand:3", score_mod="softcap:2"),
    Workload(1, 4, 2, 16, 80, 16, "fp32", mask="window:20", score_mod="alibi"),
], ids=["document-softcap", "window-alibi-decodeish"])
def test_compiled_flex_is_checked_against_float64_without_recompiling(w):
    compiled_and_checked(w, "cpu")


def compiled_and_checked(w, device):
    impl = resolve("flex")
    assert impl.supports(w, device) is None
    fn = impl.build(w, device, {})
    call = make_call(fn, w, make_inputs(w, device, 0))
    call()                            # the first call compiles, outside the guard, as the runner does
    with impl.context():              # a recompile here raises (fail_on_recompile)
        result = check(fn, w, device)
        call()
    assert result.ok and result.rel_err <= result.tolerance, result.reason
    if w.direction != "fwd":
        assert set(result.details) == {"out", "dq", "dk", "dv"}


def test_no_backward_on_the_cpu():
    w = Workload(1, 4, 2, 64, 64, 16, "fp32", mask="window:8", direction="fwd+bwd")
    assert resolve("flex").supports(w, "cpu") == "FlexAttention has no backward on the CPU"


@pytest.mark.gpu
@pytest.mark.parametrize("mask,mod", [("document:rand:4", "softcap:2"), ("window:128", "alibi"), ("causal", "")])
def test_gpu_gradients_with_masks_match_float64(mask, mod):
    compiled_and_checked(Workload(2, 8, 2, 512, 512, 64, "bf16", mask=mask, score_mod=mod, direction="fwd+bwd"),
                         "cuda")


@pytest.mark.gpu
def test_gpu_decode_with_a_window_over_a_long_cache():
    compiled_and_checked(Workload(4, 32, 8, 1, 32768, 128, "bf16", mask="window:4096"), "cuda")
