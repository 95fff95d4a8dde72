"""flash-attn 4 (CuTe DSL; Hopper and Blackwell) as an impl: flash_attn.cute.flash_attn_func / flash_attn_varlen_func.

Signatures from Dao-AILab/flash-attention, flash_attn/cute/interface.py (package flash-attn-4): BSHD
tensors; qv comes fourth in both functions, so everything after v is passed by keyword; window_size
defaults to (None, None); both functions return (out, lse); the paged cache goes to flash_attn_varlen_func
as page_table with seqused_k, the batched q kept (batch, seqlen_q, heads, D).
"""

from __future__ import annotations

from typing import Any, Callable

from ...spec import Workload
from .fa2 import FlashAttnImpl, first
from .layouts import PagedKV, bhsd, bshd
from .library import layout_of


class FlashAttn4(FlashAttnImpl):
    name = "fa4"
    description = "flash-attn 4 (CuTe DSL): flash_attn.cute.flash_attn_func / flash_attn_varlen_func"
    module = "flash_attn.cute"
    dists = ("flash-attn-4",)
    install = "pip install flash-attn-4 (flash-attn-4[cu13] for CUDA 13)"
    head_dims = "8..256 on Hopper, <= 128 or 256 on Blackwell"

    def kvcache(self, lib, kw: dict[str, Any]) -> Callable:
        raise NotImplementedError("fa4 has no flash_attn_with_kvcache; its paged path is flash_attn_varlen_func")

    def paged_call(self, lib, kw: dict[str, Any]) -> Callable[[Any, PagedKV], Any]:
        f = lib.flash_attn_varlen_func
        return lambda q, kv: bhsd(first(f(bshd(q), kv.k_cache, kv.v_cache, seqused_k=kv.cache_seqlens,
                                          page_table=kv.block_table, **kw)))

    def param_space(self, workload: Workload, device: str) -> list[dict[str, Any]]:
        w = workload
        if not device.startswith("cuda") or w.direction != "fwd":
            return [{}]
        space: list[dict[str, Any]] = [{}, {"num_splits": 0}]
        if w.gqa:
            space += [{"pack_gqa": True}, {"pack_gqa": False}]
        if layout_of(w).startswith("paged:") or w.q_len <= 128:
            space += [{"num_splits": n} for n in (2, 4, 8)]
        return space
