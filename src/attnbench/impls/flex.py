"""FlexAttention, compiled once per workload outside the timed region; a recompile fails loudly.

Every mask kind is a mask_mod turned into a BlockMask once per workload in build() (document ids are a
captured tensor); softcap and alibi are score_mods (ALiBi's slopes a captured tensor). A mask that keeps
every pair (spec.masks.simplest: a decode row under causal-br) takes no block mask at all.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable

from ..spec import Workload, masks
from ..spec.masks import MASK_KINDS, SCORE_MODS
from .base import Impl

COMPILED_MASK_ELEMENTS = 2**28  # above this many (query, key) pairs the block mask is built by a compiled
                                # create_block_mask, which never holds the whole boolean mask in memory


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def mask_mod(workload: Workload, device: str) -> Callable | None:
    """The workload's mask as a FlexAttention mask_mod (None: every pair is kept)."""
    w = workload
    mask = masks.simplest(w.mask, w.q_len, w.kv_len)
    kind = masks.kind(mask)
    off = masks.query_offset(mask, w.q_len, w.kv_len)
    if kind == "full":
        return None
    if kind == "causal":
        return _causal
    if kind == "causal-br":
        def causal_br(b, h, q_idx, kv_idx):
            return q_idx + off >= kv_idx

        return causal_br
    if kind == "window":
        left = masks.window(mask)

        def sliding_window(b, h, q_idx, kv_idx):
            pos = q_idx + off
            return (kv_idx <= pos) & (pos - kv_idx <= left)

        return sliding_window
    ids = masks.doc_ids(mask, w.q_len, device)

    def document(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (ids[q_idx] == ids[kv_idx])

    return document


def score_mod(workload: Workload, device: str) -> Callable | None:
    """The workload's score modifier as a FlexAttention score_mod (None: plain scores). FlexAttention
    hands it the scaled score, as spec.masks defines the modifiers."""
    import torch

    w = workload
    if not w.score_mod:
        return None
    if w.score_mod.startswith("softcap:"):
        cap = float(w.score_mod.split(":", 1)[1])

        def softcap(score, b, h, q_idx, kv_idx):
            return cap * torch.tanh(score / cap)

        return softcap
    slopes = torch.tensor(masks.alibi_slopes(w.q_heads), dtype=torch.float32, device=device)
    off = masks.query_offset(w.mask, w.q_len, w.kv_len)

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx - off)

    return alibi


def block_mask(workload: Workload, device: str):
    """The BlockMask of the workload's mask (None for a mask that keeps every pair)."""
    from torch.nn.attention.flex_attention import create_block_mask

    w = workload
    fn = mask_mod(w, device)
    if fn is None:
        return None
    big = w.q_len * w.kv_len > COMPILED_MASK_ELEMENTS
    return create_block_mask(fn, B=None, H=None, Q_LEN=w.q_len, KV_LEN=w.kv_len, device=device, _compile=big)


class FlexImpl(Impl):
    name = "flex"
    family = "flex"
    description = "torch FlexAttention under torch.compile (one compile per workload; recompiles are errors)"
    mask_kinds = MASK_KINDS
    score_mods = SCORE_MODS

    def supports(self, workload: Workload, device: str) -> str | None:
        why = self.mask_reason(workload)
        if why:
            return why
        try:
            import torch.nn.attention.flex_attention  # noqa: F401
        except ImportError:
            return "this torch has no FlexAttention"
        if workload.head_dim & (workload.head_dim - 1) or workload.head_dim < 16:
            return f"FlexAttention needs a power-of-two head_dim >= 16, got {workload.head_dim}"
        if device.startswith("cuda") and workload.dtype == "fp64":
            return "FlexAttention's GPU kernel does not take fp64"
        if not device.startswith("cuda") and workload.direction != "fwd":
            return "FlexAttention has no backward on the CPU"
        return None

    def param_space(self, workload: Workload, device: str) -> list[dict[str, Any]]:
        if not device.startswith("cuda"):
            return [{}]
        space: list[dict[str, Any]] = [{}]
        for bm, bn in ((64, 64), (128, 64), (128, 128), (64, 128)):
            for warps in (4, 8):
                for stages in (2, 3):
                    space.append({"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages})
        return space

    def build(self, workload: Workload, device: str, params: dict[str, Any]):
        import torch
        from torch.nn.attention.flex_attention import flex_attention

        w = workload
        # A fresh compile per workload: a shared cache would hit the recompile limit over a sweep
        # and fall back to the unfused eager path (FIELD-NOTES).
        torch._dynamo.reset()
        kwargs: dict[str, Any] = {"block_mask": block_mask(w, device), "score_mod": score_mod(w, device),
                                  "enable_gqa": w.gqa}
        compiled = torch.compile(flex_attention, dynamic=False, fullgraph=True)
        if params:
            kwargs["kernel_options"] = dict(params)

        def fn(q, k, v):
            return compiled(q, k, v, **kwargs)

        return fn

    def context(self):
        """During correctness and timing: a recompile raises, and an unfused call is an error."""
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.compiler.set_stance("fail_on_recompile"))
        caught = stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("error", message=".*flex_attention called without torch.compile.*")
        del caught
        return stack
