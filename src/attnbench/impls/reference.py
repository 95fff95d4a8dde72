"""Eager matmul-softmax-matmul: the ground truth (in float64) and a timed impl (in the workload's dtype)."""

from __future__ import annotations

from typing import Any

from ..spec import Workload
from ..spec.masks import MASK_KINDS, SCORE_MODS
from .base import Impl, PagedKV

CPU_BUDGET = 256 * 2**20   # bytes of float64 scores per chunk of the reference on a CPU
GPU_BUDGET = 2**30         # and on a GPU (fewer, larger chunks: fewer launches)


def attention_math(q, k, v, causal: bool | str = False, scale: float | None = None, q_offset: int = 0, *,
                   score_mod: str = "", q_total: int | None = None, heads_total: int | None = None,
                   head_offset: int = 0, k_offset: int = 0, kv_total: int | None = None):
    """softmax(mod(q k^T * scale) + mask) v, in the inputs' dtype.

    `causal` is a mask (spec.masks: 'full', 'causal', 'causal-br', 'window:W', 'document:...'; True and
    False mean 'causal' and 'full'). GQA: KV head j serves query heads j*G..j*G+G-1 (G = Hq/Hkv, as
    SDPA's enable_gqa), computed without repeating K and V in memory. K and V may be PagedKV (gathered
    first). A part of a larger problem: q holds query rows q_offset.. of q_total, k and v key rows
    k_offset.. of kv_total (the mask's alignment depends on the whole lengths), and q heads
    head_offset.. of heads_total (ALiBi's slopes depend on them). A row that sees no key gives zeros
    (the flash-attention convention), not NaN.
    """
    import torch

    from ..spec import masks

    mask = ("causal" if causal else "full") if isinstance(causal, bool) else causal
    if isinstance(k, PagedKV):
        k, v = k.dense(), v.dense()
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    g = hq // hkv
    scale = scale if scale is not None else d ** -0.5
    total = q_total if q_total is not None else sq + q_offset
    ktotal = kv_total if kv_total is not None else sk + k_offset
    rows, cols = slice(q_offset, q_offset + sq), slice(k_offset, k_offset + sk)
    scores = torch.matmul(q.reshape(b, hkv, g * sq, d), k.transpose(-2, -1)).view(b, hq, sq, sk) * scale
    scores = masks.apply_score_mod(scores, score_mod, mask, total, ktotal, rows, heads_total, cols=cols,
                                   head_offset=head_offset)
    if mask != "full":
        keep = masks.mask_matrix(mask, total, ktotal, rows, q.device, cols)
        scores = scores.masked_fill(~keep, float("-inf"))
        empty = ~keep.any(dim=-1)
        if bool(empty.any()):
            scores = scores.masked_fill(empty.unsqueeze(-1), 0.0)
            probs = torch.softmax(scores, dim=-1).masked_fill(empty.unsqueeze(-1), 0.0)
            return torch.matmul(probs.view(b, hkv, g * sq, sk), v).view(b, hq, sq, v.shape[-1])
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs.view(b, hkv, g * sq, sk), v).view(b, hq, sq, v.shape[-1])


def reference_output(q, k, v, causal: bool | str = False, budget_bytes: int | None = None, *,
                     score_mod: str = ""):
    """float64 attention with bounded memory, whatever the batch, heads or cache length.

    One (batch element, KV head) at a time, in chunks of query rows whose float64 scores stay under
    budget_bytes (CPU_BUDGET or GPU_BUDGET by q's device), each chunk against only the key rows some of
    its rows see (under a causal or window mask most are skipped, not computed and masked). K and V are
    converted to float64 one slice at a time; a PagedKV is gathered one batch element at a time.
    """
    import torch

    from ..spec import masks

    mask = ("causal" if causal else "full") if isinstance(causal, bool) else causal
    paged = isinstance(k, PagedKV)
    b, hq, sq, _ = q.shape
    hkv = k.pages.shape[2] if paged else k.shape[1]
    sk = int(k.seq_lens.max()) if paged else k.shape[2]
    dv = v.pages.shape[3] if paged else v.shape[3]
    g = hq // hkv
    if budget_bytes is None:
        budget_bytes = GPU_BUDGET if q.device.type == "cuda" else CPU_BUDGET
    rows = max(1, budget_bytes // max(1, g * sk * 8))
    spans = masks.spans(mask, sq, sk)
    out = torch.zeros(b, hq, sq, dv, dtype=torch.float64, device=q.device)
    for bi in range(b):
        kb = k.dense(slice(bi, bi + 1)) if paged else k[bi:bi + 1]
        vb = v.dense(slice(bi, bi + 1)) if paged else v[bi:bi + 1]
        for h in range(hkv):
            k64, v64 = (t[:, h:h + 1].detach().to(torch.float64) for t in (kb, vb))
            q64 = q[bi:bi + 1, h * g:(h + 1) * g].detach().to(torch.float64)
            for i in range(0, sq, rows):
                j = min(sq, i + rows)
                lo, hi = min(s[0] for s in spans[i:j]), max(s[1] for s in spans[i:j])
                if hi <= lo:
                    continue  # no row of the chunk sees a key: zeros
                out[bi:bi + 1, h * g:(h + 1) * g, i:j] = attention_math(
                    q64[:, :, i:j], k64[:, :, lo:hi], v64[:, :, lo:hi], mask, q_offset=i, score_mod=score_mod,
                    q_total=sq, heads_total=hq, head_offset=h * g, k_offset=lo, kv_total=sk)
    return out


class ReferenceImpl(Impl):
    name = "reference"
    family = "reference"
    description = ("eager matmul-softmax-matmul in the workload's dtype (materializes the score matrix; a paged "
                   "cache is gathered first, inside the timed call)")
    mask_kinds = MASK_KINDS
    score_mods = SCORE_MODS
    layouts = ("dense", "paged")

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
