"""Is it right: an impl's output and gradients against float64, eager math in the same dtype as the yardstick."""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from ..impls.base import AttnFn, PagedKV, make_inputs
from ..spec import Workload
from .criteria import CRITERION, describe, judge, rule_for

__all__ = ["CRITERION", "CorrectnessResult", "Plan", "check", "plan", "plain_matmuls", "references", "rel_error",
           "tolerance"]

# One global ||x - ref|| / ||ref|| per dtype: what the gate used before the same-dtype rule, and what still
# judges a whole model's logits against another implementation's (integrations), where no yardstick exists.
TOLERANCES = {"fp64": 1e-9, "fp32": 2e-3, "fp16": 5e-3, "bf16": 3e-2}
GRAD_FACTOR = 4.0

# Above this many score elements (B*Hq*Sq*Sk) the check covers the first and the last batch element.
FULL_REFERENCE_ELEMENTS = 2**27
# Gradient references over more score elements than this narrow to the first and last KV group (with the
# query heads they serve), then to the last batch element; beyond that only the output is checked.
GRAD_REFERENCE_ELEMENTS = 2**32


@dataclass
class CorrectnessResult:
    ok: bool
    rel_err: float | None            # the largest ||x - ref|| / ||ref|| over the checked tensors (informative)
    tolerance: float | None = None   # the bound on it that passing the head criterion implies (see criteria.judge)
    reason: str = ""
    seed: int = 0
    checked_batch: int = 0           # batch elements checked
    details: dict[str, Any] = field(default_factory=dict)   # per tensor: each criterion's worst case, and where
    note: str = ""


def tolerance(dtype: str, grad: bool = False) -> float:
    return TOLERANCES[dtype] * (GRAD_FACTOR if grad else 1.0)


def rel_error(out, ref) -> float:
    import torch

    out = out.detach().to(torch.float64)
    denom = torch.linalg.vector_norm(ref)
    num = torch.linalg.vector_norm(out - ref)
    return float(num / denom) if float(denom) > 0 else float(num)


def _poison(nbytes: int, device: str) -> None:
    """Fill, then free, a block the size of the output, so the caching allocator hands NaNs to the
    impl's output: unwritten elements then fail the finite check. Best effort on CUDA; a no-op on CPU."""
    if not device.startswith("cuda"):
        return
    import torch

    block = torch.full((max(1, nbytes // 4),), float("nan"), dtype=torch.float32, device=device)
    del block


@contextlib.contextmanager
def plain_matmuls():
    """Eager math as a yardstick must itself be right: float32 accumulation in every bf16/fp16 GEMM (cuBLAS
    may otherwise reduce in reduced precision, or accumulate fp16 in fp16 where allowed) and full fp32 (no
    TF32). Scoped: every flag is restored after. Never around an impl's own call (compiled code guards on
    these flags)."""
    import torch

    m = torch.backends.cuda.matmul
    saved: dict[str, Any] = {}
    off: dict[str, Any] = {}
    try:
        saved["allow_tf32"], off["allow_tf32"] = m.allow_tf32, False
    except RuntimeError:  # fp32_precision was set through the newer API: leave TF32 as it is
        pass
    for name in ("allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction"):
        split_k = getattr(m, name + "_split_k")
        saved[name], off[name] = (getattr(m, name), split_k), (False, split_k)
    if hasattr(m, "allow_fp16_accumulation"):
        saved["allow_fp16_accumulation"], off["allow_fp16_accumulation"] = m.allow_fp16_accumulation, False
    try:
        for name, value in off.items():
            setattr(m, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(m, name, value)


# -- what is checked -------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """The part of the problem the references cover: batch elements, and KV heads (with the query heads each
    serves) for the output and for the gradients."""

    batches: list[int]
    kv_heads: list[int]
    grad_kv_heads: list[int] = field(default_factory=list)   # empty: gradients not checked
    grad_batches: list[int] = field(default_factory=list)
    note: str = ""


def plan(w: Workload) -> Plan:
    per_batch = w.q_heads * w.q_len * w.kv_len
    batches = list(range(w.batch)) if w.batch * per_batch <= FULL_REFERENCE_ELEMENTS else sorted({0, w.batch - 1})
    heads = list(range(w.kv_heads))
    p = Plan(batches, heads)
    if w.direction == "fwd":
        return p
    group = w.q_heads // w.kv_heads
    p.grad_kv_heads, p.grad_batches = heads, batches
    if len(batches) * per_batch > GRAD_REFERENCE_ELEMENTS:
        p.grad_kv_heads = sorted({0, w.kv_heads - 1})
        p.note = f"gradients checked on KV heads {', '.join(map(str, p.grad_kv_heads))} (and their query heads)"
        if len(batches) * len(p.grad_kv_heads) * group * w.q_len * w.kv_len > GRAD_REFERENCE_ELEMENTS:
            p.grad_batches = batches[-1:]
            p.note += f" of batch element {batches[-1]}"
        if len(p.grad_batches) * len(p.grad_kv_heads) * group * w.q_len * w.kv_len > GRAD_REFERENCE_ELEMENTS:
            p.grad_batches, p.grad_kv_heads = [], []
            p.note = "gradients not checked: the float64 reference would take too long; the output is checked"
        else:
            p.note += ": the float64 reference over all of them would take too long"
    return p


# -- the references --------------------------------------------------------------------------------------------

def _chunks(w: Workload, rows: int):
    """(first row, end row, first key, end key) per chunk of query rows: only the keys some row of it sees."""
    from ..spec import masks

    spans = masks.spans(w.mask, w.q_len, w.kv_len)
    for i in range(0, w.q_len, rows):
        j = min(w.q_len, i + rows)
        lo, hi = min(s[0] for s in spans[i:j]), max(s[1] for s in spans[i:j])
        if hi > lo:   # else no row of the chunk sees a key: zeros
            yield i, j, lo, hi


def _rows_per_chunk(w: Workload, heads: int, device, copies: int) -> int:
    from ..impls.reference import CPU_BUDGET, GPU_BUDGET

    budget = GPU_BUDGET if device.type == "cuda" else CPU_BUDGET
    return max(1, budget // max(1, copies * heads * w.kv_len * 8))


def _mm(a, b, hk: int):
    """a (1, H, r, x) @ b (1, hk, x, y) -> (1, H, r, y): the H = hk * g query heads of each KV head share its b."""
    return (a.reshape(1, hk, -1, a.shape[-1]) @ b).view(*a.shape[:3], b.shape[-1])


def _tmm(a, c, hk: int):
    """a (1, H, r, s)^T @ c (1, H, r, y), summed over each KV head's query heads -> (1, hk, s, y)."""
    return a.reshape(1, hk, -1, a.shape[-1]).transpose(-2, -1) @ c.reshape(1, hk, -1, c.shape[-1])


def _probs(q, k, w: Workload, i: int, lo: int, head_offset: int):
    """softmax probabilities (float64) of one chunk: query rows i.. of q against key rows lo.. of k, with the
    workload's score modifier and mask (as impls.reference.attention_math computes them)."""
    import torch

    from ..spec import masks

    rows, cols = slice(i, i + q.shape[2]), slice(lo, lo + k.shape[2])
    s = _mm(q, k.transpose(-2, -1), k.shape[1]) * w.head_dim ** -0.5
    s = masks.apply_score_mod(s, w.score_mod, w.mask, w.q_len, w.kv_len, rows, w.q_heads, cols=cols,
                              head_offset=head_offset)
    if w.mask != "full":
        s = s.masked_fill(~masks.mask_matrix(w.mask, w.q_len, w.kv_len, rows, q.device, cols), float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0)   # a row that sees no key: zeros


def _group(q, k, v, w: Workload, j: int, grad_out=None, explain=None):
    """One batch element, KV heads j.. (k and v: (1, hk, Sk, D); q: their query heads) in chunks of query rows:
    (out,) or (out, dq, dk, dv) of attention_math in q's dtype (dk and dv summed over chunks in float32, or
    float64). `explain` (float64 only): a dict that receives, for the gradients, each element's rounding scale
    ('spread_*': the root sum of squares of the terms a rounding to the dtype would move: of its last sum, and
    for dq and dk also those of dP, which feeds dS) and the first-order error of taking delta from the output
    rounded to that dtype ('delta_*')."""
    import torch

    from ..impls.reference import attention_math

    hk, g = k.shape[1], w.q_heads // w.kv_heads
    kw = dict(score_mod=w.score_mod, q_total=w.q_len, heads_total=w.q_heads, head_offset=j * g, kv_total=w.kv_len)
    if grad_out is None:
        out = torch.zeros_like(q)
        with torch.no_grad():
            for i0, i1, lo, hi in _chunks(w, _rows_per_chunk(w, q.shape[1], q.device, 1)):
                out[:, :, i0:i1] = attention_math(q[:, :, i0:i1], k[:, :, lo:hi], v[:, :, lo:hi], w.mask,
                                                  q_offset=i0, k_offset=lo, **kw)
        return (out,)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out, dq = torch.zeros_like(q), torch.zeros_like(q)
    dk, dv = torch.zeros(k.shape, dtype=acc, device=k.device), torch.zeros(v.shape, dtype=acc, device=v.device)
    if explain is not None:
        for name, like in (("spread_dq", q), ("spread_dk", k), ("spread_dv", v), ("delta_dq", q), ("delta_dk", k)):
            explain[name] = torch.zeros_like(like)
    scale = w.head_dim ** -0.5
    for i0, i1, lo, hi in _chunks(w, _rows_per_chunk(w, q.shape[1], q.device, 4 if explain is None else 8)):
        qc = q[:, :, i0:i1].detach().requires_grad_(True)
        kc, vc = (t[:, :, lo:hi].detach().requires_grad_(True) for t in (k, v))
        o = attention_math(qc, kc, vc, w.mask, q_offset=i0, k_offset=lo, **kw)
        go = grad_out[:, :, i0:i1]
        gq, gk, gv = torch.autograd.grad(o, (qc, kc, vc), go)
        o = o.detach()
        out[:, :, i0:i1], dq[:, :, i0:i1] = o, gq
        dk[:, :, lo:hi] += gk
        dv[:, :, lo:hi] += gv
        if explain is not None:   # dS = P (dP - delta); softcap's derivative (<= 1) is left out: larger scales
            qd, kd, vd = qc.detach(), kc.detach(), vc.detach()
            p = _probs(qd, kd, w, i0, lo, j * g)
            dp = _mm(go, vd.transpose(-2, -1), hk)
            ds = p * (dp - (go * o).sum(-1, keepdim=True))
            terms = ds.square() + (p * dp).square()   # dS rounded, and dP rounded before it
            explain["spread_dq"][:, :, i0:i1] = scale * _mm(terms, kd.square(), hk).sqrt()
            explain["spread_dk"][:, :, lo:hi] += scale**2 * _tmm(terms, qd.square(), hk)
            explain["spread_dv"][:, :, lo:hi] += _tmm(p.square(), go.square(), hk)
            e = (go * (o.to(explain["dtype"]).to(o.dtype) - o)).sum(-1, keepdim=True)
            explain["delta_dq"][:, :, i0:i1] = scale * e.abs() * _mm(p, kd, hk).abs()
            explain["delta_dk"][:, :, lo:hi] += scale * _tmm(p, e * qd, hk)
    if explain is not None:
        explain["spread_dk"] = explain["spread_dk"].sqrt()
        explain["spread_dv"] = explain["spread_dv"].sqrt()
        explain["delta_dk"] = explain["delta_dk"].abs()
    return out, dq, dk.to(k.dtype), dv.to(v.dtype)


def _batch_kv(t, b: int):
    """K or V of batch element b as a dense (1, Hkv, Sk, D) tensor (a paged cache gathered)."""
    return t.dense(slice(b, b + 1)) if isinstance(t, PagedKV) else t[b:b + 1].detach()


def _runs(heads: list[int]) -> list[tuple[int, int]]:
    """[0, 1, 2, 7] -> [(0, 3), (7, 8)]: contiguous ranges, each computed in one piece."""
    out: list[tuple[int, int]] = []
    for h in heads:
        if out and out[-1][1] == h:
            out[-1] = (out[-1][0], h + 1)
        else:
            out.append((h, h + 1))
    return out


def references(q, k, v, grad_out, w: Workload, batches: list[int], kv_heads: list[int], dtype) -> dict[str, Any]:
    """Over the given batch elements and KV heads: 'ref' (float64) and 'trusted' (eager math in `dtype`; the
    float64 one again for float64) of out, and of dq, dk, dv when grad_out is given, each (batches, heads, rows,
    dim); with gradients, 'spread' and 'allowance' (criteria.judge) of dq, dk and dv."""
    import torch

    g = w.q_heads // w.kv_heads
    names = ("out",) if grad_out is None else ("out", "dq", "dk", "dv")
    extra_names = ("spread_dq", "spread_dk", "spread_dv", "delta_dq", "delta_dk")
    per_batch: dict[str, list] = {n: [] for n in names + extra_names + tuple(f"t_{n}" for n in names)}
    low = dtype != torch.float64
    for b in batches:
        kb, vb = _batch_kv(k, b), _batch_kv(v, b)
        parts: dict[str, list] = {n: [] for n in per_batch}
        for j0, j1 in _runs(kv_heads):
            qg, kg, vg = q[b:b + 1, j0 * g:j1 * g].detach(), kb[:, j0:j1], vb[:, j0:j1]
            gg = None if grad_out is None else grad_out[b:b + 1, j0 * g:j1 * g]
            explain = None if grad_out is None else {"dtype": dtype}
            ref = _group(*(t.to(torch.float64) for t in (qg, kg, vg)), w, j0,
                         None if gg is None else gg.to(torch.float64), explain)
            if low:
                with plain_matmuls():
                    trusted = _group(qg.to(dtype), kg.to(dtype), vg.to(dtype), w, j0,
                                     None if gg is None else gg.to(dtype))
            else:
                trusted = ref
            for n, a, t in zip(names, ref, trusted):
                parts[n].append(a)
                parts[f"t_{n}"].append(t)
            for n in extra_names if explain is not None else ():
                parts[n].append(explain[n])
        for n, lst in parts.items():
            if lst:
                per_batch[n].append(torch.cat(lst, dim=1))
    cat = {n: torch.cat(lst, dim=0) for n, lst in per_batch.items() if lst}
    result: dict[str, Any] = {"ref": {n: cat[n] for n in names}, "trusted": {n: cat[f"t_{n}"] for n in names}}
    if grad_out is not None:
        result["spread"] = {n: cat[f"spread_{n}"] for n in ("dq", "dk", "dv")}
        result["allowance"] = {"dq": cat["delta_dq"], "dk": cat["delta_dk"]}
    return result


# -- the check -------------------------------------------------------------------------------------------------

def _select(t, batches: list[int], heads: list[int]):
    import torch

    t = t.detach()
    if len(batches) != t.shape[0]:
        t = t.index_select(0, torch.tensor(batches, device=t.device))
    if len(heads) != t.shape[1]:
        t = t.index_select(1, torch.tensor(heads, device=t.device))
    return t


def _written_inputs(inputs, w: Workload, device: str, seed: int) -> str:
    """Which of the inputs an impl changed ('' if none): each compared with the seed's draw, made again."""
    import torch

    fresh = make_inputs(w, device, seed)
    for name in ("q", "k", "v", "grad_out"):
        a, b = getattr(inputs, name), getattr(fresh, name)
        if a is None:
            continue
        parts = [(a.pages, b.pages), (a.block_table, b.block_table)] if isinstance(a, PagedKV) else [(a, b)]
        if not all(torch.equal(x.detach(), y) for x, y in parts):
            return name
    return ""


def check(fn: AttnFn, workload: Workload, device: str, seed: int | None = None) -> CorrectnessResult:
    """Run fn on fresh random inputs (never zeros); compare its output, and for backward passes dq, dk and dv,
    with float64 attention, eager math in the workload's dtype being the yardstick (criteria.CRITERION). NaN or
    Inf anywhere fails, and so does writing to an input (q, k, v, or dO)."""
    import torch

    w = workload
    seed = secrets.randbits(31) if seed is None else seed
    inputs = make_inputs(w, device, seed)
    p = plan(w)
    grads = w.direction != "fwd"

    def fail(reason: str, details: dict[str, Any] | None = None, err: float | None = None,
             tol: float | None = None) -> CorrectnessResult:
        return CorrectnessResult(False, err, tol, reason, seed, len(p.batches), details or {}, p.note)

    q, k, v = inputs.q, inputs.k, inputs.v
    if grads:
        q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    _poison(q.numel() * q.element_size(), device)
    out = fn(q, k, v)
    if not isinstance(out, torch.Tensor):
        return fail(f"returned {type(out).__name__}, not a tensor")
    if tuple(out.shape) != tuple(q.shape):
        return fail(f"output shape {tuple(out.shape)} != {tuple(q.shape)}")
    if not bool(torch.isfinite(out).all()):
        return fail(f"{int((~torch.isfinite(out)).sum())} output elements are NaN/Inf (or never written)")
    got = {"out": out.detach()}
    if grads:
        for name, gt in zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), inputs.grad_out)):
            if not bool(torch.isfinite(gt).all()):
                return fail(f"{name} has {int((~torch.isfinite(gt)).sum())} NaN/Inf elements")
            got[name] = gt
    del out
    written = _written_inputs(inputs, w, device, seed)
    if written:
        # The reference below reads q, k and v after the call: an impl that scales q in place (`q *= scale`, then
        # SDPA's own scale) would be judged against the attention of what it wrote, and pass.
        return fail(f"wrote to its input {written} in place; attention must leave q, k and v as they are (each "
                    "timed call would read other values, and the check would compare against attention of what "
                    "it wrote)")

    g = w.q_heads // w.kv_heads
    checks: list[tuple[str, list[int], list[int], dict[str, Any]]] = []   # (tensor, batches, kv heads, refs)
    if p.grad_kv_heads:
        refs = references(q, k, v, inputs.grad_out, w, p.grad_batches, p.grad_kv_heads, q.dtype)
        checks += [(n, p.grad_batches, p.grad_kv_heads, refs) for n in ("dq", "dk", "dv")]
        if (p.grad_batches, p.grad_kv_heads) == (p.batches, p.kv_heads):
            checks.insert(0, ("out", p.batches, p.kv_heads, refs))
    if not checks or checks[0][0] != "out":
        refs = references(q, k, v, None, w, p.batches, p.kv_heads, q.dtype)
        checks.insert(0, ("out", p.batches, p.kv_heads, refs))

    details: dict[str, Any] = {}
    for name, batches, kv, refs in checks:
        heads = kv if name in ("dk", "dv") else [j * g + i for j in kv for i in range(g)]
        verdict = judge(_select(got[name], batches, heads), refs["ref"][name], refs["trusted"][name],
                        rule_for(w.dtype, name), refs.get("allowance", {}).get(name), refs.get("spread", {}).get(name))
        for crit in ("element", "row", "head"):   # indices of the problem, not of the checked selection
            at = verdict[crit]["at"]
            at[0], at[1] = batches[at[0]], heads[at[1]]
        details[name] = verdict
    err = max(d["rel_err"] for d in details.values())
    tol = max(d["global_limit"] for d in details.values())
    worst = max(details, key=lambda n: details[n]["margin"])
    if details[worst]["margin"] > 1.0:
        return fail(describe(worst, details[worst], w.dtype), details, err, tol)
    return CorrectnessResult(True, err, tol, "", seed, len(p.batches), details, p.note)
