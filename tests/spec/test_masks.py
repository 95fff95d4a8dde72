"""Mask kinds and score modifiers: canonical text, exact counts against the boolean mask, and the float64
reference against an independent row-by-row computation."""

import math

import pytest
import torch

from attnbench.analysis import metrics
from attnbench.errors import UserError
from attnbench.impls.reference import attention_math, reference_output
from attnbench.spec import Workload, expand, masks

CASES = [
    ("full", 5, 7), ("causal", 6, 6), ("causal", 6, 4), ("causal", 2, 5), ("causal-br", 3, 9),
    ("causal-br", 9, 4), ("causal-br", 1, 17), ("window:0", 8, 8), ("window:3", 8, 8), ("window:2", 4, 12),
    ("window:100", 5, 9), ("window:4", 1, 64), ("document:3+1+4", 8, 8), ("document:rand:3", 10, 10),
    ("document:8", 8, 8),
]


@pytest.mark.parametrize("mask,q,kv", CASES)
def test_counts_are_exact(mask, q, kv):
    m = masks.canonical_mask(mask, q, kv)
    keep = masks.mask_matrix(m, q, kv)
    assert keep.shape == (q, kv)
    assert masks.attended_pairs(m, q, kv) == int(keep.sum())
    assert masks.keys_read(m, q, kv) == int(keep.any(dim=0).sum())
    assert [tuple(x) for x in masks.spans(m, q, kv)] == [
        (int(r.nonzero().min()), int(r.nonzero().max()) + 1) if r.any() else (lo, lo)
        for r, (lo, _) in zip(keep, masks.spans(m, q, kv))]


def test_conventions_by_hand():
    # bottom-right: the last query row sees every key; a decode row (q_len 1) sees the whole cache
    assert masks.mask_matrix("causal-br", 2, 4).tolist() == [[True, True, True, False], [True] * 4]
    assert masks.mask_matrix("causal-br", 1, 5).tolist() == [[True] * 5]
    # window:1 keeps the key at the query's position and the one before it
    assert masks.mask_matrix("window:1", 3, 3).tolist() == [[True, False, False], [True, True, False],
                                                            [False, True, True]]
    # documents: causal within each, blind across
    assert masks.mask_matrix("document:2+2", 4, 4).tolist() == [
        [True, False, False, False], [True, True, False, False],
        [False, False, True, False], [False, False, True, True]]
    # a query row that sees nothing (bottom-right with more queries than keys)
    assert not masks.mask_matrix("causal-br", 3, 1)[0].any()


def test_canonical_text_and_errors():
    assert masks.canonical_mask("causal-br", 8, 8) == "causal"          # the same mask when q_len == kv_len
    assert masks.canonical_mask("Window:16", 8, 8) == "window:16"
    assert masks.canonical_mask("document:4,2,2", 8, 8) == "document:4+2+2"
    assert masks.canonical_score_mod("softcap:30.0") == "softcap:30"
    for bad, q, kv in (("window:-1", 4, 4), ("window:x", 4, 4), ("document:3+3", 8, 8), ("document:4", 4, 8),
                       ("document:rand:9", 8, 8), ("diagonal", 4, 4)):
        with pytest.raises(UserError):
            masks.canonical_mask(bad, q, kv)
    for bad in ("softcap:0", "softcap:x", "tanh"):
        with pytest.raises(UserError):
            masks.canonical_score_mod(bad)


def test_random_packing_is_seeded_and_sums():
    a = masks.random_lengths(5, 100)
    assert a == masks.random_lengths(5, 100) and sum(a) == 100 and len(a) == 5 and min(a) >= 1
    assert masks.random_lengths(5, 101) != a or sum(masks.random_lengths(5, 101)) == 101


def test_workload_fields_key_label_and_old_rows():
    w = Workload(2, 8, 2, 64, 64, 32, "bf16", causal=True)
    assert w.mask == "causal" and w.key == "b2_hq8_hkv2_sq64_sk64_d32_bf16_causal_fwd"   # old keys unchanged
    assert Workload(2, 8, 2, 64, 64, 32, "bf16", mask="causal") == w
    old = {"batch": 2, "q_heads": 8, "kv_heads": 2, "q_len": 64, "kv_len": 64, "head_dim": 32, "dtype": "bf16",
           "causal": True, "direction": "fwd"}
    assert Workload.from_dict(old) == w                                           # rows stored before masks
    d = Workload(1, 4, 4, 1, 4096, 128, mask="causal-br")
    assert not d.causal and d.key.endswith("_causalbr_fwd") and "causal-br" in d.label
    s = Workload(1, 4, 4, 256, 256, 64, mask="window:32", score_mod="softcap:50")
    assert s.key.endswith("_win32_softcap50_fwd") and s.label.endswith("window:32 softcap:50")
    many = Workload(1, 4, 4, 80, 80, 64, mask="document:" + "+".join(["10"] * 8))
    assert "_doc8x" in many.key and "docs:8" in many.label
    assert w.replace(causal=False).mask == "full" and w.replace(mask="window:4").causal is False
    with pytest.raises(UserError):
        Workload(1, 4, 4, 16, 16, 64, causal=True, mask="window:4")


def test_sweep_axes_take_masks():
    ws = expand({"batch": 1, "heads": 4, "seq": 64, "dim": 32, "mask": ["causal", "window:8", "document:rand:2"],
                 "score_mod": ["", "alibi"]})
    assert len(ws) == 6 and {w.mask_kind for w in ws} == {"causal", "window", "document"}


def test_flops_and_bytes_follow_the_mask():
    full = Workload(1, 2, 2, 128, 128, 64)
    causal = full.replace(causal=True)
    assert metrics.flops(causal) == 4 * 2 * 64 * (128 * 129 // 2)
    win = full.replace(mask="window:15")
    assert metrics.flops(win) == 4 * 2 * 64 * masks.attended_pairs("window:15", 128, 128)
    decode = Workload(1, 2, 2, 1, 8192, 64, mask="window:127")
    # a sliding window over a long cache reads only the window's keys
    assert metrics.min_bytes(decode) == (2 * 2 * 1 * 64 + 2 * 2 * 128 * 64) * 2
    assert metrics.attended_pairs(4, 4, True) == 10 and metrics.attended_pairs(4, 4, "window:1") == 7


def _rowwise(q, k, v, mask, score_mod=""):
    """An independent float64 computation: one query row at a time, from spans and explicit formulas."""
    b, hq, sq, d = q.shape
    sk, hkv = k.shape[2], k.shape[1]
    out = torch.zeros(b, hq, sq, d, dtype=torch.float64)
    spans = masks.spans(mask, sq, sk)
    offset = sk - sq if masks.kind(mask) in ("causal-br", "window") else 0
    for h in range(hq):
        kh = h // (hq // hkv)
        slope = 2.0 ** (-8.0 * (h + 1) / hq)
        for i, (lo, hi) in enumerate(spans):
            if hi <= lo:
                continue
            s = (q[:, h, i:i + 1] @ k[:, kh, lo:hi].transpose(-1, -2)).squeeze(1) / math.sqrt(d)
            if score_mod.startswith("softcap"):
                cap = float(score_mod.split(":")[1])
                s = cap * torch.tanh(s / cap)
            elif score_mod == "alibi":
                s = s + slope * (torch.arange(lo, hi, dtype=torch.float64) - (i + offset))
            p = torch.softmax(s, dim=-1)
            out[:, h, i] = torch.einsum("bn,bnd->bd", p, v[:, kh, lo:hi])
    return out


@pytest.mark.parametrize("mask,q,kv", [("causal", 9, 9), ("causal-br", 3, 11), ("causal-br", 6, 3),
                                       ("window:2", 7, 7), ("window:3", 2, 10), ("document:rand:3", 12, 12),
                                       ("full", 4, 6)])
@pytest.mark.parametrize("mod", ["", "softcap:2", "alibi"])
def test_reference_matches_a_row_by_row_computation(mask, q, kv, mod):
    g = torch.Generator().manual_seed(7)
    qt = torch.randn(2, 4, q, 8, generator=g, dtype=torch.float64) * 2
    kt = torch.randn(2, 2, kv, 8, generator=g, dtype=torch.float64) * 2
    vt = torch.randn(2, 2, kv, 8, generator=g, dtype=torch.float64)
    want = _rowwise(qt, kt, vt, mask, mod)
    got = attention_math(qt, kt, vt, mask, score_mod=mod)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # chunked rows give the same (the mask's alignment depends on the whole query length)
    chunked = reference_output(qt, kt, vt, mask, budget_bytes=2 * 4 * kv * 8 * 2, score_mod=mod)
    torch.testing.assert_close(chunked, want, rtol=1e-10, atol=1e-12)


def test_alibi_slopes_of_a_head_subset_follow_the_whole_problem():
    g = torch.Generator().manual_seed(3)
    qt, kt, vt = (torch.randn(1, 8, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    whole = attention_math(qt, kt, vt, "causal", score_mod="alibi")
    first = attention_math(qt[:, :2], kt[:, :2], vt[:, :2], "causal", score_mod="alibi", heads_total=8)
    torch.testing.assert_close(first, whole[:, :2])
