import pytest

from attnbench.errors import UserError
from attnbench.spec import Workload, expand, load_preset, load_sweep, parse_list, preset_names


def w(**kw):
    base = dict(batch=2, q_heads=4, kv_heads=4, q_len=64, kv_len=64, head_dim=32)
    base.update(kw)
    return Workload(**base)


def test_workload_normalizes_dtype_and_keys():
    a = w(dtype="float16")
    assert a.dtype == "fp16"
    assert a.key == "b2_hq4_hkv4_sq64_sk64_d32_fp16_full_fwd"
    assert a.label == "B2 H4 S64 D32 fp16"
    assert w(kv_heads=2, causal=True, direction="bwd").label == "B2 H4/2 S64 D32 fp16 causal bwd"
    assert Workload.from_dict(a.to_dict()) == a
    assert hash(a) == hash(w(dtype="fp16"))


@pytest.mark.parametrize("kw, msg", [
    (dict(batch=0), "batch must be a positive integer"),
    (dict(head_dim=-1), "head_dim must be a positive integer"),
    (dict(kv_heads=3), "kv_heads (3) must divide q_heads (4)"),
    (dict(dtype="int8"), "unknown dtype 'int8'"),
    (dict(direction="sideways"), "unknown pass 'sideways'"),
    (dict(batch=True), "batch must be a positive integer"),
])
def test_workload_rejects_nonsense(kw, msg):
    with pytest.raises(UserError) as err:
        w(**kw)
    assert msg in str(err.value)
    assert "\n" not in str(err.value)


def test_expand_is_a_product_with_kv_defaults():
    ws = expand({"batch": [1, 2], "heads": 8, "seq": ["128", "256"], "dim": 64, "causal": ["true", "false"]})
    assert len(ws) == 8
    assert all(x.kv_heads == 8 for x in ws)
    assert {(x.q_len, x.kv_len) for x in ws} == {(128, 128), (256, 256)}
    assert {x.causal for x in ws} == {True, False}


def test_expand_errors():
    with pytest.raises(UserError, match="unknown axis 'sequence'"):
        expand({"batch": 1, "heads": 1, "sequence": 4, "dim": 8})
    with pytest.raises(UserError, match="does not say 'seq'"):
        expand({"batch": 1, "heads": 1, "dim": 8})
    with pytest.raises(UserError, match="seq must be an integer"):
        expand({"batch": 1, "heads": 1, "seq": "long", "dim": 8})
    with pytest.raises(UserError, match="empty list"):
        parse_list(" , ")


def test_presets():
    assert {"characterize", "llm-prefill", "cpu-smoke"} <= set(preset_names())
    ch = load_preset("characterize")
    assert len(ch) == 10  # the original study's ten shapes
    assert all(x.dtype == "fp16" and x.head_dim == 64 and not x.causal for x in ch)
    assert {x.q_len for x in ch if x.batch == 32 and x.q_heads == 8} == {128, 256, 512, 1024, 2048}
    assert {x.batch for x in ch if x.q_len == 512 and x.q_heads == 8} == {8, 16, 32, 64}
    assert {x.q_heads for x in ch if x.q_len == 512 and x.batch == 32} == {4, 8, 16}
    llm = load_preset("llm-prefill")
    assert all(x.batch * x.q_len == 16384 for x in llm)
    assert all(x.q_heads == 32 and x.kv_heads == 8 and x.causal and x.dtype == "bf16" for x in llm)
    assert [x.q_len for x in llm] == [1024, 2048, 4096, 8192, 16384]
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        load_preset("nope")


def test_sweep_files(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('name = "mine"\n[defaults]\ndim = 32\n[[group]]\nbatch = [1, 2]\nheads = 4\nseq = 16\n'
                    '[[group]]\nbatch = 1\nheads = 4\nseq = 16\n')
    s = load_sweep(toml)
    assert s.name == "mine"
    assert len(s) == 2  # the duplicate (batch 1) appears once
    yml = tmp_path / "s.yaml"
    yml.write_text("batch: [1]\nheads: [2]\nkv_heads: [1]\nseq: [8]\nkv_seq: [16]\ndim: [16]\ndtype: bf16\n")
    (only,) = load_sweep(yml).workloads
    assert (only.kv_heads, only.kv_len, only.dtype) == (1, 16, "bf16")
    bad = tmp_path / "bad.toml"
    bad.write_text("batch = [1\n")
    with pytest.raises(UserError, match="cannot parse sweep file"):
        load_sweep(bad)
    with pytest.raises(UserError, match="sweep file not found"):
        load_sweep(tmp_path / "missing.toml")
    extra = tmp_path / "extra.toml"
    extra.write_text("batch = 1\nheads = 1\nseq = 1\ndim = 8\ncolour = 'red'\n")
    with pytest.raises(UserError, match="unknown keys colour"):
        load_sweep(extra)
