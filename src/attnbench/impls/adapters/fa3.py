"""flash-attn 3 (Hopper) as an impl: flash_attn_interface.flash_attn_func / flash_attn_varlen_func / flash_attn_with_kvcache.

Signatures from Dao-AILab/flash-attention, hopper/flash_attn_interface.py: BSHD tensors, bottom-right causal
and window masks as in flash-attn 2, softcap, no ALiBi; num_splits and pack_gqa are the tuning knobs the
interface exposes (num_splits <= 0: its own heuristic); the paged cache goes in as page_table. Older builds
returned (out, softmax_lse) from flash_attn_func, newer ones out alone unless return_attn_probs: both are taken.
"""

from __future__ import annotations

from typing import Any, Callable

from ...spec import Workload
from .fa2 import FlashAttnImpl, first
from .layouts import PagedKV, bhsd, bshd
from .library import layout_of


class FlashAttn3(FlashAttnImpl):
    name = "fa3"
    description = "flash-attn 3 (Hopper): flash_attn_interface.flash_attn_func / varlen / with_kvcache"
    module = "flash_attn_interface"
    dists = ("flash-attn-3", "flash_attn_3")
    install = "build flash-attention's hopper/ folder for your torch (cd hopper && python setup.py install)"
    head_dims = "<= 256 (those its build enabled)"

    def paged_call(self, lib, kw: dict[str, Any]) -> Callable[[Any, PagedKV], Any]:
        f = lib.flash_attn_with_kvcache
        return lambda q, kv: bhsd(first(f(bshd(q), kv.k_cache, kv.v_cache, cache_seqlens=kv.cache_seqlens,
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
