"""The reference impl (eager, in the workload's dtype) with masks, backward and GQA, and the float64
reference's bounded chunks."""

import torch

from attnbench.impls import resolve
from attnbench.impls.base import make_inputs
from attnbench.impls.reference import attention_math, reference_output
from attnbench.measure.correctness import check
from attnbench.spec import Workload


def test_backward_with_a_mask_and_a_score_modifier_is_checked():
    w = Workload(2, 4, 2, 24, 24, 16, "fp32", mask="document:rand:3", score_mod="softcap:2", direction="fwd+bwd")
    result = check(resolve("reference").build(w, "cpu", {}), w, "cpu")
    assert result.ok and set(result.details) == {"out", "dq", "dk", "dv"}, result.reason


def test_tiny_chunks_give_the_same_float64_result():
    w = Workload(3, 8, 2, 40, 40, 16, "fp32", mask="window:6", score_mod="alibi")
    x = make_inputs(w, "cpu", 2)
    whole = attention_math(*(t.to(torch.float64) for t in (x.q, x.k, x.v)), w.mask, score_mod=w.score_mod)
    chunked = reference_output(x.q, x.k, x.v, w.mask, budget_bytes=1, score_mod=w.score_mod)   # one row a chunk
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)


def test_gqa_is_computed_without_repeating_k_and_v():
    w = Workload(1, 8, 2, 5, 9, 4, "fp64", mask="causal-br")
    x = make_inputs(w, "cpu", 0)
    repeated = attention_math(x.q, x.k.repeat_interleave(4, dim=1), x.v.repeat_interleave(4, dim=1), w.mask)
    torch.testing.assert_close(attention_math(x.q, x.k, x.v, w.mask), repeated, rtol=0, atol=1e-14)
