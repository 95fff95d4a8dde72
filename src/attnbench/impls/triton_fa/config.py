"""triton-fa's masks, parameters, defaults and the resource estimates that prune its parameter space."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ...errors import UserError


@dataclass(frozen=True)
class MaskSpec:
    """What the kernels take: query i sees key j when (not causal or j <= i + shift) and
    (window is None or j >= i + shift - window) and (docs is None or j is in i's document: docs are the
    lengths of the packed documents, q_len == kv_len). The scores are first modified by softcap (C tanh(s / C))
    or alibi (ALiBi's bias, the query at i + shift), as spec/masks.py defines them."""

    causal: bool = False
    shift: int = 0
    window: int | None = None
    docs: tuple[int, ...] | None = None
    softcap: float | None = None
    alibi: bool = False


def mask_problem(mask: str) -> str | None:
    """Why triton-fa cannot run this mask kind (None: it can)."""
    if mask in ("full", "causal", "causal-br"):
        return None
    if mask.startswith("window:"):
        size = mask.split(":", 1)[1]
        return None if size.isdigit() else f"window size must be a non-negative integer, got {size!r}"
    if mask.startswith("document:"):
        return None
    return f"unknown mask kind {mask!r}"


def mask_spec(mask: str, q_len: int, kv_len: int, score_mod: str = "") -> MaskSpec:
    """mask_kind's MaskSpec with the score modifier (softcap:C or alibi) added."""
    spec = mask_kind(mask, q_len, kv_len)
    if not score_mod:
        return spec
    from ...spec.masks import canonical_score_mod

    mod = canonical_score_mod(score_mod)
    if mod == "alibi":
        return dataclasses.replace(spec, alibi=True)
    return dataclasses.replace(spec, softcap=float(mod.split(":", 1)[1]))


def mask_kind(mask: str, q_len: int, kv_len: int) -> MaskSpec:
    """The one place that turns a mask kind into kernel arguments:
    full; causal (top-left, SDPA's is_causal: i sees j <= i); causal-br (bottom-right: j <= i + kv_len - q_len);
    window:W (bottom-right causal with W keys to the left: pos - W <= j <= pos, pos = i + kv_len - q_len, as
    flash-attention's window_size=(W, 0)); document:... (causal within each packed document)."""
    why = mask_problem(mask)
    if why:
        raise UserError(why)
    if mask == "full":
        return MaskSpec()
    if mask == "causal":
        return MaskSpec(causal=True)
    if mask == "causal-br":
        return MaskSpec(causal=True, shift=kv_len - q_len)
    if mask.startswith("document:"):
        from ...spec.masks import canonical_mask, doc_lengths

        return MaskSpec(causal=True, docs=doc_lengths(canonical_mask(mask, q_len, kv_len), q_len))
    return MaskSpec(causal=True, shift=kv_len - q_len, window=int(mask.split(":", 1)[1]))


def workload_mask(workload) -> str:
    """The workload's mask kind: its `mask` field where the Workload has one, else from `causal`."""
    mask = getattr(workload, "mask", None)
    if mask:
        return str(mask)
    return "causal" if workload.causal else "full"


# Parameter name (as in param_space and the tune labels) -> Config field.
PARAM_FIELDS = {
    "BLOCK_M": "block_m", "BLOCK_N": "block_n", "num_warps": "num_warps", "num_stages": "num_stages",
    "tma": "tma", "split_kv": "split_kv",
    "BWD_BLOCK_M": "bwd_block_m", "BWD_BLOCK_N": "bwd_block_n", "bwd_warps": "bwd_warps",
    "bwd_stages": "bwd_stages", "dq_atomic": "dq_atomic",
    "DQ_BLOCK_M": "dq_block_m", "DQ_BLOCK_N": "dq_block_n", "dq_stages": "dq_stages",
}
FWD_PARAMS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "tma", "split_kv")


@dataclass(frozen=True)
class Config:
    """One configuration. Forward: BLOCK_M query rows x BLOCK_N keys per step, warps, pipeline stages, TMA
    descriptors, and split_kv > 0 for the split-KV (decode) kernel with that many key slices. Backward: the
    dK/dV program keeps BWD_BLOCK_N keys and streams BWD_BLOCK_M query rows, with bwd_warps and bwd_stages;
    the dQ program keeps DQ_BLOCK_M rows and streams DQ_BLOCK_N keys (bwd_warps, dq_stages); dq_atomic adds dQ
    with fp32 atomics in the dK/dV pass instead of the separate dQ pass."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    tma: bool = False
    split_kv: int = 0
    bwd_block_m: int = 64
    bwd_block_n: int = 128
    bwd_warps: int = 8
    bwd_stages: int = 2
    dq_atomic: bool = False
    dq_block_m: int = 128
    dq_block_n: int = 64
    dq_stages: int = 2

    def params(self, keys=tuple(PARAM_FIELDS)) -> dict[str, Any]:
        """The named parameters (all, or those in keys), as param_space and tune labels spell them."""
        return {k: getattr(self, PARAM_FIELDS[k]) for k in keys}

    def with_params(self, params: dict[str, Any]) -> "Config":
        unknown = sorted(set(params) - set(PARAM_FIELDS))
        if unknown:
            raise UserError(f"triton-fa: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PARAM_FIELDS)}")
        cfg = dataclasses.replace(self, **{PARAM_FIELDS[k]: v for k, v in params.items()})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name in ("block_m", "block_n", "bwd_block_m", "bwd_block_n", "dq_block_m", "dq_block_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 16 or value & (value - 1):
                raise UserError(f"triton-fa: {name} must be a power of two >= 16, got {value!r}")
        for name in ("num_warps", "bwd_warps"):
            value = getattr(self, name)
            if value not in (1, 2, 4, 8, 16):
                raise UserError(f"triton-fa: {name} must be 1, 2, 4, 8 or 16, got {value!r}")
        for name in ("num_stages", "bwd_stages", "dq_stages"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 8:
                raise UserError(f"triton-fa: {name} must be 1..8, got {value!r}")
        if not isinstance(self.split_kv, int) or self.split_kv < 0:
            raise UserError(f"triton-fa: split_kv must be a non-negative integer, got {self.split_kv!r}")


# ---------------------------------------------------------------------------------------------
# Resource estimates (NVIDIA Hopper, triton 3.6), used to prune configurations before compiling
# ---------------------------------------------------------------------------------------------

SMEM_LIMIT = 227 * 1024   # bytes of shared memory one block may use on sm_90 (H100, H200)
SMEM_SLACK = 1024         # barriers and TMA bookkeeping
REG_VALUES = 160          # fp32 values held per thread beyond which spills appear (see fwd_values)
BWD_REG_VALUES = 160      # the same for the dK/dV kernel (dkdv_values), a guard only: see BWD_ORDER


def fwd_smem(d: int, elem: int, block_m: int, block_n: int, stages: int) -> int:
    """Forward shared memory: the Q tile once, and a K and a V tile per pipeline stage:
    elem * d * (BLOCK_M + 2 * stages * BLOCK_N), plus SMEM_SLACK. Triton 3.6 allocates exactly the first term
    for the pointer kernel on sm_90 (compiled ahead of time for 84 configurations, D 64-256); TMA adds 64-1024
    bytes of barriers."""
    return elem * d * (block_m + 2 * stages * block_n) + SMEM_SLACK


def dkdv_smem(d: int, elem: int, block_m: int, block_n: int, stages: int, dq_atomic: bool) -> int:
    """dK/dV: K and V of the program's BLOCK_N keys, a Q and a dO tile and the rows' lse and delta per
    stage; with dq_atomic also K again (in the layout dQ = dS K reads it) and the fp32 (BLOCK_M, d) dQ tile
    staged for the atomics. An upper bound, within 1.5 KB, of what triton 3.6 allocated on sm_90 over 144
    compiles (d 64 and 128)."""
    out = elem * d * 2 * (block_n + stages * block_m) + 8 * stages * block_m + SMEM_SLACK
    return out + (elem * block_n * d + 4 * block_m * d if dq_atomic else 0)


def dq_smem(d: int, elem: int, block_m: int, block_n: int, stages: int) -> int:
    """dQ: Q and dO of the program's rows, and a K and a V tile per stage (as the forward, with dO added)."""
    return elem * d * 2 * (block_m + stages * block_n) + SMEM_SLACK


def fwd_values(d: int, block_m: int, block_n: int, warps: int) -> float:
    """fp32 values per thread the forward keeps in registers: the output accumulator and the score tile,
    (BLOCK_M * d + BLOCK_M * BLOCK_N) / (32 * warps). Compiled on sm_90 (triton 3.6), 96-160 used 190-255 of
    the 255 registers, mostly without spilling (a few bytes at 128-160 in some pointer kernels); 192 and more
    spilled hundreds of bytes (BLOCK_M 128 with 4 warps at d 128, d 256 with 4 warps)."""
    return (block_m * d + block_m * block_n) / (32 * warps)


def dkdv_values(d: int, block_m: int, block_n: int, warps: int) -> float:
    """The dK/dV kernel's: two (BLOCK_N, d) accumulators and two (BLOCK_N, BLOCK_M) tiles (scores, dP). Above
    160 every compile spilled; at or below it, spilling depended on the tile shape and the pipeline depth
    more than on this count (at d 64, 64 x 64 with 2 stages spilled while 32 x 128 did not), so the candidate
    lists are ordered from compiles rather than from this estimate."""
    return (2 * block_n * d + 2 * block_n * block_m) / (32 * warps)


def fits(cfg: Config, d: int, elem: int, direction: str) -> bool:
    """Within the shared-memory limit and the register guideline, for the kernels this pass runs."""
    if direction != "bwd":
        if cfg.split_kv == 0 and fwd_values(d, cfg.block_m, cfg.block_n, cfg.num_warps) > REG_VALUES:
            return False
        if fwd_smem(d, elem, cfg.block_m, cfg.block_n, cfg.num_stages) > SMEM_LIMIT:
            return False
    if direction != "fwd":
        if dkdv_values(d, cfg.bwd_block_m, cfg.bwd_block_n, cfg.bwd_warps) > BWD_REG_VALUES:
            return False
        if dkdv_smem(d, elem, cfg.bwd_block_m, cfg.bwd_block_n, cfg.bwd_stages, cfg.dq_atomic) > SMEM_LIMIT:
            return False
        if not cfg.dq_atomic and (dq_smem(d, elem, cfg.dq_block_m, cfg.dq_block_n, cfg.dq_stages) > SMEM_LIMIT
                                  or fwd_values(d, cfg.dq_block_m, cfg.dq_block_n, cfg.bwd_warps) > REG_VALUES):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Defaults and the declared space
# ---------------------------------------------------------------------------------------------

HOPPER_SMS = 132
MAX_CONFIGS = 12


def is_decode(group: int, q_len: int, kv_len: int) -> bool:
    """Few query rows per KV head over many keys: the split-KV kernel's case (GROUP * q_len rows <= 64)."""
    return group * q_len <= 64 and kv_len >= 256


def auto_splits(batch: int, kv_heads: int, kv_len: int, block_n: int, sms: int = HOPPER_SMS) -> int:
    """About two programs per multiprocessor, and at least two key blocks per split."""
    want = -(-2 * sms // max(1, batch * kv_heads))
    most = max(1, kv_len // (2 * block_n))
    return max(1, min(want, most, 128))


def default_config(workload, sms: int = HOPPER_SMS) -> Config:
    """A sensible Hopper configuration per head dim (the same for fp16 and bf16, causal or not): BLOCK_M 128
    with 8 warps (two warpgroups of 64 rows for wgmma); BLOCK_N and the stages as large as registers and shared
    memory allow; split-KV for decode. Every default compiled for sm_90 without spilling (d 32-256, ahead of time
    here; the tests recheck d 128)."""
    w = workload
    d = w.head_dim
    if d <= 32:
        cfg = Config(block_m=64, block_n=64, num_warps=4, num_stages=3, bwd_block_m=32, bwd_block_n=64,
                     bwd_warps=4, bwd_stages=2, dq_block_m=64, dq_block_n=64)
    elif d <= 64:
        cfg = Config(block_m=128, block_n=128, num_warps=8, num_stages=3, bwd_block_m=32, bwd_block_n=128,
                     bwd_warps=8, bwd_stages=2, dq_block_m=128, dq_block_n=64)
    elif d <= 128:
        cfg = Config(block_m=128, block_n=64, num_warps=8, num_stages=3, bwd_block_m=32, bwd_block_n=64,
                     bwd_warps=8, bwd_stages=2, dq_block_m=128, dq_block_n=64)
    else:
        cfg = Config(block_m=128, block_n=64, num_warps=8, num_stages=2, bwd_block_m=16, bwd_block_n=32,
                     bwd_warps=8, bwd_stages=2, dq_block_m=64, dq_block_n=32, dq_stages=2)
    if 64 < d <= 128 and workload_mask(w).startswith("document:") and getattr(w, "score_mod", ""):
        # the dK/dV kernel with a document mask and a score modifier spilled 40-56 bytes at BWD_BLOCK_M 32 (sm_90,
        # triton 3.6), none at 16
        cfg = dataclasses.replace(cfg, bwd_block_m=16)
    group = w.q_heads // w.kv_heads
    if is_decode(group, w.q_len, w.kv_len):
        bn = 64 if d > 128 else 128
        cfg = dataclasses.replace(cfg, block_n=bn, num_warps=4, num_stages=3,
                                  split_kv=auto_splits(w.batch, w.kv_heads, w.kv_len, bn, sms))
    return cfg


# Not in the space: triton's warp specialisation (tl.range(..., warp_specialize=True)). Compiled for sm_90 with
# triton 3.6, the forward loop gave the same PTX with 8 warps as without it (no setmaxnreg, the same barriers), and
# with 4 warps the NVGPUWarpSpecialization pass failed; TMA descriptors are in (`tma`).
# Forward configurations to race first, per head dim (BLOCK_M, BLOCK_N, warps, stages, tma), in order: chosen from
# sm_90 compiles (triton 3.6: registers, spills, wgmma) and FA2's tile shapes; the race decides among them. The
# leading shapes come with the pointer kernel and with TMA descriptors.
FWD_ORDER = {
    64: [(128, 128, 8, 3, False), (128, 128, 8, 3, True), (128, 64, 8, 3, False), (128, 64, 8, 4, True),
         (128, 128, 8, 2, False), (64, 64, 4, 3, False), (128, 64, 4, 3, False), (64, 128, 4, 3, False),
         (128, 32, 8, 4, False), (128, 64, 8, 2, True), (64, 64, 4, 4, True), (128, 128, 8, 4, True)],
    128: [(128, 64, 8, 3, False), (128, 64, 8, 3, True), (128, 128, 8, 2, False), (128, 128, 8, 2, True),
          (128, 64, 8, 4, False), (128, 128, 8, 3, True), (128, 32, 8, 4, False), (64, 64, 4, 3, False),
          (64, 128, 4, 2, True), (128, 64, 8, 2, False), (64, 64, 4, 4, True), (128, 32, 8, 3, True)],
}


def _fwd_candidates(w, base: Config, sms: int) -> list[Config]:
    d = w.head_dim
    group = w.q_heads // w.kv_heads
    out: list[Config] = []
    if is_decode(group, w.q_len, w.kv_len):
        auto = auto_splits(w.batch, w.kv_heads, w.kv_len, 64, sms)
        for splits in dict.fromkeys((max(1, auto // 2), auto, auto * 2)):
            for bn, stages in ((64, 3), (128, 3), (64, 4)):
                out.append(dataclasses.replace(base, split_kv=splits, block_n=bn, num_warps=4, num_stages=stages))
        out.append(dataclasses.replace(base, split_kv=0, block_m=16, block_n=64, num_warps=4, num_stages=3))
        return out
    for bm, bn, warps, stages, tma in FWD_ORDER.get(d, ()):
        out.append(dataclasses.replace(base, block_m=bm, block_n=bn, num_warps=warps, num_stages=stages, tma=tma,
                                       split_kv=0))
    # Then everything else, most promising first: BLOCK_M 128 with 8 warps, BLOCK_N near 128 * 64 / d, deeper
    # pipelines, the pointer kernel before TMA at equal shape.
    target_n = max(32, min(128, 128 * 64 // d))
    rest = [dataclasses.replace(base, block_m=bm, block_n=bn, num_warps=warps, num_stages=stages, tma=tma, split_kv=0)
            for bm, bn, warps in ((128, 64, 8), (128, 128, 8), (128, 32, 8), (64, 64, 4), (64, 128, 4), (64, 32, 4),
                                  (64, 64, 8), (128, 64, 4))
            for stages in (2, 3, 4) for tma in (False, True)]
    rest.sort(key=lambda c: (c.block_m != 128 or c.num_warps != 8, abs(c.block_n - target_n), -c.num_stages, c.tma))
    return out + rest


# Backward configurations to race, per head dim (BWD_BLOCK_M, BWD_BLOCK_N, warps, stages, dq_atomic), in order:
# each compiled for sm_90 (triton 3.6, causal, bf16) without spilling; the dK/dV kernel holds two accumulators,
# and larger tiles or deeper pipelines than these spilled (64 x 128 at d 128 spilled at every depth).
BWD_ORDER = {
    64: [(32, 128, 8, 2, False), (16, 128, 8, 2, False), (32, 64, 8, 2, False), (64, 128, 8, 1, False),
         (16, 128, 8, 3, False), (32, 128, 8, 2, True), (16, 64, 8, 3, False), (64, 64, 8, 1, False),
         (16, 128, 8, 2, True), (32, 128, 8, 1, False)],
    128: [(32, 64, 8, 2, False), (16, 128, 8, 2, False), (16, 64, 8, 2, False), (32, 128, 8, 1, False),
          (16, 64, 8, 3, False), (64, 64, 8, 1, False), (16, 128, 8, 2, True), (16, 64, 8, 2, True),
          (16, 128, 8, 1, False), (32, 64, 8, 1, False)],
}


def _bwd_candidates(w, base: Config) -> list[Config]:
    order = BWD_ORDER.get(w.head_dim) or [(bm, bn, 8, st, False) for bn in (64, 32) for bm in (32, 16)
                                           for st in (2, 1)]
    return [dataclasses.replace(base, bwd_block_m=bm, bwd_block_n=bn, bwd_warps=warps, bwd_stages=stages,
                                dq_atomic=atomic) for bm, bn, warps, stages, atomic in order]


def param_space(workload, sms: int = HOPPER_SMS, limit: int = MAX_CONFIGS) -> list[dict[str, Any]]:
    """The configurations attnbench tune races for this workload, at most `limit`, the default first; each
    within the shared-memory limit and the register guideline (fits). Forward passes vary the forward kernel;
    bwd and fwd+bwd passes vary the backward kernels with the forward at its default."""
    w = workload
    elem = 2
    base = default_config(w, sms)
    if w.direction == "fwd":
        keys = FWD_PARAMS
        cands = _fwd_candidates(w, base, sms)
    else:
        keys = ("BWD_BLOCK_M", "BWD_BLOCK_N", "bwd_warps", "bwd_stages", "dq_atomic")
        cands = _bwd_candidates(w, base)
    out: list[dict[str, Any]] = []
    for cfg in [base] + cands:
        params = cfg.params(keys)
        if params in out or not fits(cfg, w.head_dim, elem, w.direction):
            continue
        out.append(params)
        if len(out) >= limit:
            break
    return out
