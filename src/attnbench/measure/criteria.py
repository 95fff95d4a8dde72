"""The correctness criteria: a kernel's error against float64, judged by the error of eager math in the same dtype."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """How far a kernel's error may exceed the yardstick (eager math's error in the same dtype): `factor`
    times it, plus floors in units of `unit` (the dtype's unit roundoff) times a scale of the reference."""

    unit: float
    element: float   # x unit x max |ref|: the largest elementwise error
    row: float       # x unit x the row's scale (its norm, or the rounding scale of its last sum): each row
    head: float      # x unit x the head's scale: each (batch, head)
    factor: float = 2.0


# From measurements on the CPU (docs/methods.md has the table; benchmarks/correctness_margins.py makes it, and
# on a GPU too): torch's CPU flash kernel, SDPA with an explicit mask, sdpa-math, flex and eager math reordered
# as flash-attention's tests reorder it came to at most 0.6 of these limits over 1524 checks in bf16 and fp16,
# forward and backward, and to 0.81 over hundreds of seeds at shapes where a row's yardstick is one head's
# (B1 H1, B1 H2). Gradients take factor 4 (flash-attention's tests use 2 or 4 for them) and a wider row floor:
# a fused backward rounds differently from eager autograd (correctness.references adds what it must).
# fp32 may use TF32 matrix units (10-bit mantissa, truncated as Triton's tl.dot reads fp32): eager fp32 math
# is ~1e-7 off, so there the floor is the whole allowance; an emulated TF32 kernel needed 6.5 (element),
# 7.4 (row) and 3.6 (head) units of 2^-11 (0.71 of these limits). float64 kernels differ from the reference in
# summation order only.
RULES = {
    "bf16": Rule(2.0**-8, element=2, row=4, head=1),
    "fp16": Rule(2.0**-11, element=2, row=4, head=1),
    "fp32": Rule(2.0**-11, element=10, row=12, head=6),
    "fp64": Rule(2.0**-40, element=4, row=4, head=4),
}
GRAD_RULES = {
    "bf16": Rule(2.0**-8, element=4, row=8, head=1, factor=4.0),
    "fp16": Rule(2.0**-11, element=4, row=8, head=1, factor=4.0),
    "fp32": Rule(2.0**-11, element=10, row=12, head=6, factor=4.0),
    "fp64": Rule(2.0**-40, element=4, row=4, head=4, factor=4.0),
}
ZERO_ROW_FLOOR = 1 / 64   # rows that are ~0 in every head (no key seen) scale by this share of the RMS row

CRITERION = (
    "out, and dq, dk, dv for backward passes, are compared with float64 attention and with eager math in the "
    "workload's dtype on the same inputs (its matmuls accumulated in float32: torch's bf16/fp16 GEMMs with "
    "reduced-precision reductions and TF32 off); an impl fails if its error exceeds 2x eager math's (4x for "
    "gradients, whose yardstick also counts what a fused backward's delta = rowsum(dO·O) from the rounded "
    "output costs), plus a floor, in any of: the largest elementwise error; any (batch, head, row)'s error, "
    "against eager math's in that row or its median over batch and heads at that row index if larger (rows of "
    "dk and dv are keys); any head's error. Floors, in units of the dtype's unit roundoff u times max |ref|, "
    "the row's scale (its norm or, for gradients, the rounding scale of its sum if larger) and the head's: "
    "bf16 and fp16 2, 4, 1 (gradients 4, 8, 1); fp32 10, 12, 6 with u = 2^-11, TF32's (TF32 matmuls allowed); "
    "a head of n rows takes at least the row floor / sqrt(n)"
)


def rule_for(dtype: str, tensor: str) -> Rule:
    return (RULES if tensor == "out" else GRAD_RULES)[dtype]


def _g(x) -> float:
    return float(f"{float(x):.4g}")


def judge(got, ref, trusted, rule: Rule, allowance=None, spread=None) -> dict[str, Any]:
    """One tensor (batch, heads, rows, dim): its error against float64 `ref`, beside the yardstick: eager
    math's elementwise error |trusted - ref|, plus `allowance` where given (an error that the standard
    algorithm makes and eager math does not). `spread`, where given, is the rounding scale of each element's
    last sum (sqrt(sum of its squared terms)): rows whose sum cancels get floors on that scale.

    - element: max |got - ref| <= factor * max yardstick + element * unit * max |ref|
    - row: for each (batch, head, row), ||got - ref|| <= factor * max(y, y~) + row * unit * max(s, s~), y the
      yardstick's norm in that row, s the row's scale (||ref||, or ||spread|| if larger), y~ and s~ their
      medians over batch and heads at that row index (a row's conditioning is shared by every head)
    - head: for each (batch, head), the same with the head's norms and the head floor.
    Each criterion's ratio (error / limit) must stay <= 1; the worst case, its figures and its index are kept.
    """
    import torch

    st = _row_stats(got, ref, trusted, allowance, spread)
    e_row, y_row, n_row, s_row = st["e_row"], st["y_row"], st["n_row"], st["s_row"]
    tiny = torch.finfo(torch.float64).tiny

    emax, ymax, rmax = st["emax"], st["ymax"], st["rmax"]
    # A reference that is zero everywhere (the gradients when every row sees at most one key: dS = P (dP - delta)
    # vanishes) has no max |ref| to scale by, and eager math's softmax backward is exactly 0 there while a fused
    # kernel's dP and delta differ in their fp32 summation order: floor it as the row criterion floors zero rows.
    zero = ZERO_ROW_FLOOR * float(s_row.pow(2).mean().sqrt())
    elim = rule.factor * ymax + rule.element * rule.unit * max(rmax, zero)
    element = dict(ratio=_g(emax / max(elim, tiny)), err=_g(emax), yardstick=_g(ymax), limit=_g(elim),
                   factor=rule.factor, ref_max=_g(rmax), at=st["emax_at"])

    n = y_row.shape[-1]
    y_med = y_row.reshape(-1, n).median(dim=0).values
    s_med = s_row.reshape(-1, n).median(dim=0).values
    yard = torch.maximum(y_row, y_med)
    scale = torch.clamp(torch.maximum(s_row, s_med), min=zero)
    rlim = (rule.factor * yard + rule.row * rule.unit * scale).clamp_min(tiny)
    ratio = e_row / rlim
    j = int(ratio.argmax())
    row = dict(ratio=_g(ratio.flatten()[j]), err=_g(e_row.flatten()[j]), yardstick=_g(yard.flatten()[j]),
               limit=_g(rlim.flatten()[j]), factor=rule.factor, norm=_g(n_row.flatten()[j]), at=_index(j, ratio.shape))

    e_h, y_h, n_h, s_h = (z.pow(2).sum(dim=-1).sqrt() for z in (e_row, y_row, n_row, s_row))
    zero_h = ZERO_ROW_FLOOR * float(s_h.pow(2).mean().sqrt())
    # The head floor asks most of a head's rows to do better than the row floor; it never fails a head for one row
    # at the row floor: with n rows that is row / sqrt(n) units, more than `head` only below (row / head)^2 rows
    # (a decode head of one query row, the dK of two keys), where the head criterion would otherwise be the row
    # criterion with a smaller floor.
    head_units = max(rule.head, rule.row / math.sqrt(n))
    hlim = (rule.factor * y_h + head_units * rule.unit * torch.clamp(s_h, min=zero_h)).clamp_min(tiny)
    hratio = e_h / hlim
    k = int(hratio.argmax())
    head = dict(ratio=_g(hratio.flatten()[k]), err=_g(e_h.flatten()[k]), yardstick=_g(y_h.flatten()[k]),
                limit=_g(hlim.flatten()[k]), factor=rule.factor, norm=_g(n_h.flatten()[k]), at=_index(k, hratio.shape))

    total = float(n_row.pow(2).sum().sqrt())
    err_total, yard_total = float(e_row.pow(2).sum().sqrt()), float(y_row.pow(2).sum().sqrt())
    scale_total = float(torch.clamp(s_h, min=zero_h).pow(2).sum().sqrt())
    out = dict(rel_err=_g(err_total / total if total > 0 else err_total),
               yardstick_rel_err=_g(yard_total / total if total > 0 else yard_total),
               # the head criterion, passed by every head, bounds the global relative error by this
               global_limit=_g((rule.factor * yard_total + head_units * rule.unit * scale_total) / total
                               if total > 0 else float("inf")),
               margin=max(element["ratio"], row["ratio"], head["ratio"]),
               element=element, row=row, head=head)
    if st["bad_trusted"]:
        out["yardstick_not_finite"] = st["bad_trusted"]
    return out


BLOCK_ELEMENTS = 2**25   # float64 elements of each tensor handled at once (a few such temporaries live together)


def _row_stats(got, ref, trusted, allowance, spread) -> dict[str, Any]:
    """Per (batch, head, row): the norms of the error, of the yardstick, of ref and the row's scale; and the
    elementwise maxima with the largest error's index. In blocks of (batch, head) pairs, so that the float64
    temporaries stay small whatever the tensor's size."""
    import torch

    b, h, n, d = ref.shape
    flat = [None if t is None else t.detach().reshape(b * h, n, d) for t in (got, ref, trusted, allowance, spread)]
    rows = torch.zeros(4, b * h, n, dtype=torch.float64, device=ref.device)
    emax, ymax, rmax, at, bad = -1.0, 0.0, 0.0, 0, 0
    step = max(1, BLOCK_ELEMENTS // max(1, n * d))
    for i in range(0, b * h, step):
        x, r, t, a, sp = (None if z is None else z[i:i + step].to(torch.float64) for z in flat)
        dx = x - r
        dy = (t - r).abs()
        nonfinite = ~torch.isfinite(dy)
        if bool(nonfinite.any()):
            bad += int(nonfinite.sum())
            dy = torch.where(nonfinite, torch.zeros_like(dy), dy)
        if a is not None:
            dy = dy + a
        ax = dx.abs()
        j = int(ax.argmax())
        if float(ax.flatten()[j]) > emax:
            emax, at = float(ax.flatten()[j]), i * n * d + j
        ymax, rmax = max(ymax, float(dy.max())), max(rmax, float(r.abs().max()))
        nr = r.norm(dim=-1)
        rows[0, i:i + step], rows[1, i:i + step], rows[2, i:i + step] = dx.norm(dim=-1), dy.norm(dim=-1), nr
        rows[3, i:i + step] = nr if sp is None else torch.maximum(nr, sp.norm(dim=-1))
    e_row, y_row, n_row, s_row = (z.view(b, h, n) for z in rows)
    return dict(e_row=e_row, y_row=y_row, n_row=n_row, s_row=s_row, emax=max(emax, 0.0), ymax=ymax, rmax=rmax,
                emax_at=_index(at, (b, h, n, d)), bad_trusted=bad)


def _index(flat: int, shape) -> list[int]:
    out = []
    for n in reversed(tuple(shape)):
        out.append(flat % n)
        flat //= n
    return out[::-1]


def describe(name: str, verdict: dict[str, Any], dtype: str) -> str:
    """One line on a tensor's worst criterion, e.g. 'relative error 0.031 in out row 1023 head 5 (batch 0):
    14x the bf16 math error there (limit 6.1x)'; where the floor is nearly all of the limit (fp32, whose eager
    math is nearly exact), the limit as a relative error. verdict[...]['at'] holds the problem's own indices."""
    crit = max(("element", "row", "head"), key=lambda c: verdict[c]["ratio"])
    c = verdict[crit]
    at = c["at"]
    key = name in ("dk", "dv")
    head = f"{'KV head' if key else 'head'} {at[1]}"
    row = f"{'key row' if key else 'row'} {at[2]}" if crit != "head" else ""
    if crit == "element":
        norm = c["ref_max"]
        lead = (f"relative error {c['err'] / norm if norm > 0 else c['err']:.2g} (max error {c['err']:.2g}, of max "
                f"|ref| {norm:.2g}) in {name} at {row} {head} (batch {at[0]}, column {at[3]})")
        yard = f"the {dtype} math's largest error"
    else:
        norm = c["norm"]
        lead = f"relative error {c['err'] / norm if norm > 0 else c['err']:.2g} in {name} {row + ' ' if row else ''}" \
               f"{head} (batch {at[0]})"
        yard = f"the {dtype} math error there"
    if c["yardstick"] > 0 and c["factor"] * c["yardstick"] >= 0.1 * c["limit"]:   # else mostly the floor
        return f"{lead}: {c['err'] / c['yardstick']:.3g}x {yard} (limit {c['limit'] / c['yardstick']:.3g}x)"
    rel = (lambda x: x / norm) if norm > 0 else (lambda x: x)
    return f"{lead}; limit {rel(c['limit']):.2g}, mostly the {dtype} floor ({yard}: {rel(c['yardstick']):.2g})"
