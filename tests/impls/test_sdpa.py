"""SDPA with every mask kind it takes (an additive attn_mask built once), against the float64 reference."""

import pytest
import torch

from attnbench.impls import make_call, make_inputs, resolve
from attnbench.impls import sdpa
from attnbench.measure.correctness import check
from attnbench.spec import Workload

# (mask, q_len, kv_len): every kind, square and not, GQA 4/2 throughout
MASKS = [("full", 6, 10), ("causal", 12, 12), ("causal", 5, 9), ("causal-br", 4, 13), ("causal-br", 1, 9),
         ("window:3", 12, 12), ("window:4", 3, 20), ("document:5+1+6", 12, 12), ("document:rand:3", 16, 16)]


def wl(mask, q, kv, mod="", **kw):
    return Workload(2, 4, 2, q, kv, 16, kw.pop("dtype", "fp32"), mask=mask, score_mod=mod, **kw)


@pytest.mark.parametrize("mask,q,kv", MASKS)
@pytest.mark.parametrize("mod", ["", "alibi"])
@pytest.mark.parametrize("name", ["sdpa-math", "sdpa-auto"])
def test_every_mask_kind_matches_the_reference(name, mask, q, kv, mod):
    w = wl(mask, q, kv, mod)
    impl = resolve(name)
    assert impl.supports(w, "cpu") is None
    result = check(impl.build(w, "cpu", {}), w, "cpu")
    assert result.ok and result.rel_err < 1e-5, result.reason


@pytest.mark.parametrize("mask,q,kv", [("window:3", 12, 12), ("document:rand:3", 16, 16), ("causal-br", 4, 13)])
def test_gradients_with_a_mask_match_the_reference(mask, q, kv):
    w = wl(mask, q, kv, "alibi" if mask.startswith("window") else "", direction="fwd+bwd")
    result = check(resolve("sdpa-math").build(w, "cpu", {}), w, "cpu")
    assert result.ok and set(result.details) == {"out", "dq", "dk", "dv"}, result.reason
    assert max(d["rel_err"] for d in result.details.values()) < 1e-5


def test_the_cpu_flash_kernel_takes_the_mask_too():
    w = wl("document:5+1+6", 12, 12)
    assert check(resolve("sdpa-flash").build(w, "cpu", {}), w, "cpu").ok


def test_softcap_is_refused_with_the_reason():
    why = resolve("sdpa-math").supports(wl("causal", 8, 8, "softcap:20"), "cpu")
    assert why.startswith("SDPA cannot express softcap")


def test_the_mask_is_built_once_in_the_inputs_dtype_with_aligned_rows():
    w = wl("window:4", 3, 20, "alibi", dtype="bf16")
    m = sdpa.additive_mask(w, "cpu")
    assert m.shape == (1, 4, 3, 20) and m.dtype == torch.bfloat16
    assert m.stride(-2) % sdpa.MASK_ALIGN == 0 and m.stride(-1) == 1
    assert sdpa.mask_bytes(w) == 4 * 3 * 32 * 2
    row = m[0, 0, 0]   # query 0 sits at position 17 (bottom-right) and sees keys 13..17
    assert torch.isinf(row[:13]).all() and torch.isfinite(row[13:18]).all() and torch.isinf(row[18:]).all()
    plain = sdpa.additive_mask(wl("window:4", 3, 20), "cpu")
    assert plain.shape == (1, 1, 3, 20) and set(plain.unique().tolist()) == {0.0, float("-inf")}


def test_plainer_equivalents_take_the_plain_path():
    assert sdpa.plan(wl("causal-br", 1, 4096)) == ("full", False)      # a decode row sees the whole cache
    assert sdpa.plan(wl("document:12", 12, 12)) == ("causal", False)   # one document is causal
    assert sdpa.plan(wl("window:11", 12, 12)) == ("causal", False)     # a window as wide as the sequence
    assert sdpa.plan(wl("window:11", 12, 12, "alibi")) == ("causal", True)
    assert sdpa.mask_bytes(wl("causal-br", 1, 4096)) == 0


def test_a_mask_too_large_for_memory_is_refused():
    w = Workload(1, 8, 8, 65536, 65536, 64, "bf16", mask="document:rand:4")
    assert "GiB attn_mask" in resolve("sdpa-auto").supports(w, "cpu")


def test_math_refuses_cells_whose_temporaries_would_not_fit():
    from attnbench.spec import load_preset

    math = resolve("sdpa-math")
    decode = {w.key: w for w in load_preset("decode")}
    big = decode["b32_hq32_hkv8_sq1_sk131072_d128_bf16_causalbr_fwd"]   # K and V repeated 4x: 64 GiB
    assert sdpa.math_bytes(big) == 32 * 32 * 131072 * 4 * 2 + 2 * 32 * 32 * 131072 * 128 * 2
    assert "GiB of temporaries" in math.supports(big, "cpu")
    assert math.supports(decode["b32_hq32_hkv1_sq1_sk32768_d128_bf16_causalbr_fwd"], "cpu") is None
    assert all("GiB of temporaries" in math.supports(w, "cpu") for w in load_preset("long-context"))


def test_the_timed_call_carries_no_mask_building():
    calls = []
    w = wl("document:rand:3", 16, 16)
    real = sdpa.additive_mask
    try:
        sdpa.additive_mask = lambda *a: calls.append(1) or real(*a)
        fn = resolve("sdpa-math").build(w, "cpu", {})
        call = make_call(fn, w, make_inputs(w, "cpu", 0))
        for _ in range(3):
            call()
    finally:
        sdpa.additive_mask = real
    assert calls == [1]


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-auto"])
@pytest.mark.parametrize("mask,mod,direction", [("window:64", "", "fwd"), ("document:rand:4", "alibi", "fwd"),
                                                ("causal-br", "", "fwd+bwd")])
def test_gpu_backends_take_the_mask_or_say_why_not(name, mask, mod, direction):
    from attnbench.measure.runner import measure_cell
    from attnbench.measure.timing import TimingPolicy, make_timer

    q = 64 if mask == "causal-br" else 512
    w = Workload(2, 16, 4, q, 512, 128, "bf16", mask=mask, score_mod=mod, direction=direction)
    m = measure_cell(resolve(name), w, "cuda", make_timer("cold", "cuda"),
                     TimingPolicy(warmup_ms=1, min_samples=3, max_samples=3))
    assert m.status in ("ok", "unsupported"), m.reason
    if m.status == "unsupported":   # torch's own reason, e.g. flash: no attn_mask
        assert f"torch has no {name} kernel" in m.reason
    else:
        assert m.rel_err <= m.tolerance
