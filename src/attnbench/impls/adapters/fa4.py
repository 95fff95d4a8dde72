"""flash-attn 4 (CuTe DSL; Hopper and Blackwell) as an impl: flash_attn.cute.flash_attn_func / flash_attn_varlen_func.

Signatures from Dao-AILab/flash-attention, flash_attn/cute/interface.py (package flash-attn-4): BSHD
tensors; qv comes fourth in both functions, so everything after v is passed by keyword; window_size
defaults to (None, None); both functions return (out, lse); the paged cache goes to flash_attn_varlen_func
as page_table with seqused_k, the batched q kept (batch, seqlen_q, heads, D).
"""

from __future__ import annotations

from typing import Any, Callable

from .fa2 import FlashAttnImpl, first
from .fa3 import FlashAttn3
from .layouts import PagedKV, bhsd, bshd


class FlashAttn4(FlashAttnImpl):
    name = "fa4"
    description = "flash-attn 4 (CuTe DSL): flash_attn.cute.flash_attn_func / flash_attn_varlen_func"
    module = "flash_attn.cute"
    # PyPI's name, then the names its source tree's pyproject and __init__ have used (flash_attn/cute)
    dists = ("flash-attn-4", "fa4", "flash-attn-cute")
    install = "pip install flash-attn-4 (flash-attn-4[cu13] for CUDA 13)"
    head_dims = "8..256 on Hopper, <= 128 or 256 on Blackwell"

    def kvcache(self, lib, kw: dict[str, Any]) -> Callable:
        raise NotImplementedError("fa4 has no flash_attn_with_kvcache; its paged path is flash_attn_varlen_func")

    def paged_call(self, lib, kw: dict[str, Any]) -> Callable[[Any, PagedKV], Any]:
        f = lib.flash_attn_varlen_func
        return lambda q, kv: bhsd(first(f(bshd(q), kv.k_cache, kv.v_cache, seqused_k=kv.cache_seqlens,
                                          page_table=kv.block_table, **kw)))

    param_space = FlashAttn3.param_space  # the same knobs: num_splits, pack_gqa
