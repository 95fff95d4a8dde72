"""Workload's layout field: canonical text, key and label, old rows, and what it refuses."""

import pytest

from attnbench.errors import UserError
from attnbench.spec import Workload, expand

D = Workload(batch=4, q_heads=8, kv_heads=2, q_len=1, kv_len=1000, head_dim=64, dtype="bf16", mask="causal-br")


def test_dense_is_the_default_and_keeps_old_keys():
    assert D.layout == "dense" and D.page_size is None
    assert D.key == "b4_hq8_hkv2_sq1_sk1000_d64_bf16_causalbr_fwd"
    old = {k: v for k, v in D.to_dict().items() if k != "layout"}   # a row stored before layouts
    assert Workload.from_dict(old) == D


def test_paged_is_in_the_key_and_label():
    p = D.replace(layout="Paged:16")
    assert p.layout == "paged:16" and p.page_size == 16
    assert p.key == "b4_hq8_hkv2_sq1_sk1000_d64_bf16_causalbr_paged16_fwd"
    assert p.label.endswith("causal-br paged:16")
    assert Workload.from_dict(p.to_dict()) == p and p != D


@pytest.mark.parametrize("layout, msg", [("paged", "unknown layout"), ("paged:0", "unknown layout"),
                                         ("paged:x", "unknown layout"), ("ragged", "unknown layout")])
def test_bad_layouts_are_user_errors(layout, msg):
    with pytest.raises(UserError, match=msg):
        D.replace(layout=layout)


def test_a_paged_cache_is_forward_only():
    with pytest.raises(UserError, match="pass fwd only"):
        D.replace(layout="paged:16", direction="fwd+bwd")


def test_sweep_axis():
    ws = expand({"batch": 1, "heads": 4, "seq": 1, "kv_seq": 64, "dim": 32, "layout": ["dense", "paged:8"]})
    assert [w.layout for w in ws] == ["dense", "paged:8"]
