"""Eager matmul-softmax-matmul: the ground truth (in float64) and a timed impl (in the workload's dtype)."""

from __future__ import annotations

from typing import Any

from ..spec import Workload
from .base import Impl


def attention_math(q, k, v, causal: bool, scale: float | None = None, q_offset: int = 0):
    """softmax(q k^T * scale + causal mask) v, in the inputs' dtype. GQA: K/V heads are repeated.

    The causal mask is top-left aligned, as torch's is_causal: query row i (plus q_offset, for a
    chunk of rows) sees keys 0..i.
    """
    import torch

    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        k = k.repeat_interleave(hq // hkv, dim=1)
        v = v.repeat_interleave(hq // hkv, dim=1)
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if causal:
        sq, sk = q.shape[-2], k.shape[-2]
        rows = torch.arange(sq, device=q.device).unsqueeze(1) + q_offset
        cols = torch.arange(sk, device=q.device).unsqueeze(0)
        scores = scores.masked_fill(cols > rows, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def reference_output(q, k, v, causal: bool, budget_bytes: int = 256 * 2**20):
    """float64 attention, computed in chunks of query rows so the score matrix stays under budget."""
    import torch

    q, k, v = (t.detach().to(torch.float64) for t in (q, k, v))
    b, h, sq, _ = q.shape
    sk = k.shape[-2]
    rows = max(1, budget_bytes // max(1, b * h * sk * 8))
    if rows >= sq:
        return attention_math(q, k, v, causal)
    parts = [attention_math(q[:, :, i:i + rows], k, v, causal, q_offset=i) for i in range(0, sq, rows)]
    return torch.cat(parts, dim=2)


class ReferenceImpl(Impl):
    name = "reference"
    family = "reference"
    description = "eager matmul-softmax-matmul in the workload's dtype (materializes the score matrix)"

    def supports(self, workload: Workload, device: str) -> str | None:
        w = workload
        score_bytes = w.batch * w.q_heads * w.q_len * w.kv_len * 4
        if score_bytes > 16 * 2**30:
            return f"the score matrix alone needs {score_bytes / 2**30:.0f} GiB"
        return None

    def build(self, workload: Workload, device: str, params: dict[str, Any]):
        causal = workload.causal
        return lambda q, k, v: attention_math(q, k, v, causal)
