"""The triton-fa Impl: supports(), the declared parameter space, and build() over ops.attention."""

from __future__ import annotations

import os
from typing import Any

from ...spec import Workload
from ...spec.masks import MASK_KINDS, SCORE_MODS
from ..base import Impl
from .config import default_config, mask_problem, mask_spec, param_space, workload_mask

HEAD_DIMS = (16, 32, 64, 128, 256)


def triton_problem() -> str | None:
    """Why triton cannot be used here (None: it can)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"triton is not importable ({type(exc).__name__}: {exc}); install triton (pip install triton)"
    return None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def interpreter_problem() -> str | None:
    """Triton picks the interpreter when triton.language is first imported (its own helpers are jit functions
    too), so TRITON_INTERPRET must be set before that; None when this process can interpret."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tl.zeros, InterpretedFunction):
        return "TRITON_INTERPRET=1 was set after triton was imported; set it before starting Python"
    return None


def _sms(device: str) -> int:
    if not device.startswith("cuda"):
        return 132
    import torch

    return torch.cuda.get_device_properties(device).multi_processor_count


class TritonFAImpl(Impl):
    name = "triton-fa"
    family = "triton"
    description = ("attnbench's Triton flash-attention: FA2 forward and backward, causal, window and document "
                   "masks, soft-capping and ALiBi, GQA without repeated K/V, split-KV decode, paged KV; explicit "
                   "params (tune races them)")
    # Triton keeps every compiled config; candidates can stay built side by side while racing.
    exclusive_compile = False
    mask_kinds = MASK_KINDS
    score_mods = SCORE_MODS
    layouts = ("dense", "paged")

    def supports(self, workload: Workload, device: str) -> str | None:
        w = workload
        why = self.mask_reason(w)
        if why:
            return why
        if w.dtype not in ("fp16", "bf16"):
            return f"triton-fa runs fp16 and bf16, not {w.dtype}"
        if w.head_dim not in HEAD_DIMS:
            return f"triton-fa needs head_dim in {', '.join(map(str, HEAD_DIMS))}, got {w.head_dim}"
        why = mask_problem(workload_mask(w))
        if why:
            return why
        why = triton_problem()
        if why:
            return why
        if device.startswith("cuda"):
            import torch

            major, _ = torch.cuda.get_device_capability(device)
            if major < 8:
                return f"triton-fa needs compute capability 8.0 or newer (bf16 and fp16 tensor cores), got {major}.x"
        elif not interpreting():
            return "triton-fa needs a CUDA GPU, or Triton's CPU interpreter (TRITON_INTERPRET=1, small shapes)"
        else:
            return interpreter_problem()
        return None

    def param_space(self, workload: Workload, device: str) -> list[dict[str, Any]]:
        if not device.startswith("cuda"):
            return [{}]  # the interpreter checks correctness; racing its configs would time Python
        return param_space(workload, _sms(device))

    def build(self, workload: Workload, device: str, params: dict[str, Any]):
        from .ops import attention, doc_bounds, kernels

        w = workload
        cfg = default_config(w, _sms(device)).with_params(dict(params or {}))
        mask = mask_spec(workload_mask(w), w.q_len, w.kv_len, getattr(w, "score_mod", ""))
        kernels()  # imported here, not inside the timed calls
        bounds = doc_bounds(mask.docs, device) if mask.docs else None
        kv_len = w.kv_len  # a paged cache's length, known here rather than read from the device in every call

        def fn(q, k, v):
            return attention(q, k, v, mask, cfg, bounds=bounds, kv_len=kv_len)

        return fn
