"""flash-attn 2 as an impl: flash_attn_func, flash_attn_varlen_func (documents) and flash_attn_with_kvcache.

Signatures and conventions from Dao-AILab/flash-attention, flash_attn/flash_attn_interface.py: tensors are
BSHD (varlen: total tokens x heads x D with int32 cu_seqlens), causal and window masks are bottom-right
aligned, window_size=(left, right) keeps keys i+sk-sq-left .. i+sk-sq+right, ALiBi adds
-slope*|i+sk-sq-j| (fp32 slopes), softcap caps the scaled scores, and flash_attn_with_kvcache has no backward.
The shared FlashAttnImpl below serves fa3 and fa4 too.
"""

from __future__ import annotations

from typing import Any, Callable

from ...spec import Workload
from ...spec import masks
from .layouts import PagedKV, PerInputs, bhsd, bshd, cu_seqlens, doc_lengths, pack, to_pages, unpack
from .library import LibraryImpl, layout_of, page_size

VIEW_NOTE = "layout: BHSD q, k, v passed as BSHD strided views (no copy)"
PAGE_SEED = 0


def first(out):
    """A library call's output tensor, whether it returns it alone or with the LSE."""
    return out[0] if isinstance(out, (tuple, list)) else out


class FlashAttnImpl(LibraryImpl):
    """The flash-attn family's shared glue: BSHD views, mask arguments, varlen packing, paged calls."""

    family = "flash-attn"
    mask_kinds = ("full", "causal", "causal-br", "window", "document")
    score_mods = ("", "softcap")
    passes = ("fwd", "bwd", "fwd+bwd")
    paged = True
    extra = "fa"

    def workload_reason(self, workload: Workload) -> str | None:
        w = workload
        if w.mask == "causal" and w.q_len != w.kv_len:
            return (f"{self.name}'s causal mask is bottom-right aligned; top-left causal with q_len != kv_len "
                    "is another mask (causal-br is the one it computes)")
        return None

    # -- arguments ------------------------------------------------------------------------------
    def mask_kwargs(self, workload: Workload) -> dict[str, Any]:
        kind = workload.mask_kind
        if kind in ("causal", "causal-br", "document"):
            return {"causal": True}
        if kind == "window":
            return {"window_size": (masks.window(workload.mask), 0)}
        return {}

    def mod_kwargs(self, workload: Workload, device: str) -> dict[str, Any]:
        mod = workload.score_mod
        if mod.startswith("softcap:"):
            return {"softcap": float(mod.split(":", 1)[1])}
        return {}

    def tuning_kwargs(self, params: dict[str, Any], path: str) -> dict[str, Any]:
        """The params this path's function takes (flash-attn 3 and 4 take both on every path)."""
        return {k: params[k] for k in ("num_splits", "pack_gqa") if k in params}

    # -- the calls ------------------------------------------------------------------------------
    def dense(self, lib, kw: dict[str, Any]) -> Callable:
        f = lib.flash_attn_func
        return lambda q, k, v: bhsd(first(f(bshd(q), bshd(k), bshd(v), **kw)))

    def varlen(self, lib, workload: Workload, device: str, kw: dict[str, Any]) -> Callable:
        f = lib.flash_attn_varlen_func
        lengths = doc_lengths(workload)
        cu = cu_seqlens(lengths, device)
        longest = max(lengths)
        packed = PerInputs(lambda q, k, v: (pack(q), pack(k), pack(v)))
        b = workload.batch

        def call(q, k, v):
            qp, kp, vp = packed(q, k, v)
            out = f(qp, kp, vp, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=longest, max_seqlen_k=longest, **kw)
            return unpack(first(out), b)

        return call

    def kvcache(self, lib, kw: dict[str, Any]) -> Callable:
        """flash_attn_with_kvcache over the contiguous K/V as its (batch, seqlen_cache) cache."""
        f = lib.flash_attn_with_kvcache
        return lambda q, k, v: bhsd(first(f(bshd(q), bshd(k), bshd(v), **kw)))

    def paged_call(self, lib, kw: dict[str, Any]) -> Callable[[Any, PagedKV], Any]:
        f = lib.flash_attn_with_kvcache
        return lambda q, kv: bhsd(first(f(bshd(q), kv.k_cache, kv.v_cache, cache_seqlens=kv.cache_seqlens,
                                          block_table=kv.block_table, **kw)))

    def paged_attention(self, workload: Workload, device: str, params: dict[str, Any] | None = None):
        """fn(q, k_cache, v_cache, block_table, cache_seqlens) -> out: q and out BHSD, the cache as in
        layouts.PagedKV. The entry point for a workload whose inputs arrive paged."""
        lib = self.load()
        kw = {**self.mask_kwargs(workload), **self.mod_kwargs(workload, device),
              **self.tuning_kwargs(params or {}, "paged")}
        call = self.paged_call(lib, kw)
        return lambda q, k_cache, v_cache, block_table, cache_seqlens: call(
            q, PagedKV(k_cache, v_cache, block_table, cache_seqlens))

    def make(self, lib, workload: Workload, device: str, params: dict[str, Any]):
        w = workload
        name = self.name
        path = ("paged" if layout_of(w).startswith("paged:") else "varlen" if w.mask_kind == "document"
                else "kvcache" if params.get("path") == "kvcache" else "dense")
        kw = {**self.mask_kwargs(w), **self.mod_kwargs(w, device), **self.tuning_kwargs(params, path)}
        if path == "paged":
            page = page_size(w)
            call_paged = self.paged_call(lib, kw)
            pages = PerInputs(lambda k, v: to_pages(k, v, page, PAGE_SEED))
            notes = [f"layout: the workload's paged cache ({page}-row NHD pages, its block table) used as it is",
                     "layout: q passed as a BSHD view"]
            return (lambda q, k, v: call_paged(q, pages(k, v))), f"{name}:paged", notes
        if path == "varlen":
            n = len(doc_lengths(w))
            note = ("layout: q, k, v packed to (total tokens, H, D) with int32 cu_seqlens "
                    + ("(a view: batch 1)" if w.batch == 1 else "(a copy, once per input set, outside the timed call)"))
            return self.varlen(lib, w, device, kw), f"{name}:varlen", [note, f"{n} sequences, causal within each"]
        if path == "kvcache":
            return self.kvcache(lib, kw), f"{name}:kvcache", [VIEW_NOTE]
        return self.dense(lib, kw), name, [VIEW_NOTE]


class FlashAttn2(FlashAttnImpl):
    name = "fa2"
    description = "flash-attn 2: flash_attn_func, flash_attn_varlen_func (documents), flash_attn_with_kvcache"
    module = "flash_attn"
    probe_module = "flash_attn.flash_attn_interface"
    dists = ("flash-attn",)
    install = "pip install flash-attn --no-build-isolation"
    score_mods = ("", "softcap", "alibi")
    head_dims = "<= 256"

    def workload_reason(self, workload: Workload) -> str | None:
        w = workload
        if w.score_mod == "alibi" and w.mask_kind == "full":
            return ("fa2's ALiBi bias is -slope*|i-j|, symmetric; it equals slope*(j-i) only where a causal mask "
                    "hides the keys right of the diagonal")
        return super().workload_reason(w)

    def mod_kwargs(self, workload: Workload, device: str) -> dict[str, Any]:
        if workload.score_mod == "alibi":
            import torch

            slopes = masks.alibi_slopes(workload.q_heads)
            return {"alibi_slopes": torch.tensor(slopes, dtype=torch.float32, device=device)}
        return super().mod_kwargs(workload, device)

    def tuning_kwargs(self, params: dict[str, Any], path: str) -> dict[str, Any]:
        """Only flash-attn 2's split-KV cache kernel takes num_splits."""
        return {"num_splits": params["num_splits"]} if path in ("kvcache", "paged") and "num_splits" in params else {}

    def param_space(self, workload: Workload, device: str) -> list[dict[str, Any]]:
        w = workload
        if not device.startswith("cuda") or w.direction != "fwd" or w.mask_kind == "document":
            return [{}]
        splits = [{"num_splits": n} for n in (1, 2, 4, 8)]
        if layout_of(w).startswith("paged:"):
            return [{}] + splits
        if w.q_len <= 128:  # decode-like: flash-attn's split-KV cache kernel is the one its benchmarks use
            return [{}, {"path": "kvcache"}] + [{"path": "kvcache", **s} for s in splits]
        return [{}]
