"""The "attnbench" attention implementation in transformers: logits as sdpa's, the tuned table used for every
layer's mask (causal, windows, decoding), padding masks left to SDPA, registration, explain_model."""

import pytest
import torch

from attnbench.analysis import device as devmod
from attnbench.integrations import hf_workloads as hw
from attnbench.integrations import transformers as hf
from attnbench.measure.correctness import rel_error, tolerance
from attnbench.tune.dispatch import DispatchTable, Entry, workload_bucket

from . import tiny


def table_for(workloads, impl=tiny.SPY) -> DispatchTable:
    env = {"env_id": devmod.env_id(devmod.fingerprint("cpu")), "device_kind": "cpu"}
    entries = {}
    for w in workloads:
        entries[workload_bucket(w)] = Entry(bucket=workload_bucket(w), impl=impl, params={}, workload=w.to_dict())
    return DispatchTable(environment=env, entries=entries)


def logits(m, ids, **kw):
    with torch.no_grad():
        return m(input_ids=ids, **kw).logits


@pytest.mark.parametrize("make, calls", [(tiny.llama, {"causal": 2}), (tiny.mistral, {"window:11": 2}),
                                         (tiny.qwen2, {"causal": 1, "window:11": 1}), (tiny.mqa, {"causal": 2}),
                                         (tiny.gemma3, {"window:11": 1, "causal": 1})],
                         ids=["llama", "mistral", "qwen2", "mqa", "gemma3"])
def test_logits_match_sdpa_and_every_layer_runs_the_table(make, calls):
    cfg = make(window=12) if make not in (tiny.llama, tiny.mqa) else make()
    ids = tiny.tokens(batch=2, seq=24)
    table = table_for(hw.model_workloads(cfg, [2], [24]))
    hf.register(table=table)
    base = tiny.model(cfg)
    want = logits(base, ids)
    base.set_attn_implementation("attnbench")
    tiny.CALLS.clear()
    got = logits(base, ids)
    assert rel_error(got, want.double()) <= tolerance("fp32")
    assert tiny.CALLS == calls
    # decoding: every step's shape is in the table too (buckets round lengths up to powers of two)
    tiny.CALLS.clear()
    with torch.no_grad():
        out = base.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False,
                            pad_token_id=0)
    base.set_attn_implementation("sdpa")
    with torch.no_grad():
        ref = base.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False,
                            pad_token_id=0)
    assert torch.equal(out, ref)
    assert tiny.CALLS["causal-br"] == 2  # two layers x one decode step (the second token comes from it)


def test_from_pretrained_with_attn_implementation_attnbench(tmp_path):
    cfg = tiny.llama()
    tiny.model(cfg).save_pretrained(tmp_path / "m")
    hf.register(table=table_for(hw.model_workloads(cfg, [1], [16])))
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="attnbench", local_files_only=True)
    assert m.config._attn_implementation == "attnbench"
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="sdpa", local_files_only=True)
    ids = tiny.tokens(batch=1, seq=16)
    tiny.CALLS.clear()
    torch.testing.assert_close(logits(m.eval(), ids), logits(ref.eval(), ids))
    assert tiny.CALLS == {"causal": 2}


def test_padding_masks_fall_back_to_sdpa_with_the_mask():
    cfg = tiny.mistral(window=12)
    hf.register(table=table_for(hw.model_workloads(cfg, [2], [24])))
    m = tiny.model(cfg)
    ids = tiny.tokens(batch=2, seq=24)
    pad = torch.ones_like(ids)
    pad[0, :5] = 0  # left padding in the first row
    want = logits(m, ids, attention_mask=pad)
    m.set_attn_implementation("attnbench")
    tiny.CALLS.clear()
    torch.testing.assert_close(logits(m, ids, attention_mask=pad), want)
    assert not tiny.CALLS  # the mask went to SDPA, never to a tuned kernel
    torch.testing.assert_close(logits(m, ids, attention_mask=torch.ones_like(ids)), logits(m, ids))
    assert tiny.CALLS == {"window:11": 4}  # an all-ones mask is no padding: the table again


def test_no_table_entry_or_a_custom_scale_is_sdpa():
    cfg = tiny.qwen2(window=12)
    hf.register(table=table_for([]))
    m = tiny.model(cfg)
    ids = tiny.tokens(batch=2, seq=24)
    want = logits(m, ids)
    m.set_attn_implementation("attnbench")
    tiny.CALLS.clear()
    torch.testing.assert_close(logits(m, ids), want)  # window:11 through an explicit SDPA mask
    for layer in m.model.layers:
        layer.self_attn.scaling = 0.5  # a custom scale: dispatch's rule sends it to SDPA even with an entry
    hf.register(table=table_for(hw.model_workloads(cfg, [2], [24])))
    m.set_attn_implementation("sdpa")
    want = logits(m, ids)
    m.set_attn_implementation("attnbench")
    torch.testing.assert_close(logits(m, ids), want)
    assert not tiny.CALLS


def test_register_is_idempotent_and_checks_the_table(tmp_path):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    first = table_for([])
    assert hf.register(table=first) == "attnbench" and hf.current_table() is first
    fn, mask_fn = AttentionInterface._global_mapping["attnbench"], AttentionMaskInterface._global_mapping["attnbench"]
    second = table_for(hw.model_workloads(tiny.llama(), [1], [8]))
    hf.register(table=second)
    assert hf.current_table() is second
    assert AttentionInterface._global_mapping["attnbench"] is fn is hf.attention_forward
    assert AttentionMaskInterface._global_mapping["attnbench"] is mask_fn is hf.attnbench_mask
    second.save(tmp_path / "t.json")
    hf.register(table=tmp_path / "t.json")
    assert hf.current_table().entries.keys() == second.entries.keys()
    from attnbench.errors import UserError

    with pytest.raises(UserError, match="dispatch table not found"):
        hf.register(table=tmp_path / "missing.json")


def test_mask_function_builds_no_dense_mask_for_plain_windows_only():
    from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function

    cfg = tiny.mistral(window=8)
    win = sliding_window_causal_mask_function(8)
    assert hf.attnbench_mask(2, 12, 12, mask_function=win, local_size=8, config=cfg) is None
    assert hf.attnbench_mask(2, 1, 12, q_offset=11, mask_function=win, local_size=8, config=cfg) is None
    assert hf.attnbench_mask(2, 12, 12, mask_function=causal_mask_function, config=cfg) is None  # sdpa_mask's own
    dense = [hf.attnbench_mask(2, 12, 12, mask_function=win, local_size=8, config=cfg, allow_is_causal_skip=False),
             hf.attnbench_mask(2, 12, 12, mask_function=win, local_size=8, config=cfg,
                               attention_mask=torch.tensor([[0] + [1] * 11, [1] * 12]).bool()),
             hf.attnbench_mask(2, 12, 12, mask_function=causal_mask_function, local_size=8, config=cfg),
             hf.attnbench_mask(2, 4, 12, q_offset=4, mask_function=win, local_size=8, config=cfg)]
    assert all(isinstance(d, torch.Tensor) and d.dtype == torch.bool for d in dense)


def test_explain_model_names_each_layers_impl():
    cfg = tiny.qwen2(window=12)
    m = tiny.model(cfg, attn="attnbench")
    hf.register(table=table_for([w for w in hw.model_workloads(cfg, [2], [24]) if w.q_len > 1]))
    got = hf.explain_model(m, 2, 24)
    assert [(d.layer, d.phase, d.workload.mask) for d in got] == [
        (0, "prefill", "causal"), (1, "prefill", "window:11"), (0, "decode", "causal-br"), (1, "decode", "causal-br")]
    assert got[0].runs.startswith(tiny.SPY) and "bucket fp32/d16/win11/gqa2/fwd/q32/kv32/b2" in got[1].runs
    assert got[2].runs.startswith("sdpa fallback: no entry for bucket fp32/d16/causalbr/gqa2/fwd/q1/kv32/b2")
    assert got[1].line().startswith("layer 1 prefill: B2 H4/2 S24 D16 fp32 window:11 -> ")
    train = hf.explain_model(m, 2, 24, direction="fwd+bwd")
    assert [d.workload.direction for d in train] == ["fwd+bwd", "fwd+bwd"]
    assert all("fwd+bwd" in d.runs and d.runs.startswith("sdpa fallback") for d in train)



@pytest.mark.gpu
@pytest.mark.parametrize("make", [tiny.llama, tiny.qwen2], ids=["llama", "qwen2"])
def test_on_the_gpu_a_tuned_table_runs_the_model(make):
    """Tuned for the model's own workloads on the GPU (SDPA backends), then run: logits within fp16's
    tolerance of sdpa's, and each layer's shape on its bucket's winner."""
    from attnbench.store import Store
    from attnbench.tune.report import dispatch_table
    from attnbench.tune.tuner import RacingPolicy, TuneConfig, tune

    sizes = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64, dtype="float16")
    cfg = make(window=128, **sizes) if make is tiny.qwen2 else make(**sizes)
    workloads = hw.model_workloads(cfg, [2], [256])
    result = tune(TuneConfig(workloads=workloads, impls=["sdpa-flash", "sdpa-cudnn", "sdpa-efficient"], device="cuda",
                             budget_s=3.0, racing=RacingPolicy(max_samples=30, first_samples=10)), Store(":memory:"))
    table = dispatch_table(result)
    hf.register(table=table)
    m = tiny.model(cfg).to("cuda", torch.float16)
    ids = tiny.tokens(batch=2, seq=256).cuda()
    want = logits(m, ids)
    m.set_attn_implementation("attnbench")
    assert rel_error(logits(m, ids), want.double()) <= tolerance("fp16")
    for d in hf.explain_model(m, 2, 256):
        entry = table.lookup(workload_bucket(d.workload))
        if entry is None:
            assert d.runs.startswith("sdpa fallback: no entry"), d.line()
        else:
            assert d.runs.startswith(entry.impl) or d.runs == "sdpa fallback: winner is sdpa-auto", d.line()


def _amplified(m, factor=6.0):
    """Scale the query and key projections so the scores reach the soft-cap (random weights keep them small)."""
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.q_proj.weight.mul_(factor)
            layer.self_attn.k_proj.weight.mul_(factor)
    return m


@pytest.mark.parametrize("window", [None, 4], ids=["full", "window4"])
def test_softcapped_attention_is_gemma2s_eager_attention(window):
    """Soft-capped scores, which SDPA refuses, are computed (they were dropped: attention without the cap)."""
    from transformers.masking_utils import sdpa_mask, sliding_window_causal_mask_function
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    class Module(torch.nn.Module):
        num_key_value_groups, is_causal = 2, True

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 10, 16, generator=g) * s for h, s in ((4, 3.0), (2, 3.0), (2, 1.0)))
    fn = sliding_window_causal_mask_function(window) if window else None
    keep = sdpa_mask(2, 10, 10, allow_is_causal_skip=False, **({"mask_function": fn} if fn else {}))
    pad = keep & torch.tensor([[0] * 3 + [1] * 7, [1] * 10]).bool()[:, None, None, :]
    for given in (None, keep, pad):
        additive = torch.where(keep if given is None else given, 0.0, torch.finfo(torch.float32).min)
        want, _ = eager_attention_forward(Module(), q, k, v, additive, scaling=0.25, softcap=2.0)
        got, weights = hf.attention_forward(Module(), q, k, v, given, scaling=0.25, sliding_window=window, softcap=2.0)
        torch.testing.assert_close(got, want)
        assert weights is None


def test_a_softcapped_model_matches_eager_with_padding_generate_and_gradients():
    cfg = tiny.gemma2(window=8, softcap=1.0)
    hf.register(table=table_for([]))
    ref = _amplified(tiny.model(cfg, attn="eager"))
    m = _amplified(tiny.model(cfg, attn="attnbench"))
    ids = tiny.tokens(batch=2, seq=20)
    pad = torch.ones_like(ids)
    pad[0, :5] = 0
    want = logits(ref, ids)
    assert rel_error(logits(m, ids), want.double()) <= tolerance("fp32")
    assert rel_error(logits(_amplified(tiny.model(tiny.gemma2(window=8, softcap=None), attn="eager")), ids),
                     want.double()) > 10 * tolerance("fp32")  # the cap matters for these weights
    rows = pad.bool()
    assert rel_error(logits(m, ids, attention_mask=pad)[rows], logits(ref, ids, attention_mask=pad)[rows].double()) \
        <= tolerance("fp32")  # a padding mask: it raised SDPA's "does not support softcap"
    with torch.no_grad():
        for mask in (torch.ones_like(ids), pad):
            out = m.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
            assert torch.equal(out, ref.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                                                 pad_token_id=0))
    for model in (m, ref):
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
    for a, b in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    assert [d.runs for d in hf.explain_model(m, 2, 20)] == [hf.SOFTCAP_RUNS] * 4


def test_explain_model_uses_each_layers_scale():
    """Gemma 3's scale is query_pre_attn_scalar ** -0.5: where it is not 1/sqrt(head_dim), dispatch sends the
    layer to SDPA, and explain_model says so (it named the table's winner, which never ran)."""
    for scalar, runs_table in ((16, True), (256, False)):
        cfg = tiny.gemma3(window=8, scalar=scalar)
        # every layer's workloads in the table (what tune --from-model tuned before it left such layers out)
        hf.register(table=table_for([hw.layer_workload(la, phase, 2, 20, "fp32") for phase in hw.PHASES
                                     for la in hw.attention_layers(cfg)]))
        m = tiny.model(cfg, attn="attnbench")
        tiny.CALLS.clear()
        logits(m, tiny.tokens(batch=2, seq=20))
        assert bool(tiny.CALLS) == runs_table
        for d in hf.explain_model(m, 2, 20):
            if runs_table:
                assert d.runs.startswith(tiny.SPY), d.line()
            else:
                assert d.runs == "sdpa fallback: custom scale (tuned impls use 1/sqrt(head_dim))", d.line()


def test_explain_model_says_when_the_model_does_not_use_attnbench():
    cfg = tiny.llama()
    hf.register(table=table_for(hw.model_workloads(cfg, [1], [8])))
    m = tiny.model(cfg, attn="sdpa")
    assert {d.runs for d in hf.explain_model(m, 1, 8)} == {"sdpa (the model's attn_implementation: not attnbench)"}
    m.set_attn_implementation("attnbench")
    assert all(d.runs.startswith(tiny.SPY) for d in hf.explain_model(m, 1, 8))


def test_register_reads_a_path_again_so_a_table_tuned_anew_is_used(tmp_path):
    """tune -o into the same file, then register(table=that path) again in the same process: the new table
    (load_table's per-path cache gave the old one, so the model kept its old dispatch)."""
    path = tmp_path / "dispatch.json"
    table_for([]).save(path)
    hf.register(table=path)
    assert not hf.current_table().entries
    cfg = tiny.llama()
    table_for(hw.model_workloads(cfg, [1], [8])).save(path)
    hf.register(table=path)
    assert len(hf.current_table().entries) == 2
    m = tiny.model(cfg, attn="attnbench")
    tiny.CALLS.clear()
    logits(m, tiny.tokens(batch=1, seq=8))
    assert tiny.CALLS == {"causal": 2}


@pytest.mark.parametrize("make", [tiny.llama, tiny.qwen2, lambda: tiny.gemma3(scalar=16), lambda: tiny.gemma3(scalar=32),
                                  lambda: tiny.gemma2(softcap=30.0)],
                         ids=["llama", "qwen2", "gemma3-default-scale", "gemma3-scalar32", "gemma2-softcap"])
def test_tuning_and_dispatch_agree_on_which_layers_use_the_table(make):
    """With an entry for every layer's workload in the table, explain_model names the winner for exactly the
    workloads tune --from-model collects (model_workloads), and the model calls the winner exactly when some
    are collected: layers left out (a soft-cap, a scale not 1/sqrt(head_dim)) are the ones that never use it."""
    from attnbench.errors import UserError

    cfg = make()
    every = [hw.layer_workload(la, phase, 2, 20, "fp32") for phase in hw.PHASES for la in hw.attention_layers(cfg)]
    try:
        tuned = set(hw.model_workloads(cfg, [2], [20]))
    except UserError as exc:
        assert "would run a tuned entry" in str(exc)
        tuned = set()
    hf.register(table=table_for(every))
    m = tiny.model(cfg, attn="attnbench")
    layers = hf.explain_model(m, 2, 20)
    assert {d.workload for d in layers if d.runs.startswith(tiny.SPY)} == tuned
    assert all(d.runs.startswith(tiny.SPY) == (d.workload in tuned) for d in layers)
    tiny.CALLS.clear()
    logits(m, tiny.tokens(batch=2, seq=20))
    assert bool(tiny.CALLS) == bool(tuned)
