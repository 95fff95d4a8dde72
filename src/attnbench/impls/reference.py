"""Eager matmul-softmax-matmul: the ground truth (in float64) and a timed impl (in the workload's dtype)."""

from __future__ import annotations

from typing import Any

from ..spec import Workload
from ..spec.masks import MASK_KINDS, SCORE_MODS
from .base import Impl


def attention_math(q, k, v, causal: bool | str = False, scale: float | None = None, q_offset: int = 0, *,
                   score_mod: str = "", q_total: int | None = None, heads_total: int | None = None):
    """softmax(mod(q k^T * scale) + mask) v, in the inputs' dtype. GQA: K/V heads are repeated.

    `causal` is a mask (spec.masks: 'full', 'causal', 'causal-br', 'window:W', 'document:...'; True and
    False mean 'causal' and 'full'). For a chunk of query rows, q_offset is the chunk's first row and
    q_total the whole query length (the mask's alignment depends on it); heads_total, the query heads
    of the whole problem when q holds only the first few (ALiBi's slopes depend on it). A row that sees no key gives
    zeros (the flash-attention convention), not NaN.
    """
    import torch

    from ..spec import masks

    mask = ("causal" if causal else "full") if isinstance(causal, bool) else causal
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        k = k.repeat_interleave(hq // hkv, dim=1)
        v = v.repeat_interleave(hq // hkv, dim=1)
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    sq, sk = q.shape[-2], k.shape[-2]
    total = q_total if q_total is not None else sq + q_offset
    rows = slice(q_offset, q_offset + sq)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    scores = masks.apply_score_mod(scores, score_mod, mask, total, sk, rows, heads_total)
    if mask != "full":
        keep = masks.mask_matrix(mask, total, sk, rows, q.device)
        scores = scores.masked_fill(~keep, float("-inf"))
        empty = ~keep.any(dim=-1)
        if bool(empty.any()):
            scores = scores.masked_fill(empty.unsqueeze(-1), 0.0)
            probs = torch.softmax(scores, dim=-1).masked_fill(empty.unsqueeze(-1), 0.0)
            return torch.matmul(probs, v)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def reference_output(q, k, v, causal: bool | str = False, budget_bytes: int = 256 * 2**20, *,
                     score_mod: str = ""):
    """float64 attention, computed in chunks of query rows so the score matrix stays under budget."""
    import torch

    q, k, v = (t.detach().to(torch.float64) for t in (q, k, v))
    b, h, sq, _ = q.shape
    sk = k.shape[-2]
    rows = max(1, budget_bytes // max(1, b * h * sk * 8))
    if rows >= sq:
        return attention_math(q, k, v, causal, score_mod=score_mod)
    parts = [attention_math(q[:, :, i:i + rows], k, v, causal, q_offset=i, score_mod=score_mod, q_total=sq)
             for i in range(0, sq, rows)]
    return torch.cat(parts, dim=2)


class ReferenceImpl(Impl):
    name = "reference"
    family = "reference"
    description = "eager matmul-softmax-matmul in the workload's dtype (materializes the score matrix)"
    mask_kinds = MASK_KINDS
    score_mods = SCORE_MODS

    def supports(self, workload: Workload, device: str) -> str | None:
        w = workload
        why = self.mask_reason(w)
        if why:
            return why
        score_bytes = w.batch * w.q_heads * w.q_len * w.kv_len * 4
        if score_bytes > 16 * 2**30:
            return f"the score matrix alone needs {score_bytes / 2**30:.0f} GiB"
        return None

    def build(self, workload: Workload, device: str, params: dict[str, Any]):
        mask, mod = workload.mask, workload.score_mod
        return lambda q, k, v: attention_math(q, k, v, mask, score_mod=mod)
