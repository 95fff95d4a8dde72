"""The Impl protocol: name, params, supports(workload, device) -> reason | None, prepare(...) -> callable."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

from ..spec import Workload

TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "fp64": "float64"}

# f(q, k, v) -> out: attention with the workload's mask, GQA and scale already decided. q is
# (B, Hq, Sq, D); k and v are (B, Hkv, Sk, D) tensors, or PagedKV for a paged workload.
AttnFn = Callable[[Any, Any, Any], Any]


def torch_dtype(name: str):
    import torch

    return getattr(torch, TORCH_DTYPES[name])


class Unsupported(Exception):
    """Raised by an impl when it finds, at build or first call, that it cannot run this workload."""


class Impl:
    """An attention implementation. Subclasses set `name` and implement `build`.

    `build(workload, device, params)` returns an AttnFn; compilation belongs in build (or the first
    call, which the runner times apart from the samples). `context()` wraps correctness and timing
    (FlexAttention uses it to fail on recompiles rather than fall back to eager silently).
    """

    name: str = ""
    family: str = ""
    description: str = ""
    mask_kinds: tuple[str, ...] = ("full", "causal")   # spec.masks kinds it computes
    score_mods: tuple[str, ...] = ("",)                 # score modifier kinds it computes ('' = none)
    layouts: tuple[str, ...] = ("dense",)               # K/V layouts it takes ('dense', 'paged': PagedKV)

    def supports(self, workload: Workload, device: str) -> str | None:
        """None if it can run here, else the reason it cannot. Subclasses call mask_reason first."""
        return self.mask_reason(workload)

    def mask_reason(self, workload: Workload) -> str | None:
        """Why the workload's mask, score modifier or K/V layout is not one this impl takes (None: it is)."""
        layout = workload.layout.split(":", 1)[0]
        if layout not in self.layouts:
            return f"{self.name or type(self).__name__} does not take a {layout} KV cache"
        kind = workload.mask_kind
        if kind not in self.mask_kinds:
            return f"{self.name or type(self).__name__} does not implement the {kind} mask"
        mod = workload.score_mod.split(":", 1)[0]
        if mod not in self.score_mods:
            return f"{self.name or type(self).__name__} does not implement the {mod} score modifier"
        return None

    def build(self, workload: Workload, device: str, params: dict[str, Any]) -> AttnFn:
        raise NotImplementedError

    def param_space(self, workload: Workload, device: str) -> list[dict[str, Any]]:
        """Configurations a tuner may try; [{}] means 'no parameters'."""
        return [{}]

    def context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backend(self, fn: AttnFn, inputs: "Inputs", device: str) -> tuple[str, list[str]]:
        """(what actually ran, kernel or op names seen). Default: the impl's own name."""
        return self.name, []


@dataclass(eq=False)
class PagedKV:
    """K or V of a paged KV cache, laid out as flash-attn's flash_attn_with_kvcache (k_cache with a
    block_table) and FlashInfer's NHD paged cache take it:

    - `pages`: (num_pages, page_size, kv_heads, head_dim), contiguous: the pool. Token t of sequence b
      is pages[block_table[b, t // page_size], t % page_size]; the last page's tail past seq_lens[b] is
      allocated but holds no token.
    - `block_table`: (batch, pages_per_seq) int32, pages_per_seq = ceil(kv_len / page_size): which page
      of the pool holds each logical page. make_inputs fills it with a seeded random permutation of the
      pool, so no sequence's pages are contiguous (as in a serving system after many requests).
    - `seq_lens`: (batch,) int32 tokens per sequence (flash-attn's cache_seqlens; all kv_len here).

    K and V share block_table and seq_lens. FlashInfer's CSR form is kv_indptr = arange(batch + 1) *
    pages_per_seq, kv_indices = block_table.flatten(), kv_last_page_len = kv_len - (pages_per_seq - 1) *
    page_size. Indexing with a slice of batch rows (`k[:1]`) restricts the table, not the pool.
    """

    pages: Any
    block_table: Any
    seq_lens: Any

    @property
    def page_size(self) -> int:
        return int(self.pages.shape[1])

    @property
    def batch(self) -> int:
        return int(self.block_table.shape[0])

    def __getitem__(self, rows) -> "PagedKV":
        if not isinstance(rows, slice):
            raise TypeError("a PagedKV is indexed by a slice of batch rows")
        return PagedKV(self.pages, self.block_table[rows], self.seq_lens[rows])

    def dense(self, rows: slice | None = None):
        """(batch rows, kv_heads, kv_len, head_dim): the pages gathered into a new contiguous tensor."""
        table = self.block_table[rows or slice(None)]
        kv_len = int(self.seq_lens.max()) if self.seq_lens.numel() else 0
        b, n = table.shape
        p, h, d = self.pages.shape[1:]
        tokens = self.pages[table.reshape(-1).long()].reshape(b, n * p, h, d)[:, :kv_len]
        return tokens.permute(0, 2, 1, 3).contiguous()

    def clone(self) -> "PagedKV":
        return PagedKV(self.pages.clone(), self.block_table.clone(), self.seq_lens.clone())


def _nbytes(t: Any) -> int:
    return 0 if t is None else t.numel() * t.element_size()


@dataclass
class Inputs:
    """q (B, Hq, Sq, D); k and v (B, Hkv, Sk, D) for a dense layout or PagedKV for a paged one;
    grad_out shaped like q for backward passes."""

    q: Any
    k: Any
    v: Any
    grad_out: Any = None
    seed: int = 0

    def clone(self) -> "Inputs":
        """The same values in new memory (a graph timer's extra copies)."""
        g = self.grad_out
        if isinstance(self.k, PagedKV):  # K and V keep sharing one table
            k = self.k.clone()
            v = PagedKV(self.v.pages.clone(), k.block_table, k.seq_lens)
        else:
            k, v = self.k.clone(), self.v.clone()
        return Inputs(self.q.clone(), k, v, None if g is None else g.clone(), self.seed)

    def nbytes(self) -> int:
        """Bytes of all the inputs (a paged cache's table and lengths once: K and V share them)."""
        total = sum(_nbytes(t) for t in (self.q, self.grad_out))
        for t in (self.k, self.v):
            total += _nbytes(t.pages) if isinstance(t, PagedKV) else _nbytes(t)
        if isinstance(self.k, PagedKV):
            total += _nbytes(self.k.block_table) + _nbytes(self.k.seq_lens)
        return total


def page_table(batch: int, pages_per_seq: int, seed: int, device: str):
    """(batch, pages_per_seq) int32: a seeded random permutation of a pool of batch * pages_per_seq pages."""
    import torch

    gen = torch.Generator()  # on the CPU, so the same seed gives the same table on every device
    gen.manual_seed(seed)
    perm = torch.randperm(batch * pages_per_seq, generator=gen, dtype=torch.int64)
    return perm.to(torch.int32).view(batch, pages_per_seq).to(device)


def make_inputs(workload: Workload, device: str, seed: int) -> Inputs:
    """Fresh random (never zero) inputs, drawn on the device from a seeded generator. A paged layout
    gets PagedKV K and V: random pages (the values) under a random page table, both from the seed."""
    import torch

    dtype = torch_dtype(workload.dtype)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    w = workload

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dtype)

    q = rand(w.batch, w.q_heads, w.q_len, w.head_dim)
    if w.page_size:
        n = -(-w.kv_len // w.page_size)
        table = page_table(w.batch, n, seed, device)
        lens = torch.full((w.batch,), w.kv_len, dtype=torch.int32, device=device)
        k = PagedKV(rand(w.batch * n, w.page_size, w.kv_heads, w.head_dim), table, lens)
        v = PagedKV(rand(w.batch * n, w.page_size, w.kv_heads, w.head_dim), table, lens)
    else:
        k = rand(w.batch, w.kv_heads, w.kv_len, w.head_dim)
        v = rand(w.batch, w.kv_heads, w.kv_len, w.head_dim)
    grad = rand(w.batch, w.q_heads, w.q_len, w.head_dim) if w.direction != "fwd" else None
    return Inputs(q, k, v, grad, seed)


def footprint_bytes(workload: Workload) -> int:
    """What a cell's own tensors take before any impl allocates: Q, K, V and the output, and for a backward
    dO and the three gradients, in the workload's dtype, plus the float32 draw of the largest input
    (make_inputs draws in float32 and converts). An impl's temporaries come on top (supports() bounds its own)."""
    w = workload
    elem = {"fp32": 4, "fp64": 8}.get(w.dtype, 2)
    q = w.batch * w.q_heads * w.q_len * w.head_dim
    kv = w.batch * w.kv_heads * (-(-w.kv_len // w.page_size) * w.page_size if w.page_size else w.kv_len) * w.head_dim
    tensors = 2 * q + 2 * kv + (2 * q + 2 * kv if w.direction != "fwd" else 0)
    return elem * tensors + 4 * max(q, kv)


def make_call(fn: AttnFn, workload: Workload, inputs: Inputs) -> Callable[[], Any]:
    """A zero-argument callable that performs the workload's pass (fwd, bwd or fwd+bwd) once.

    bwd runs the forward once here and times only the gradient computation (retain_graph keeps
    the saved tensors); fwd+bwd times both. torch.autograd.grad avoids accumulating into .grad.

    The callable carries `copy_bytes` (its inputs' size, plus as much again for what it writes) and
    `on_copy()`, which makes the same call on a fresh copy of the inputs: a graph timer captures several
    calls in one replay, each on its own copy, so that each reads its inputs from a flushed L2.
    """
    import torch

    q, k, v = inputs.q, inputs.k, inputs.v
    if workload.direction == "fwd":
        call = lambda: fn(q, k, v)  # noqa: E731
    else:
        q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
        g = inputs.grad_out
        if workload.direction == "fwd+bwd":
            call = lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), g)  # noqa: E731
        else:
            out = fn(q, k, v)
            call = lambda: torch.autograd.grad(out, (q, k, v), g, retain_graph=True)  # noqa: E731
    call.copy_bytes = 2 * inputs.nbytes()
    call.on_copy = lambda: make_call(fn, workload, inputs.clone())
    return call
