"""FlexAttention, compiled once per workload outside the timed region; a recompile fails loudly."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

from ..spec import Workload
from .base import Impl


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


class FlexImpl(Impl):
    name = "flex"
    family = "flex"
    description = "torch FlexAttention under torch.compile (one compile per workload; recompiles are errors)"

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
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        w = workload
        # A fresh compile per workload: a shared cache would hit the recompile limit over a sweep
        # and fall back to the unfused eager path (FIELD-NOTES).
        torch._dynamo.reset()
        block_mask = None
        if w.causal:
            block_mask = create_block_mask(_causal, B=None, H=None, Q_LEN=w.q_len, KV_LEN=w.kv_len,
                                           device=device)
        compiled = torch.compile(flex_attention, dynamic=False, fullgraph=True)
        kwargs: dict[str, Any] = {"block_mask": block_mask, "enable_gqa": w.gqa}
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
