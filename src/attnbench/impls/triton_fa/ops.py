"""triton-fa's launchers (forward, split-KV forward, backward) and the autograd Function that joins them."""

from __future__ import annotations

import contextlib
import importlib
import math

import torch
import triton

from ..base import PagedKV, Unsupported
from .config import Config, MaskSpec

LOG2E = 1.4426950408889634
SPLIT_ROWS = 128  # most query rows (GROUP * q_len) the split-KV kernel packs into one block
_MODULES = ("kernels_fwd", "kernels_bwd")


def kernels():
    """The kernel modules (forward, backward). Interpreter or compiler is fixed per process: triton.jit
    chooses at decoration, triton.language's own functions included (impl.interpreter_problem)."""
    return [importlib.import_module(f"{__package__}.{name}") for name in _MODULES]


def _interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


@contextlib.contextmanager
def _interpreter_scalars():
    """Triton 3.6's interpreter turns a scalar into an index with int() of a one-element array, which numpy
    >= 2.4 refuses, so range() over a kernel argument fails (later Triton squeezes the array first). For the
    duration of a launch in the interpreter, take the element instead."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    try:
        yield
    finally:
        interpreter._patch_lang_tensor = original


def _launching():
    return _interpreter_scalars() if _interpreting() else contextlib.nullcontext()


INT32_OFFSETS = 2**31


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """t with a unit stride along head_dim, and, for (batch, head, row, dim) tensors, row offsets the kernels can
    compute: batch and head offsets are int64 there, a row's is rows * row stride in int32, which would wrap for a
    heads-interleaved view of 2^31 elements or more per batch element (made contiguous, a row's stride is d)."""
    if t.stride(-1) == 1 and (t.dim() != 4 or (t.shape[2] - 1) * t.stride(2) + t.shape[3] < INT32_OFFSETS):
        return t
    return t.contiguous()


def _tma_ok(*tensors: torch.Tensor) -> bool:
    """TMA descriptors need 16-byte aligned bases and row strides for every (batch, head) slice."""
    for t in tensors:
        e = t.element_size()
        if t.data_ptr() % 16 or any((s * e) % 16 for s in t.stride()[:-1]):
            return False
    return True


class _Scratch:
    """triton's allocator for the descriptors' scratch memory, on the device of the launch at hand."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    def __call__(self, size: int, alignment: int, stream):
        return torch.empty(size, dtype=torch.int8, device=self.device)


_SCRATCH = _Scratch()


def _ensure_allocator(device: torch.device) -> None:
    """Device-side tensor descriptors need scratch memory from triton's allocator: install ours unless the
    caller set their own."""
    from triton.runtime import _allocation

    current = _allocation._allocator.get()
    if isinstance(current, _allocation.NullAllocator):
        triton.set_allocator(_SCRATCH)
        current = _SCRATCH
    if current is _SCRATCH:
        _SCRATCH.device = device


def _upcast(dtype: torch.dtype) -> bool:
    return _interpreting() and dtype == torch.bfloat16


def doc_bounds(docs: tuple[int, ...], device) -> torch.Tensor:
    """The document mask's kernel argument: int32 [START; END] over the packed tokens, START[t] the first token of
    t's document and END[t] one past its last. Built once per workload, outside the timed calls."""
    lengths = torch.tensor(docs, dtype=torch.int64)
    ends = torch.cumsum(lengths, 0)
    starts = ends - lengths
    per_token = (torch.repeat_interleave(starts, lengths), torch.repeat_interleave(ends, lengths))
    return torch.cat(per_token).to(torch.int32).to(device)


def _doc_arg(mask: MaskSpec, bounds, q: torch.Tensor, sq: int, sk: int):
    """DOC for the kernels: the bounds (made here when the caller has none), or any pointer when unread."""
    if mask.docs is None:
        return q
    if not sq == sk == sum(mask.docs):
        raise Unsupported(f"packed documents need q_len == kv_len == the sum of their lengths ({sum(mask.docs)}), "
                          f"got {sq} and {sk}")
    return doc_bounds(mask.docs, q.device) if bounds is None else bounds


def _score_mod_args(mask: MaskSpec, scale: float) -> dict:
    """The kernels' MOD (0 none, 1 soft-capping, 2 ALiBi) and soft-capping's constants (kernels_fwd.modified)."""
    if mask.softcap is not None:
        return dict(MOD=1, SC_IN=2.0 * LOG2E * scale / mask.softcap, SC_OUT=mask.softcap * LOG2E)
    return dict(MOD=2 if mask.alibi else 0, SC_IN=0.0, SC_OUT=0.0)


def split_layout(kv_len: int, splits: int, block_n: int) -> tuple[int, int]:
    """(keys per split, a multiple of block_n; number of splits actually used)."""
    split_len = triton.cdiv(triton.cdiv(kv_len, max(1, splits)), block_n) * block_n
    return split_len, triton.cdiv(kv_len, split_len)


def forward(q, k, v, mask: MaskSpec, cfg: Config, scale: float, need_lse: bool, bounds=None, kv_len=None):
    """(out, lse): out like q; lse (B*HQ, SQ) fp32 in base 2 (+inf for rows that see no key), or None.
    bounds: doc_bounds(mask.docs) for a document mask, made here when None. k and v may be PagedKV (forward
    only), every sequence kv_len tokens long (read from seq_lens when None: a device sync)."""
    with _launching():
        return _forward(q, k, v, mask, cfg, scale, need_lse, bounds, kv_len)


def _kv_args(q, k, v, need_lse: bool, kv_len):
    """(K, V, their (batch, head, row) strides, block table, (table row stride, page stride), PAGED, PAGE,
    kv_len): dense tensors as they are; a paged pool with batch stride 0 and its rows found through the table."""
    if not isinstance(k, PagedKV):
        k, v = _last_dim_contiguous(k), _last_dim_contiguous(v)
        return k, v, k.stride()[:3], v.stride()[:3], q, (0, 0), False, 1, k.shape[2]
    if need_lse:
        raise Unsupported("triton-fa reads a paged KV cache in the forward only (no gradient through pages)")
    if not isinstance(v, PagedKV) or v.pages.shape != k.pages.shape or v.pages.stride() != k.pages.stride():
        raise Unsupported("triton-fa needs K's and V's page pools in one layout")
    if (v.block_table.data_ptr(), v.block_table.stride()) != (k.block_table.data_ptr(), k.block_table.stride()):
        raise Unsupported("triton-fa reads V's pages through K's block table: give K and V the same block table")
    kp, vp = _last_dim_contiguous(k.pages), _last_dim_contiguous(v.pages)
    sk = int(k.seq_lens.max()) if kv_len is None else int(kv_len)
    table = _last_dim_contiguous(k.block_table)  # the kernels step through a sequence's pages with unit stride
    return (kp, vp, (0, kp.stride(2), kp.stride(1)), (0, vp.stride(2), vp.stride(1)), table,
            (table.stride(0), kp.stride(0)), True, k.page_size, sk)


def _forward(q, k, v, mask: MaskSpec, cfg: Config, scale: float, need_lse: bool, bounds, kv_len):
    fwd, _ = kernels()
    q = _last_dim_contiguous(q)
    k, v, k_strides, v_strides, table, page_strides, paged, page, sk = _kv_args(q, k, v, need_lse, kv_len)
    b, hq, sq, d = q.shape
    hkv = k.shape[2] if paged else k.shape[1]
    out = torch.empty((b, hq, sq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b * hq, sq), dtype=torch.float32, device=q.device) if need_lse else out
    common = dict(HQ=hq, GROUP=hq // hkv, SQ=sq, SK=sk, SHIFT=mask.shift, WINDOW=mask.window or 0,
                  qk_scale=scale * LOG2E, HEAD_DIM=d, CAUSAL=mask.causal, HAS_WINDOW=mask.window is not None,
                  UPCAST=_upcast(q.dtype), PAGED=paged, PAGE=page, **_score_mod_args(mask, scale))
    if cfg.split_kv:
        if mask.docs is not None:
            raise Unsupported("split_kv takes no document mask (packed documents have q_len == kv_len: use the "
                              "row-block kernel, split_kv=0)")
        if (hq // hkv) * sq > SPLIT_ROWS:
            raise Unsupported(f"split_kv packs a KV head's query rows into one block: GROUP * q_len = "
                              f"{(hq // hkv) * sq} > {SPLIT_ROWS}")
        block_m = max(16, triton.next_power_of_2((hq // hkv) * sq))
        split_len, splits = split_layout(sk, cfg.split_kv, cfg.block_n)
        part = torch.empty((b * hq, splits, sq, d), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((b * hq, splits, sq), dtype=torch.float32, device=q.device)
        fwd.attn_fwd_split[(splits, b * hkv)](
            q, k, v, part, part_lse, table, *q.stride()[:3], *k_strides, *v_strides, *page_strides,
            SPLIT_LEN=split_len, NUM_SPLITS=splits, BLOCK_M=block_m, BLOCK_N=cfg.block_n,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common)
        fwd.attn_combine[(b * hq * sq,)](
            part, part_lse, out, lse, *out.stride()[:3], hq, sq, splits, HEAD_DIM=d,
            SPLITS=triton.next_power_of_2(splits), STORE_LSE=need_lse, num_warps=4)
        return out, (lse if need_lse else None)
    tma = cfg.tma and not paged and _tma_ok(q, k, v, out)
    if tma:
        _ensure_allocator(q.device)
    grid = (triton.cdiv(sq, cfg.block_m), b * hq)
    doc = _doc_arg(mask, bounds, q, sq, sk)
    fwd.attn_fwd[grid](q, k, v, out, lse, doc, table, *q.stride()[:3], *k_strides, *v_strides, *out.stride()[:3],
                       *page_strides, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HAS_DOC=mask.docs is not None,
                       USE_TMA=tma, STORE_LSE=need_lse, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common)
    return out, (lse if need_lse else None)


def backward(do, q, k, v, out, lse, mask: MaskSpec, cfg: Config, scale: float, bounds=None):
    """(dq, dk, dv), shaped like q, k, v."""
    with _launching():
        return _backward(do, q, k, v, out, lse, mask, cfg, scale, bounds)


def _backward(do, q, k, v, out, lse, mask: MaskSpec, cfg: Config, scale: float, bounds):
    _, bwd = kernels()
    do = _last_dim_contiguous(do)
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    common = dict(HQ=hq, GROUP=hq // hkv, SQ=sq, SK=sk, SHIFT=mask.shift, WINDOW=mask.window or 0,
                  qk_scale=scale * LOG2E, sm_scale=scale, HEAD_DIM=d, CAUSAL=mask.causal,
                  HAS_WINDOW=mask.window is not None, HAS_DOC=mask.docs is not None, UPCAST=_upcast(q.dtype),
                  **_score_mod_args(mask, scale))
    doc = _doc_arg(mask, bounds, q, sq, sk)
    delta = torch.empty((b * hq, sq), dtype=torch.float32, device=q.device)
    pre_m = 64
    bwd.bwd_preprocess[(triton.cdiv(sq, pre_m), b * hq)](out, do, delta, *out.stride()[:3], *do.stride()[:3], hq, sq,
                                                         HEAD_DIM=d, BLOCK_M=pre_m, num_warps=4)
    dk = torch.empty((b, hkv, sk, d), dtype=k.dtype, device=k.device)
    dv = torch.empty((b, hkv, sk, d), dtype=v.dtype, device=v.device)
    # The dK/dV program keeps BWD_BLOCK_N keys and streams BWD_BLOCK_M query rows; the dQ program keeps
    # DQ_BLOCK_M rows and streams DQ_BLOCK_N keys.
    stream, resident = cfg.bwd_block_m, cfg.bwd_block_n
    if cfg.dq_atomic:
        dq_acc = torch.zeros((b * hq, sq, d), dtype=torch.float32, device=q.device)
    else:
        dq_acc = delta  # unused by the kernel
    bwd.bwd_dkdv[(triton.cdiv(sk, resident), b * hkv)](
        q, k, v, do, lse, delta, dk, dv, dq_acc, doc, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3], BLOCK_M=stream, BLOCK_N=resident,
        DQ_ATOMIC=cfg.dq_atomic, num_warps=cfg.bwd_warps, num_stages=cfg.bwd_stages, **common)
    if cfg.dq_atomic:
        dq = dq_acc.view(b, hq, sq, d).to(q.dtype)
    else:
        dq = torch.empty((b, hq, sq, d), dtype=q.dtype, device=q.device)
        bwd.bwd_dq[(triton.cdiv(sq, cfg.dq_block_m), b * hq)](
            q, k, v, do, lse, delta, dq, doc, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
            *dq.stride()[:3], BLOCK_M=cfg.dq_block_m, BLOCK_N=cfg.dq_block_n, num_warps=cfg.bwd_warps,
            num_stages=cfg.dq_stages, **common)
    return dq, dk, dv


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, cfg, scale, bounds):
        # The backward kernels read q, k and v with a unit stride along head_dim, as the forward's do: save them so.
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        out, lse = forward(q, k, v, mask, cfg, scale, need_lse=True, bounds=bounds)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.cfg, ctx.scale, ctx.bounds = mask, cfg, scale, bounds
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = backward(do, q, k, v, out, lse, ctx.mask, ctx.cfg, ctx.scale, ctx.bounds)
        return dq, dk, dv, None, None, None, None


def attention(q, k, v, mask: MaskSpec, cfg: Config, scale: float | None = None, bounds=None, kv_len=None):
    """softmax(q k^T * scale + mask) v for q (B, HQ, SQ, D), k and v (B, HKV, SK, D) or PagedKV (forward only,
    every sequence kv_len long); differentiable. bounds: doc_bounds(mask.docs, device) for a document mask, made
    once by the caller (else on every call)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if isinstance(k, PagedKV):
        return forward(q, k, v, mask, cfg, scale, need_lse=q.requires_grad and torch.is_grad_enabled(),
                       bounds=bounds, kv_len=kv_len)[0]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _Attention.apply(q, k, v, mask, cfg, scale, bounds)
    return forward(q, k, v, mask, cfg, scale, need_lse=False, bounds=bounds)[0]
