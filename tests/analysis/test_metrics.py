import pytest

from attnbench.analysis import metrics
from attnbench.spec import Workload


def test_forward_flops_and_bytes_by_hand():
    w = Workload(batch=32, q_heads=8, kv_heads=8, q_len=512, kv_len=512, head_dim=64, dtype="fp16")
    assert metrics.flops(w) == 4 * 32 * 8 * 512 * 512 * 64  # 17.18 GFLOP
    assert metrics.min_bytes(w) == 4 * 32 * 8 * 512 * 64 * 2  # Q, K, V, O in fp16: 32 MiB
    assert metrics.intensity(w) == pytest.approx(4 * 512 * 512 * 64 / (4 * 512 * 64 * 2))
    assert metrics.tflops_per_s(w, 0.0519) == pytest.approx(331.0, rel=0.01)  # FIELD-NOTES' sdpa-auto row


def test_causal_counts_unmasked_pairs_only():
    assert metrics.attended_pairs(4, 4, True) == 10
    assert metrics.attended_pairs(4, 4, False) == 16
    # More queries than keys: rows past the key count see every key (top-left alignment).
    assert metrics.attended_pairs(6, 4, True) == 10 + 2 * 4
    assert metrics.attended_pairs(2, 5, True) == 3
    w = Workload(batch=1, q_heads=1, kv_heads=1, q_len=4, kv_len=4, head_dim=8, causal=True)
    assert metrics.flops(w) == 4 * 10 * 8


def test_gqa_reads_kv_once_per_kv_head_and_backward_factor():
    w = Workload(batch=2, q_heads=32, kv_heads=8, q_len=1024, kv_len=2048, head_dim=128, dtype="bf16")
    q_side = 2 * 32 * 1024 * 128 * 2
    kv_side = 2 * 8 * 2048 * 128 * 2
    assert metrics.min_bytes(w) == 2 * q_side + 2 * kv_side
    assert metrics.flops(w) == 4 * 2 * 32 * 128 * 1024 * 2048
    bwd = w.replace(direction="bwd")
    assert metrics.flops(bwd) == 2.5 * metrics.flops(w)
    assert metrics.min_bytes(bwd) == 4 * q_side + 4 * kv_side
    assert metrics.flops(w.replace(direction="fwd+bwd")) == 3.5 * metrics.flops(w)
    assert metrics.tokens_per_s(w, 2.0) == pytest.approx(2 * 1024 / 2e-3)
    assert metrics.gb_per_s(w, 1.0) == pytest.approx(metrics.min_bytes(w) / 1e-3 / 1e9)
