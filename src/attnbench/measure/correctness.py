"""Is it right: compare an impl's output (and gradients) with a float64 reference on fresh random inputs."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from ..impls.base import AttnFn, make_inputs
from ..impls.reference import reference_output
from ..spec import Workload

# ||out - ref|| / ||ref|| allowed per dtype. fp32 allows TF32 matrix units (~3e-4); fp16 keeps 10
# mantissa bits, bf16 7. Wrong functions (e.g. chunking K/V) land near 1.
TOLERANCES = {"fp64": 1e-9, "fp32": 2e-3, "fp16": 5e-3, "bf16": 3e-2}
GRAD_FACTOR = 4.0  # gradients go through more rounding steps than the forward output

# Above this many score elements (B*Hq*Sq*Sk) the reference covers a sub-batch only.
FULL_REFERENCE_ELEMENTS = 2**27
# The gradient reference keeps the whole float64 score matrix for autograd: beyond this many
# elements (after narrowing to one batch element and one KV group) gradients are not checked.
GRAD_REFERENCE_ELEMENTS = 2**28


@dataclass
class CorrectnessResult:
    ok: bool
    rel_err: float | None
    tolerance: float
    reason: str = ""
    seed: int = 0
    checked_batch: int = 0
    details: dict[str, float] = field(default_factory=dict)
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


def check(fn: AttnFn, workload: Workload, device: str, seed: int | None = None) -> CorrectnessResult:
    """Run fn on fresh random inputs and compare with float64 attention (forward, and gradients
    for bwd passes). Inputs are never zero; NaN or Inf anywhere fails."""
    import torch

    w = workload
    seed = secrets.randbits(31) if seed is None else seed
    tol = tolerance(w.dtype)
    inputs = make_inputs(w, device, seed)
    elements = w.batch * w.q_heads * w.q_len * w.kv_len
    sub = w.batch if elements <= FULL_REFERENCE_ELEMENTS else 1
    grads = w.direction != "fwd"

    q, k, v = inputs.q, inputs.k, inputs.v
    if grads:
        q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out_bytes = q.numel() * q.element_size()
    _poison(out_bytes, device)
    out = fn(q, k, v)
    if not isinstance(out, torch.Tensor):
        return CorrectnessResult(False, None, tol, f"returned {type(out).__name__}, not a tensor", seed, sub)
    if tuple(out.shape) != tuple(q.shape):
        return CorrectnessResult(False, None, tol, f"output shape {tuple(out.shape)} != {tuple(q.shape)}",
                                 seed, sub)
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        return CorrectnessResult(False, None, tol, f"{bad} output elements are NaN/Inf (or never written)",
                                 seed, sub)

    details: dict[str, float] = {}
    note = ""
    if grads:
        gq, gk, gv = torch.autograd.grad(out, (q, k, v), inputs.grad_out)
        group = w.q_heads // w.kv_heads  # q heads 0..group-1 read KV head 0 only: an exact sub-problem
        sub_b = sub if sub * w.q_heads * w.q_len * w.kv_len <= GRAD_REFERENCE_ELEMENTS else 1
        hq, hk = (w.q_heads, w.kv_heads) if sub_b == sub and sub == w.batch else (group, 1)
        if sub_b * hq * w.q_len * w.kv_len > GRAD_REFERENCE_ELEMENTS:
            grads = False
            note = "gradients not checked: the float64 reference would not fit; forward output checked"
    if not grads:
        ref = reference_output(q[:sub], k[:sub], v[:sub], w.mask, score_mod=w.score_mod)
        err = rel_error(out[:sub], ref)
        details["out"] = err
    else:
        from ..impls.reference import attention_math

        q64, k64, v64 = (t[:sub_b, :h].detach().to(torch.float64).requires_grad_(True)
                         for t, h in ((q, hq), (k, hk), (v, hk)))
        ref = attention_math(q64, k64, v64, w.mask, score_mod=w.score_mod, heads_total=w.q_heads)
        g64 = inputs.grad_out[:sub_b, :hq].to(torch.float64)
        rq, rk, rv = torch.autograd.grad(ref, (q64, k64, v64), g64)
        details["out"] = rel_error(out[:sub_b, :hq], ref.detach())
        for name, got, want in (("dq", gq[:sub_b, :hq], rq), ("dk", gk[:sub_b, :hk], rk),
                                ("dv", gv[:sub_b, :hk], rv)):
            if not bool(torch.isfinite(got).all()):
                return CorrectnessResult(False, None, tol, f"{name} has NaN/Inf", seed, sub_b, details)
            details[name] = rel_error(got, want)
        err = max(details["out"], max(details[n] for n in ("dq", "dk", "dv")) / GRAD_FACTOR)
    if err > tol:
        worst = max(details, key=details.get)
        return CorrectnessResult(False, err, tol,
                                 f"relative error {err:.3g} > tolerance {tol:.1g} ({worst})", seed, sub, details)
    return CorrectnessResult(True, err, tol, "", seed, sub, details, note)
