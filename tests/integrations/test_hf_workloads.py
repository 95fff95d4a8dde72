"""hf_workloads: configs read locally, layers and their masks, the workloads a model produces (checked
against what a model really sends to attention)."""

import json
from collections import Counter

import pytest
import torch

from attnbench.errors import UserError
from attnbench.integrations import hf_workloads as hw
from attnbench.spec import Workload
from attnbench.tune import dispatch

from . import tiny


def W(b, q, kv, mask, d=16, dtype="fp32", direction="fwd"):
    return Workload(batch=b, q_heads=4, kv_heads=2, q_len=q, kv_len=kv, head_dim=d, dtype=dtype, mask=mask,
                    direction=direction)


def test_load_config_from_a_file_a_folder_or_the_cache_never_downloading(tmp_path, monkeypatch):
    tiny.llama().save_pretrained(tmp_path / "m")
    for source in (tmp_path / "m", tmp_path / "m" / "config.json", str(tmp_path / "m")):
        cfg = hw.load_config(source)
        assert cfg.model_type == "llama" and cfg.num_attention_heads == 4
    cfg = tiny.mistral()
    assert hw.load_config(cfg) is cfg
    with pytest.raises(UserError, match="config file not found"):
        hw.load_config(tmp_path / "nope.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="folder without a config.json"):
        hw.load_config(tmp_path / "empty")
    (tmp_path / "bad.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(UserError, match="cannot read a transformers config"):
        hw.load_config(tmp_path / "bad.json")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache: the id cannot be there
    with pytest.raises(UserError, match="reads only local files and never downloads"):
        hw.load_config("someone/not-a-cached-model")


def test_missing_transformers_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    with pytest.raises(UserError, match=r"transformers is not installed: pip install 'attnbench\[hf\]'"):
        hw.require_transformers()
    with pytest.raises(UserError, match="not installed"):
        hw.load_config("x/config.json")


def test_layers_of_llama_mistral_and_a_hybrid_qwen2():
    assert hw.attention_layers(tiny.llama()) == [hw.AttentionLayer(0, 4, 2, 16), hw.AttentionLayer(1, 4, 2, 16)]
    assert [la.sliding_window for la in hw.attention_layers(tiny.mistral(window=8))] == [8, 8]
    assert [la.sliding_window for la in hw.attention_layers(tiny.qwen2(window=8))] == [None, 8]
    assert [la.head_dim for la in hw.attention_layers(tiny.llama(head_dim=32))] == [32, 32]
    odd = tiny.llama()
    odd.layer_types = ["full_attention", "chunked_attention"]
    with pytest.raises(UserError, match="layer 1 of 'llama' is 'chunked_attention'"):
        hw.attention_layers(odd)
    assert hw.describe(tiny.qwen2(window=8)) == "qwen2: 2 layers, H4/2 D16, 1 sliding (window 8)"


def test_layer_masks_follow_transformers_windows():
    # transformers' window of 8 keys (the query included) is window:7; it matters only past 8 keys
    assert hw.layer_mask(20, 20, None) == "causal"
    assert hw.layer_mask(1, 20, None) == "causal-br"
    assert hw.layer_mask(20, 20, 8) == "window:7"
    assert hw.layer_mask(8, 8, 8) == "causal" and hw.layer_mask(9, 9, 8) == "window:7"
    assert hw.layer_mask(1, 8, 8) == "causal-br" and hw.layer_mask(1, 9, 8) == "window:7"
    from transformers.masking_utils import sdpa_mask, sliding_window_causal_mask_function

    from attnbench.spec import masks

    for q, kv in ((12, 12), (1, 12), (1, 5)):
        theirs = sdpa_mask(1, q, kv, q_offset=kv - q, mask_function=sliding_window_causal_mask_function(8),
                           allow_is_causal_skip=False)[0, 0]
        assert torch.equal(theirs, masks.mask_matrix(hw.layer_mask(q, kv, 8), q, kv))


def test_model_workloads_exact_list():
    got = hw.model_workloads(tiny.qwen2(window=16), [1, 2], [32])
    assert got == [W(1, 32, 32, "causal"), W(1, 32, 32, "window:15"), W(2, 32, 32, "causal"),
                   W(2, 32, 32, "window:15"), W(1, 1, 32, "causal-br"), W(1, 1, 16, "causal-br"),
                   W(2, 1, 32, "causal-br"), W(2, 1, 16, "causal-br")]
    # the same shapes in both layers of a Llama: de-duplicated; the dtype from the config or given
    assert hw.model_workloads(tiny.llama(), [4], [64, 8]) == [W(4, 64, 64, "causal"), W(4, 8, 8, "causal"),
                                                              W(4, 1, 64, "causal-br"), W(4, 1, 8, "causal-br")]
    assert {w.dtype for w in hw.model_workloads(tiny.llama(dtype="bfloat16"), [1], [8])} == {"bf16"}
    assert {w.dtype for w in hw.model_workloads(tiny.llama(), [1], [8], dtype="fp16")} == {"fp16"}
    # a training pass does not decode
    assert hw.model_workloads(tiny.mistral(window=4), [1], [8], direction="fwd+bwd") == [
        W(1, 8, 8, "window:3", direction="fwd+bwd")]


def test_options_and_dtype_errors():
    cfg = tiny.llama(dtype=None)
    with pytest.raises(UserError, match="config gives no dtype: pass --dtype"):
        hw.model_workloads(cfg, [1], [8])
    with pytest.raises(UserError, match="not one attnbench measures"):
        hw.config_dtype(cfg, "int8")
    with pytest.raises(UserError, match="needs --seq"):
        hw.workloads_from_options(tiny.llama(), "1", None)
    with pytest.raises(UserError, match="--dtype: give one value"):
        hw.workloads_from_options(tiny.llama(), "1", "8", "fp16,bf16")
    with pytest.raises(UserError, match="--pass with --from-model"):
        hw.workloads_from_options(tiny.llama(), "1", "8", None, "fwd,bwd")
    both = hw.workloads_from_options(tiny.llama(), "1", "8", None, "fwd,fwd+bwd")
    assert both == hw.model_workloads(tiny.llama(), [1], [8]) + hw.model_workloads(tiny.llama(), [1], [8],
                                                                                  direction="fwd+bwd")
    with pytest.raises(UserError, match="--batch: expected whole numbers"):
        hw.workloads_from_options(tiny.llama(), "one", "8")
    assert hw.workloads_from_options(tiny.llama(), None, "8,16", "bf16") == hw.model_workloads(
        tiny.llama(), [1], [8, 16], "bf16")


@pytest.mark.parametrize("make", [tiny.llama, tiny.mistral, tiny.qwen2], ids=["llama", "mistral", "qwen2"])
def test_collected_workloads_are_what_the_model_sends_to_attention(make, monkeypatch):
    """A prefill of S tokens and two decode steps through generate() (the cache it builds from the config)
    reach attention exactly as the workloads collected for S (prefill) and S+1, S+2 (decode) say."""
    from attnbench.integrations import transformers as hf

    seen = Counter()
    real = dispatch.attention

    def spy(q, k, v, **kw):
        seen[Workload(batch=q.shape[0], q_heads=q.shape[1], kv_heads=k.shape[1], q_len=q.shape[2],
                      kv_len=k.shape[2], head_dim=q.shape[3], dtype="fp32", mask=kw["mask"])] += 1
        return real(q, k, v, **kw)

    monkeypatch.setattr(dispatch, "attention", spy)
    hf.register()
    m = tiny.model(make(window=20) if make is not tiny.llama else make(), attn="attnbench")
    ids = tiny.tokens(batch=2, seq=24)
    with torch.no_grad():
        m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False, pad_token_id=0)
    prefill = {w for w in hw.model_workloads(m.config, [2], [24], "fp32") if w.q_len > 1}
    decode = {w for w in hw.model_workloads(m.config, [2], [25, 26], "fp32") if w.q_len == 1}
    assert set(seen) == prefill | decode
    assert len(prefill) == (2 if make is tiny.qwen2 else 1)  # qwen2: a full and a sliding layer


def test_configs_that_are_no_causal_decoder_are_refused():
    """An encoder, an encoder-decoder or a bidirectional decoder produces none of the causal workloads collected
    here (a ViT config was read as a causal decoder and tuned)."""
    from transformers import T5Config, ViTConfig

    vit = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
    t5 = T5Config(vocab_size=96, d_model=64, num_layers=2, num_heads=4, d_ff=96, d_kv=16)
    for cfg in (vit, t5):
        with pytest.raises(UserError, match=f"model_type '{cfg.model_type}' is not a decoder-only causal LM"):
            hw.attention_layers(cfg)
        with pytest.raises(UserError, match="not a decoder-only causal LM"):
            hw.model_workloads(cfg, [1], [8], "fp32")
    with pytest.raises(UserError, match="attends bidirectionally"):
        hw.attention_layers(tiny.gemma3(use_bidirectional_attention=True))


def test_softcapped_layers_are_named_and_not_tuned():
    """Gemma 2's soft-capped layers never run the table: their workloads carry the cap, and nothing is tuned
    for them (they were tuned as plain attention)."""
    cfg = tiny.gemma2(window=8, softcap=30.0)
    layers = hw.attention_layers(cfg)
    assert [(la.sliding_window, la.softcap) for la in layers] == [(8, 30.0), (None, 30.0)]
    assert hw.layer_workload(layers[0], "prefill", 1, 16, "fp32").score_mod == "softcap:30"
    assert hw.describe(cfg) == "gemma2: 2 layers, H4/2 D16, 1 sliding (window 8), softcap 30"
    with pytest.raises(UserError, match=r"no attention layer of 'gemma2' would run a tuned entry: layers 0, 1 "
                                        r"soft-cap their scores \(attn_logit_softcapping=30\)"):
        hw.model_workloads(cfg, [1], [16])
    plain = tiny.gemma2(window=8, softcap=None)
    assert hw.model_workloads(plain, [1], [16]) == [W(1, 16, 16, "window:7"), W(1, 16, 16, "causal"),
                                                    W(1, 1, 8, "causal-br"), W(1, 1, 16, "causal-br")]


def test_a_model_id_is_read_from_the_cache_without_the_network(tmp_path, monkeypatch):
    """A cached model id is found, an uncached one is a UserError, and neither goes through huggingface_hub's
    download function nor opens a connection, HF_HUB_OFFLINE unset (transformers' local_files_only=True
    lookup did both on a cache miss: its request headers fetch a registry from the Hub)."""
    import socket

    import huggingface_hub
    import transformers.utils.hub as tf_hub
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-llama" / "snapshots" / "abc123"
    tiny.llama().save_pretrained(snapshot)
    (cache / "models--someone--tiny-llama" / "refs").mkdir()
    (cache / "models--someone--tiny-llama" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    reached = []

    def record(name):
        def fn(*args, **kwargs):
            reached.append(name)
            raise OSError(f"{name} called")
        return fn

    monkeypatch.setattr(tf_hub, "hf_hub_download", record("hf_hub_download"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", record("hf_hub_download"))
    monkeypatch.setattr(socket, "getaddrinfo", record("getaddrinfo"))
    monkeypatch.setattr(socket.socket, "connect", record("connect"))
    cfg = hw.load_config("someone/tiny-llama")
    assert (cfg.model_type, cfg.num_attention_heads) == ("llama", 4)
    for missing in ("someone/not-cached", "not a/valid id"):
        with pytest.raises(UserError, match="nor a model id in the local Hugging Face cache"):
            hw.load_config(missing)
    assert reached == []


def test_layers_whose_scale_is_not_the_default_are_left_out_with_a_line():
    """Gemma 3 scales by query_pre_attn_scalar ** -0.5, which attention modules pass as `scaling`; where that
    is not 1/sqrt(head_dim), dispatch sends the layer to SDPA, so tuning leaves it out and says so (it tuned
    them: tables full of entries no call used)."""
    assert hw.layer_scales(tiny.gemma3(scalar=32)) == {0: 32 ** -0.5, 1: 32 ** -0.5}
    assert hw.layer_scales(tiny.llama()) == {0: 0.25, 1: 0.25}
    with pytest.raises(UserError, match=r"no attention layer of 'gemma3_text' would run a tuned entry: layers 0, 1 scale "
                                        r"their scores by 0.176777, not 1/sqrt\(16\) = 0.25: attnbench.attention sends"):
        hw.model_workloads(tiny.gemma3(scalar=32), [1], [16])
    lines = []
    default = hw.model_workloads(tiny.gemma3(scalar=16), [1], [16], say=lines.append)
    assert len(default) == 4 and lines == []
    # one layer of two with its own scale (given, as layer_scales would read it): that one is left out
    cfg = tiny.qwen2(window=12)
    got = hw.model_workloads(cfg, [2], [24], scales={0: 0.1, 1: 0.25}, say=lines.append)
    assert got == [W(2, 24, 24, "window:11"), W(2, 1, 12, "causal-br")]
    assert lines == ["layer 0 scales its scores by 0.1, not 1/sqrt(16) = 0.25: attnbench.attention sends a custom "
                     "scale to scaled_dot_product_attention, never the table; not tuned"]
