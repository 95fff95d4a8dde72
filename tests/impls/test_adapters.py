import sys

import pytest
import torch

from attnbench.errors import UserError
from attnbench.impls import Unsupported, make_inputs, registry, resolve
from attnbench.impls.adapters import adapter_impls
from attnbench.impls.adapters.fa2 import FlashAttn2
from attnbench.impls.adapters.layouts import PerInputs, to_pages
from attnbench.impls.adapters.library import module_findable, refusal
from attnbench.measure.correctness import check
from attnbench.measure.runner import measure_cell, prepare_cell
from attnbench.measure.timing import TimingPolicy
from attnbench.measure.timers import FakeTimer
from attnbench.spec import Workload
from tests.fixtures.fakelibs import ROOT as FAKES

SHAPE = dict(batch=2, q_heads=4, kv_heads=2, q_len=16, kv_len=16, head_dim=16, dtype="fp16")


def wl(**changes):
    return Workload(**{**SHAPE, **changes})


BASE = wl()


def built(name, w, params=None):
    impl = resolve(name)
    return impl, impl.build(w, "cpu", params or {})


def correct(name, w, params=None):
    impl, fn = built(name, w, params)
    result = check(fn, w, "cpu", seed=7)
    assert result.ok, f"{name} {w.label}: {result.reason}"
    return impl, fn


def calls(module):
    return sys.modules[module].CALLS


MASKS = [
    dict(),
    dict(causal=True),
    dict(mask="causal-br", q_len=8, kv_len=24),
    dict(mask="window:5", q_len=16, kv_len=24),
    dict(score_mod="softcap:3"),
    dict(mask="document:5+3+8"),
]


@pytest.mark.parametrize("name", ["fa2", "fa3", "fa4"])
@pytest.mark.parametrize("changes", MASKS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "full")
def test_flash_attn_forward_matches_the_reference(fakelibs, name, changes):
    fakelibs()
    w = wl(**changes)
    correct(name, w)
    module = {"fa2": "flash_attn.flash_attn_interface", "fa3": "flash_attn_interface",
              "fa4": "flash_attn.cute.interface"}[name]
    fn_name, kw = calls(module)[-1]
    assert fn_name == ("flash_attn_varlen_func" if w.mask_kind == "document" else "flash_attn_func")
    assert kw["causal"] == (w.mask_kind in ("causal", "causal-br", "document"))
    if w.mask_kind == "window":
        assert tuple(kw["window_size"]) == (5, 0)  # flash-attn's (left, right): W keys before the diagonal


@pytest.mark.parametrize("name", ["fa2", "fa3", "fa4"])
@pytest.mark.parametrize("direction", ["bwd", "fwd+bwd"])
@pytest.mark.parametrize("mask", ["causal", "document:rand:3"])
def test_flash_attn_gradients_match_the_reference(fakelibs, name, direction, mask):
    fakelibs()
    _, fn = correct(name, BASE.replace(mask=mask, direction=direction))  # correct() asserts the check passed
    assert fn.ran.startswith(name)


def test_fa2_alibi_only_under_a_causal_mask(fakelibs):
    fakelibs()
    impl = resolve("fa2")
    w = BASE.replace(causal=True, score_mod="alibi")
    correct("fa2", w)
    assert calls("flash_attn.flash_attn_interface")[-1][1]["alibi"]
    correct("fa2", BASE.replace(mask="document:4+12", score_mod="alibi"))
    assert "symmetric" in impl.supports(w.replace(mask="full", score_mod="alibi"), "cuda")
    assert "alibi" in resolve("fa3").supports(w, "cuda")  # fa3 and fa4 declare no ALiBi


@pytest.mark.parametrize("name", ["fa2", "fa3", "fa4", "flashinfer"])
def test_top_left_causal_with_unequal_lengths_is_another_mask(fakelibs, name):
    fakelibs()
    why = resolve(name).supports(BASE.replace(causal=True, q_len=8, kv_len=24), "cuda")
    assert "bottom-right" in why and "causal-br" in why
    assert resolve(name).supports(BASE.replace(mask="causal-br", q_len=8, kv_len=24), "cuda") is None


def test_fa2_kvcache_path_and_split_knob(fakelibs):
    fakelibs()
    w = BASE.replace(mask="causal-br", q_len=4, kv_len=32)
    impl = resolve("fa2")
    space = impl.param_space(w, "cuda")
    assert {"path": "kvcache", "num_splits": 4} in space and {} in space
    _, fn = correct("fa2", w, {"path": "kvcache", "num_splits": 4})
    name, kw = calls("flash_attn.flash_attn_interface")[-1]
    assert name == "flash_attn_with_kvcache" and kw["num_splits"] == 4 and kw["causal"]
    assert fn.ran == "fa2:kvcache"
    assert impl.param_space(w.replace(direction="bwd"), "cuda") == [{}]
    assert impl.param_space(w, "cpu") == [{}]


def test_fa3_knobs_reach_the_library(fakelibs):
    fakelibs()
    impl = resolve("fa3")
    space = impl.param_space(BASE, "cuda")
    assert {"pack_gqa": True} in space and {"num_splits": 0} in space
    correct("fa3", BASE, {"pack_gqa": False, "num_splits": 0})
    kw = calls("flash_attn_interface")[-1][1]
    assert kw["pack_gqa"] is False and kw["num_splits"] == 0
    assert {"pack_gqa": True} not in impl.param_space(BASE.replace(kv_heads=4), "cuda")  # no GQA, no packing


def test_library_refusals_become_unsupported_with_the_library_text(fakelibs):
    fakelibs()
    w = BASE.replace(head_dim=320)
    inputs = make_inputs(w, "cpu", 0)
    for name, text in (("fa2", "at most 256"), ("fa3", "at most 256"), ("fa4", "not supported on SM90")):
        _, fn = built(name, w)
        with pytest.raises(Unsupported, match=text):
            fn(inputs.q, inputs.k, inputs.v)
    assert refusal(RuntimeError("FlashAttention only support fp16 and bf16 data type"))
    assert not refusal(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not refusal(RuntimeError("something else broke"))


class CpuFa2(FlashAttn2):
    """fa2 allowed on the CPU, so the runner's whole cell (build, first call, check, backend) runs on fakes."""

    def supports(self, workload, device):
        return super().supports(workload, "cuda")


def test_the_runner_measures_an_adapter_and_records_what_ran(fakelibs):
    fakelibs()
    impl = CpuFa2()
    policy = TimingPolicy(warmup_ms=0.0, min_samples=5, max_samples=5, min_time_ms=0.0)
    m = measure_cell(impl, BASE.replace(mask="document:6+10"), "cpu", FakeTimer(median_ms=1.0, seed=1), policy)
    assert m.status == "ok", m.reason
    assert m.backend == "fa2:varlen"
    assert any("cu_seqlens" in k for k in m.extra["kernels"])
    bad = prepare_cell(impl, BASE.replace(head_dim=320), "cpu", "host")
    assert bad.status == "unsupported" and "at most 256" in bad.reason


def test_conversions_are_made_once_per_input_set(fakelibs, monkeypatch):
    fakelibs()
    from attnbench.impls.adapters import fa2 as fa2_module

    count = {"n": 0}
    real = fa2_module.pack

    def counting(t):
        count["n"] += 1
        return real(t)

    monkeypatch.setattr(fa2_module, "pack", counting)
    w = BASE.replace(mask="document:6+10")
    _, fn = built("fa2", w)
    a, b = make_inputs(w, "cpu", 0), make_inputs(w, "cpu", 1)
    for _ in range(3):
        fn(a.q, a.k, a.v)
    assert count["n"] == 3  # q, k and v packed once, on the first call
    fn(b.q, b.k, b.v)
    assert count["n"] == 6
    a.q.add_(1)  # modified in place: packed again
    fn(a.q, a.k, a.v)
    assert count["n"] == 9


def test_per_inputs_forgets_freed_inputs():
    convert = PerInputs(lambda t: t * 2)
    a = torch.ones(3)
    assert convert(a) is convert(a)
    assert len(convert) == 1
    del a
    assert len(convert) == 0


@pytest.mark.parametrize("name,page", [("fa2", 256), ("fa3", 16), ("fa4", 16), ("flashinfer", 16)])
@pytest.mark.parametrize("q_len", [1, 5])
def test_paged_kv_from_the_workload_layout(fakelibs, name, page, q_len):
    fakelibs()
    w = Workload(batch=2, q_heads=4, kv_heads=2, q_len=q_len, kv_len=300, head_dim=16, dtype="bf16",
                      mask="causal-br", layout=f"paged:{page}")
    impl, fn = correct(name, w)
    assert "paged" in fn.ran or "decode" in fn.ran
    assert any("pages" in n for n in fn.notes)
    with pytest.raises(UserError, match="pass fwd only"):  # a paged cache is for inference: the workload refuses
        w.replace(direction="bwd")


def test_fa2_paged_page_size_refusal_is_the_libraries(fakelibs):
    fakelibs()
    w = Workload(batch=1, q_heads=2, kv_heads=2, q_len=1, kv_len=40, head_dim=16, layout="paged:16")
    _, fn = built("fa2", w)
    inputs = make_inputs(w, "cpu", 0)
    with pytest.raises(Unsupported, match="divisible by 256"):
        fn(inputs.q, inputs.k, inputs.v)


@pytest.mark.parametrize("name", ["fa2", "fa3", "fa4", "flashinfer"])
def test_paged_attention_entry_point_takes_a_block_table(fakelibs, name):
    fakelibs()
    w = BASE.replace(mask="causal-br", q_len=3, kv_len=512, dtype="bf16")
    paged = resolve(name).paged_attention(w, "cpu")
    inputs = make_inputs(w, "cpu", 3)
    kv = to_pages(inputs.k, inputs.v, 256, seed=5)
    assert kv.block_table.dtype == torch.int32 and kv.page_size == 256
    out = paged(inputs.q, kv.k_cache, kv.v_cache, kv.block_table, kv.cache_seqlens)
    ref = resolve("reference").build(w.replace(dtype="fp64"), "cpu", {})
    want = ref(*(t.double() for t in (inputs.q, inputs.k, inputs.v)))
    assert torch.allclose(out.double(), want, atol=3e-2)


FI_CASES = [
    dict(),
    dict(causal=True),
    dict(mask="causal-br", q_len=8, kv_len=24),
    dict(mask="window:4", q_len=16, kv_len=24),
    dict(score_mod="softcap:2.5"),
    dict(score_mod="alibi", causal=True),
    dict(score_mod="alibi"),
    dict(mask="document:7+9"),
    dict(q_len=1, kv_len=40),
    dict(q_len=1, kv_len=40, mask="window:9"),
]


@pytest.mark.parametrize("changes", FI_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "full")
def test_flashinfer_matches_the_reference(fakelibs, changes):
    fakelibs()
    w = wl(**changes)
    _, fn = correct("flashinfer", w)
    plan = [c for c in calls("flashinfer") if c[0].endswith("plan")][-1]
    if w.q_len == 1:
        assert plan[0] == "decode.plan" and fn.ran.startswith("flashinfer:decode")
    else:
        assert plan[0] == "ragged.plan" and plan[1]["causal"] == (w.mask_kind != "full")
        assert plan[1]["pos_encoding_mode"] == ("ALIBI" if w.score_mod == "alibi" else "NONE")


def test_flashinfer_knobs_and_declines(fakelibs):
    fakelibs()
    impl = resolve("flashinfer")
    assert {"backend": "fa3"} in impl.param_space(BASE, "cuda")
    _, fn = correct("flashinfer", BASE, {"backend": "fa3"})
    assert fn.ran == "flashinfer:ragged-prefill/fa3"
    decode = BASE.replace(q_len=1, kv_len=40)
    assert {"use_tensor_cores": True} in impl.param_space(decode, "cuda")
    _, fn = correct("flashinfer", decode, {"use_tensor_cores": True, "page_size": 64})
    assert "tensor-cores=True" in fn.ran and calls("flashinfer")[-1][1]["page_size"] == 64
    assert "no bwd pass" in impl.supports(BASE.replace(direction="bwd"), "cuda")
    assert "power-of-two" in impl.supports(BASE.replace(q_heads=6, kv_heads=2, score_mod="alibi"), "cuda")
    assert "fp32" in impl.supports(BASE.replace(dtype="fp32"), "cuda")


def test_flashinfer_alibi_is_never_pinned_to_a_backend_without_it(fakelibs):
    # flashinfer/jit/attention/modules.py: the fa3 prefill variant has no ALiBi term; a plan pinned to it
    # accepts pos_encoding_mode='ALIBI' and drops the bias (the fake does the same)
    fakelibs()
    impl = resolve("flashinfer")
    w = BASE.replace(score_mod="alibi", causal=True)
    assert impl.param_space(w, "cuda") == [{}, {"backend": "fa2"}]
    with pytest.raises(Unsupported, match="fa3 prefill backend has no ALiBi"):
        built("flashinfer", w, {"backend": "fa3"})
    with pytest.raises(Unsupported, match="fa3 prefill backend has no ALiBi"):
        impl.paged_attention(w.replace(mask="causal-br", q_len=3, kv_len=32), "cpu", {"backend": "fa3"})
    correct("flashinfer", w, {"backend": "fa2"})
    lib = sys.modules["flashinfer"]
    inputs = make_inputs(w, "cpu", 0)
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (inputs.q, inputs.k, inputs.v))
    outs = {}
    for backend in ("fa2", "fa3"):
        wrapper = lib.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(8, dtype=torch.uint8), "NHD", backend=backend)
        indptr = torch.tensor([0, w.q_len], dtype=torch.int32)
        wrapper.plan(indptr, indptr, w.q_heads, w.kv_heads, w.head_dim, causal=True, pos_encoding_mode="ALIBI",
                     q_data_type=q.dtype)
        outs[backend] = wrapper.run(q, k, v)
    assert not torch.allclose(outs["fa2"], outs["fa3"])  # the fake's fa3 drops the bias, as the library's does


XF_CASES = [
    dict(),
    dict(causal=True, q_len=8, kv_len=24),  # top-left causal: xFormers' LowerTriangularMask computes it
    dict(mask="causal-br", q_len=8, kv_len=24),
    dict(mask="window:3", q_len=16, kv_len=24),
    dict(mask="document:5+11"),
    dict(kv_heads=4, direction="bwd", causal=True),
    dict(kv_heads=4, direction="fwd+bwd", mask="document:rand:3"),
]


@pytest.mark.parametrize("changes", XF_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "full")
def test_xformers_matches_the_reference_and_records_its_operator(fakelibs, changes):
    fakelibs()
    w = wl(**changes)
    _, fn = correct("xformers", w)
    expected = {"full": "NoneType", "causal": "LowerTriangularMask", "causal-br": "LowerTriangularFromBottomRightMask",
                "window": "LowerTriangularFromBottomRightLocalAttentionMask",
                "document": "BlockDiagonalCausalMask"}[w.mask_kind]
    call = calls("xformers.ops.fmha")[-1]
    assert call["bias"] == expected and call["ndim"] == (5 if w.gqa else 4)
    assert fn.inner.ran == "xformers:fa2F@fake" + ("+fa2B@fake" if w.direction != "fwd" else "")


def test_xformers_pinned_operators_and_their_own_reasons(fakelibs):
    fakelibs()
    impl = resolve("xformers")
    assert {"op": "cutlass"} in impl.param_space(BASE, "cuda")
    w = BASE.replace(dtype="fp32")
    _, fn = correct("xformers", w, {"op": "cutlass"})
    assert fn.inner.ran == "xformers:cutlassF-fake"
    _, fn = correct("xformers", w)  # auto dispatch skips flash for fp32, as xFormers' dispatcher does
    assert fn.inner.ran == "xformers:cutlassF-fake"
    _, fn = built("xformers", w, {"op": "flash"})
    inputs = make_inputs(w, "cpu", 0)
    with pytest.raises(Unsupported, match=r"fa2F@fake does not support.*dtype=torch.float32"):
        fn(inputs.q, inputs.k, inputs.v)
    _, fn = built("xformers", BASE.replace(head_dim=320))
    inputs = make_inputs(BASE.replace(head_dim=320), "cpu", 0)
    with pytest.raises(Unsupported, match=r"No operator found.*fa2F@fake.*cutlassF-fake"):
        fn(inputs.q, inputs.k, inputs.v)
    with pytest.raises(Unsupported, match="no fmha.nope"):
        built("xformers", BASE, {"op": "nope"})
    assert "forward pass only" in impl.supports(BASE.replace(direction="bwd"), "cuda")


CUDNN_CASES = [
    dict(),
    dict(causal=True, q_len=8, kv_len=24),
    dict(mask="causal-br", q_len=8, kv_len=24),
    dict(mask="window:5", q_len=16, kv_len=24),
    dict(score_mod="alibi", causal=True),
    dict(direction="bwd", causal=True),
    dict(direction="fwd+bwd", mask="window:3"),
    dict(direction="fwd+bwd", score_mod="alibi", causal=True),
]


@pytest.mark.parametrize("changes", CUDNN_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "full")
def test_cudnn_frontend_graph_matches_the_reference(fakelibs, changes):
    fakelibs()
    w = wl(**changes)
    _, fn = correct("cudnn-fe", w)
    sdpa = [c for c in calls("cudnn") if c[0] == "sdpa"][-1][1]
    assert sdpa["generate_stats"] == (w.direction != "fwd")
    assert sdpa["attn_scale"] == pytest.approx(w.head_dim ** -0.5)
    if w.mask_kind == "window":
        # keys at or before row - L are masked: a window of W keys before the diagonal is L = W + 1
        assert sdpa["diagonal_band_left_bound"] == int(w.mask.split(":")[1]) + 1
    if w.direction != "fwd":
        assert any(c == ("execute", {"kind": "sdpa_backward", "index": 0}) for c in calls("cudnn"))
    assert fn.ran == "cudnn-fe:plan0" and fn.notes[0].startswith("forward plan 0: eng0_fake")


def test_cudnn_frontend_plans_are_tunable(fakelibs):
    fakelibs()
    impl = resolve("cudnn-fe")
    space = impl.param_space(BASE, "cuda")
    assert space == [{"heur": "A", "plan": i} for i in range(3)] + [{"heur": "B", "plan": i} for i in range(2)]
    _, fn = correct("cudnn-fe", BASE, {"heur": "B", "plan": 1})
    assert fn.ran == "cudnn-fe:plan1" and "eng0_fake_k2=1" in fn.notes[0]
    assert ("execute", {"kind": "sdpa", "index": 1}) in calls("cudnn")
    sys.modules["cudnn"].DECLINE.update({0})
    _, fn = correct("cudnn-fe", BASE)  # the first plan declines: the next one that builds runs
    assert fn.ran == "cudnn-fe:plan1"
    sys.modules["cudnn"].DECLINE.update({1, 2})
    with pytest.raises(Unsupported, match="no execution plan builds"):
        built("cudnn-fe", BASE)
    with pytest.raises(Unsupported, match="plan 7 of 3 does not exist"):
        built("cudnn-fe", BASE, {"plan": 7})
    assert impl.param_space(BASE, "cpu") == [{}]


def test_cudnn_frontend_declines_are_unsupported(fakelibs):
    fakelibs()
    impl = resolve("cudnn-fe")
    with pytest.raises(Unsupported, match="head dim 20 is not supported"):
        built("cudnn-fe", BASE.replace(head_dim=20))
    with pytest.raises(Unsupported, match="diagonal_band_right_bound needs to be set to 0"):
        built("cudnn-fe", BASE.replace(score_mod="alibi"))  # cuDNN's own validate() says which masks take ALiBi
    with pytest.raises(Unsupported, match="Bottom right causal mask is only supported with .*is_alibi=False"):
        built("cudnn-fe", BASE.replace(mask="causal-br", q_len=8, kv_len=24, score_mod="alibi"))
    assert "power-of-two" in impl.supports(BASE.replace(q_heads=6, kv_heads=6, score_mod="alibi", causal=True), "cuda")
    assert "document" in impl.supports(BASE.replace(mask="document:8+8"), "cuda")
    assert impl.state().text() == "ready (1.32.0, cuDNN 9.19.0)"


def test_backend_lists_the_layout_conversions(fakelibs):
    fakelibs()
    w = BASE.replace(mask="document:8+8")
    impl, fn = built("flashinfer", w)
    inputs = make_inputs(w, "cpu", 0)
    ran, kernels = impl.backend(fn, inputs, "cpu")
    assert ran == "flashinfer:ragged-prefill/fa2"
    assert any(k.startswith("layout: q, k, v packed") for k in kernels)


def test_installed_adapters_join_the_default_list_and_absent_ones_resolve_by_name(fakelibs):
    fakelibs(ok=("cudnn",))
    names = list(registry())
    assert "cudnn-fe" in names and "fa2" not in names and "flashinfer" not in names
    assert "fa2" in registry(include_absent=True)
    why = resolve("fa2").supports(BASE, "cuda")
    assert why == "fa2: not installed: pip install flash-attn --no-build-isolation"
    assert module_findable("cudnn") and not module_findable("flash_attn.cute")


def test_flash_attn_4_alone_is_not_flash_attn_2(fakelibs):
    site = fakelibs(ok=())
    (site / "flash_attn").mkdir()  # flash-attn-4 installs flash_attn/cute only: a namespace package
    (site / "flash_attn" / "cute").symlink_to(FAKES / "ok" / "flash_attn" / "cute")
    impls = adapter_impls()
    assert impls["fa4"].installed() and impls["fa4"].state().ready
    assert not impls["fa2"].installed()


def test_flashinfer_without_the_plan_run_api_is_unusable_with_its_version(fakelibs, monkeypatch):
    # flashinfer 0.1.x wrappers had begin_forward()/forward(); prefill.py (c91093d3) keeps begin_forward = plan
    fakelibs()
    import flashinfer

    monkeypatch.delattr(flashinfer.BatchDecodeWithPagedKVCacheWrapper, "plan")
    state = adapter_impls()["flashinfer"].state()
    assert not state.ready
    assert state.text() == ("installed 0.7.2 but unusable: flashinfer 0.7.2 predates the wrappers' plan()/run() API "
                            "this adapter calls; pip install -U flashinfer-python")


def test_xformers_block_diagonal_mask_is_made_on_the_inputs_device(fakelibs, monkeypatch):
    # attn_bias.py: from_seqlens(..., device=None) puts seqstart on the current CUDA device, and fmha refuses
    # a mask on another device than the query; the fake's default device stands for "another GPU" here
    fakelibs()
    import xformers.ops.fmha.attn_bias as ab

    monkeypatch.setattr(ab, "_get_default_bias_device", lambda device=None: device or torch.device("meta"))
    w = BASE.replace(mask="document:5+11")
    correct("xformers", w)
    with pytest.raises(ValueError, match="same device"):
        sys.modules["xformers.ops"].memory_efficient_attention(
            *(torch.zeros(1, 16, 2, 8) for _ in range(3)), attn_bias=ab.BlockDiagonalCausalMask.from_seqlens([5, 11]))


def test_xformers_dispatch_of_older_releases_is_read_too(fakelibs):
    # dispatch.py: _dispatch_fw(inp, needs_gradient) / _dispatch_bw(inp, varlen_lse_packed) now (038444aa),
    # _dispatch_fw(inp) / _dispatch_bw(inp) in older releases (ac5fd496)
    fakelibs()
    from types import SimpleNamespace

    from attnbench.impls.adapters.xformers import XFormersImpl

    import xformers.ops

    fmha = xformers.ops.fmha
    seen = []
    old = SimpleNamespace(_dispatch_fw=lambda inp: seen.append("fw") or fmha.flash.FwOp,
                          _dispatch_bw=lambda inp: seen.append("bw") or fmha.cutlass.BwOp)
    q = torch.zeros(1, 8, 2, 16, dtype=torch.float16)
    ran = XFormersImpl._dispatched(SimpleNamespace(common=fmha.common, dispatch=old), q, q, q, None, None, True)
    assert ran == "xformers:fa2F@fake+cutlassB-fake" and seen == ["fw", "bw"]
    ran = XFormersImpl._dispatched(fmha, q, q, q, None, None, True)
    assert ran == "xformers:fa2F@fake+fa2B@fake"


@pytest.mark.parametrize("version", ["1.12.0", "1.9.1"])
def test_cudnn_frontend_too_old_for_the_sdpa_arguments_is_unusable_with_its_version(fakelibs, monkeypatch, version):
    # release notes: diagonal_alignment / diagonal_band_* in 1.10 (PR #126), generate_stats in 1.13 (PR #150)
    fakelibs()
    import cudnn

    monkeypatch.setattr(cudnn, "__version__", version)
    impl = adapter_impls()["cudnn-fe"]
    assert impl.state().text() == (
        f"installed {version}, cuDNN 9.19.0 but unusable: nvidia-cudnn-frontend {version} predates "
        "sdpa(generate_stats=, diagonal_alignment=, diagonal_band_*=) (1.13); pip install -U nvidia-cudnn-frontend")
    assert "predates" in impl.supports(BASE, "cuda")
    from attnbench.impls.adapters.cudnn_fe import release

    assert release("1.32.0") == (1, 32, 0) and release("1.13.0rc1") == (1, 13, 0) and release("") == ()


@pytest.mark.parametrize("dist", ["fa4", "flash-attn-cute"])
def test_flash_attn_4_version_from_a_source_install(fakelibs, dist):
    # flash_attn/cute/pyproject.toml named the distribution flash-attn-cute, its __init__ read version("fa4")
    site = fakelibs()
    meta = site / f"{dist.replace('-', '_')}-4.0.0b1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 4.0.0b1\n")
    assert adapter_impls()["fa4"].state().text() == "ready (4.0.0b1)"


def test_fa3_builds_that_return_out_and_lse_are_read_too(fakelibs, monkeypatch):
    # hopper/flash_attn_interface.py: older builds' FlashAttnFunc returned (out, softmax_lse) always; the
    # current one (01afd16d) returns out unless return_attn_probs (the fake's convention)
    fakelibs()
    import flash_attn_interface as fa3

    current = fa3.flash_attn_func
    wrapped = []
    monkeypatch.setattr(fa3, "flash_attn_func", lambda *a, **kw: wrapped.append(1) or (current(*a, **kw), None))
    for w in (BASE, BASE.replace(causal=True, direction="fwd+bwd")):
        correct("fa3", w)  # asserts the outputs (and gradients) against float64
    assert wrapped, "the (out, lse)-returning flash_attn_func was not the one called"
