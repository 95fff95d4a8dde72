"""FLOP and byte conventions (stated in every report), TFLOP/s, GB/s and arithmetic intensity."""

from __future__ import annotations

from ..spec import DTYPE_BYTES, Workload, masks

CONVENTION = (
    "FLOPs: forward 4*B*Hq*D per (query, key) pair the mask keeps (two matmuls, 2 FLOPs per multiply-add), "
    "the pairs counted exactly from the mask (causal: top-left aligned, as SDPA's is_causal; causal-br, "
    "window and document as spec/masks.py defines them), never a 0.5 factor; backward = 2.5x forward, "
    "fwd+bwd = 3.5x forward (the flash-attention convention). Softmax, scaling and score modifiers are not "
    "counted. Bytes: the minimum traffic: forward reads Q, K, V once and writes O once; backward reads "
    "Q, K, V, O, dO and writes dQ, dK, dV; fwd+bwd counts as many (Q, K, V, dO read; O, dQ, dK, dV written); "
    "K and V count once per KV head (GQA), and only the key rows "
    "some query sees (a sliding window over a long cache reads only the window); a paged KV cache adds its "
    "block table and sequence lengths (int32), not the unused tail of each sequence's last page."
)

PASS_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def attended_pairs(q_len: int, kv_len: int, mask: str | bool) -> int:
    """(query, key) pairs the mask keeps, per batch element and head (True/False: causal/full)."""
    if isinstance(mask, bool):
        mask = "causal" if mask else "full"
    return masks.attended_pairs(mask, q_len, kv_len)


def flops(w: Workload) -> float:
    fwd = 4.0 * w.batch * w.q_heads * w.head_dim * attended_pairs(w.q_len, w.kv_len, w.mask)
    return fwd * PASS_FACTOR[w.direction]


def min_bytes(w: Workload) -> float:
    e = DTYPE_BYTES[w.dtype]
    q_side = w.batch * w.q_heads * w.q_len * w.head_dim * e     # one tensor shaped like Q (or O)
    keys = masks.keys_read(w.mask, w.q_len, w.kv_len)
    kv_side = w.batch * w.kv_heads * keys * w.head_dim * e      # one tensor shaped like K (or V), rows read
    if w.direction == "fwd":
        if w.page_size:  # paged layouts are forward only
            pages = -(-w.kv_len // w.page_size)
            return 2 * q_side + 2 * kv_side + 4 * w.batch * (pages + 1)   # + block table, seq_lens
        return 2 * q_side + 2 * kv_side                          # Q, O; K, V
    return 4 * q_side + 4 * kv_side                              # Q, O, dO, dQ; K, V, dK, dV


def intensity(w: Workload) -> float:
    """Arithmetic intensity in FLOP per byte of minimum traffic."""
    return flops(w) / min_bytes(w)


def tflops_per_s(w: Workload, ms: float) -> float:
    return flops(w) / (ms * 1e-3) / 1e12


def gb_per_s(w: Workload, ms: float) -> float:
    return min_bytes(w) / (ms * 1e-3) / 1e9


def tokens_per_s(w: Workload, ms: float) -> float:
    """Query tokens processed per second (batch * q_len per call)."""
    return w.batch * w.q_len / (ms * 1e-3)


def assess(w: Workload, median_ms: float, host_ms: float | None, ceilings) -> dict:
    """Roofline placement of one measurement against a roofline.Ceilings: % of the compute and memory
    ceilings, % of the roofline bound at this intensity, the regime, and a plausibility flag."""
    from . import roofline

    tf, gb = tflops_per_s(w, median_ms), gb_per_s(w, median_ms)
    peak, bw = ceilings.peak(w.dtype), ceilings.gbps
    out: dict = {"tflops": tf, "gbps": gb, "intensity": intensity(w),
                 "pct_peak": 100 * tf / peak if peak else None, "pct_bandwidth": 100 * gb / bw if bw else None,
                 "pct_bound": None, "peak_source": ceilings.source(w.dtype), "bandwidth_source": ceilings.gbps_source,
                 # the vendor's figure beside a measured copy ceiling: a read-mostly kernel may pass the copy
                 "pct_datasheet_bandwidth": 100 * gb / ceilings.datasheet_gbps if ceilings.datasheet_gbps else None}
    if peak and bw:
        out["pct_bound"] = 100 * tf / roofline.roofline_bound_tflops(intensity(w), peak, bw)
    out["regime"] = roofline.regime(flops(w), min_bytes(w), median_ms, host_ms, ceilings, w.dtype)
    # what bounds the kernel by its intensity alone (a host-bound row may still be a memory-bound kernel)
    out["bound_by"] = roofline.regime(flops(w), min_bytes(w), median_ms, None, ceilings, w.dtype)
    out["plausibility"], out["plausibility_reason"] = roofline.plausibility(
        tf, gb, ceilings, w.dtype, working_set_bytes=min_bytes(w))
    return out
