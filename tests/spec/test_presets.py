"""The built-in presets: each loads, says what it is for, and keeps to its shape and memory rules."""

import pytest

from attnbench.analysis import metrics
from attnbench.spec import DTYPE_BYTES, load_preset, preset_names

GiB = 2**30


def kv_bytes(w) -> int:
    return 2 * w.batch * w.kv_heads * w.kv_len * w.head_dim * DTYPE_BYTES[w.dtype]


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_says_what_it_is_for(name):
    sweep = load_preset(name)
    assert len(sweep) > 0 and len(sweep.description) > 40
    assert len({w.key for w in sweep}) == len(sweep)  # no workload twice


def test_decode():
    ws = list(load_preset("decode"))
    assert len(ws) == 14
    assert all(w.mask == "causal-br" and w.dtype == "bf16" and w.head_dim == 128 and w.direction == "fwd"
               for w in ws)
    assert {w.q_len for w in ws} == {1, 16} and {w.batch for w in ws} == {1, 32, 256}
    assert min(w.kv_len for w in ws) == 1024 and max(w.kv_len for w in ws) == 131072
    assert {(w.q_heads, w.kv_heads) for w in ws} == {(32, 8), (64, 8), (32, 1)}   # GQA and MQA
    assert [w.layout for w in ws].count("paged:16") == 1
    # the memory bound the description states: K+V of every cell at most 16 GiB
    assert max(kv_bytes(w) for w in ws) == 16 * GiB
    # memory-bound: about one FLOP per byte per query row that shares a KV head (Hq/Hkv x q_len), under
    # an H200's measured ridge (794 TFLOP/s over 4263 GB/s = 186 FLOP per byte) in every cell
    for w in ws:
        rows = w.q_heads // w.kv_heads * w.q_len
        assert abs(metrics.intensity(w) / rows - 1) < 0.01, w.label
    assert max(metrics.intensity(w) for w in ws) < 186


def test_masks():
    ws = list(load_preset("masks"))
    assert len(ws) == 12
    assert {w.q_len for w in ws} == {1024, 4096, 16384}
    assert all(w.batch * w.q_len == 16384 and w.q_heads * w.head_dim == 2048 for w in ws)
    assert {w.mask_kind for w in ws} == {"causal", "window", "document"}
    assert sum(w.score_mod == "softcap:20" for w in ws) == 3
    # about 512 tokens per packed document at every length
    docs = {w.q_len: w.mask for w in ws if w.mask_kind == "document"}
    assert docs == {1024: "document:rand:2", 4096: "document:rand:8", 16384: "document:rand:32"}


def test_training():
    ws = list(load_preset("training"))
    assert len(ws) == 6
    assert all(w.direction == "fwd+bwd" and w.causal and w.dtype == "bf16" for w in ws)
    assert all(w.batch * w.q_len == 16384 and w.q_heads * w.head_dim == 2048 for w in ws)
    assert {w.head_dim for w in ws} == {64, 128} and {w.q_len for w in ws} == {512, 2048, 16384}


def test_long_context():
    ws = list(load_preset("long-context"))
    assert [w.q_len for w in ws] == [32768, 65536, 131072]
    assert all(w.batch == 1 and w.causal and w.gqa and w.dtype == "bf16" for w in ws)
    # the float64 reference's chunks stay small: one KV head's 4 query heads, 256 rows, all keys
    from attnbench.impls.reference import GPU_BUDGET

    w = ws[-1]
    rows = GPU_BUDGET // (w.q_heads // w.kv_heads * w.kv_len * 8)
    assert rows == 256
