"""triton-fa's backward kernels (FA2): delta = rowsum(dO * O), dK/dV over key blocks, dQ over query blocks."""

import triton
import triton.language as tl

from .kernels_fwd import alibi_slope, key_blocks, mma, modified, row_bounds, visible

INTERPRETED = bool(triton.knobs.runtime.interpret)


@triton.jit
def query_blocks(n0, SQ, SK, SHIFT, HI_FIRST, HI_LAST, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr, HAS_HI: tl.constexpr):
    """Query range of keys n0..n0+BLOCK_N-1, as key_blocks' is of rows: rows of [mid_lo, mid_hi) see every key
    of the block; [lo, mid_lo) and [mid_hi, hi) need the mask; rows outside [lo, hi) see none of it. HAS_HI:
    keys have a row past the last that reads them (window, document), HI_FIRST that of the first key and
    HI_LAST that of the last."""
    lo = 0
    hi = SQ
    mid_lo = 0
    mid_hi = (SQ // BLOCK_M) * BLOCK_M
    if CAUSAL:  # row i sees key j when i >= j - SHIFT
        lo = (tl.maximum(n0 - SHIFT, 0) // BLOCK_M) * BLOCK_M
        mid_lo = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - SHIFT, 0), BLOCK_M) * BLOCK_M
    if HAS_HI:  # and i < HI(j)
        hi = tl.minimum(hi, tl.maximum(HI_LAST, 0))
        mid_hi = tl.minimum(mid_hi, (tl.maximum(HI_FIRST, 0) // BLOCK_M) * BLOCK_M)
    mid_lo = tl.where(n0 + BLOCK_N > SK, hi, mid_lo)  # the last key block is partly past SK: mask all of it
    lo = tl.minimum(lo, hi)
    mid_lo = tl.minimum(tl.maximum(mid_lo, lo), hi)
    mid_hi = tl.minimum(tl.maximum(mid_hi, mid_lo), hi)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def bwd_preprocess(O, DO, DELTA, sob, soh, som, sdb, sdh, sdm, HQ, SQ,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta[row] = sum_d dO[row, d] * O[row, d] in fp32; grid (cdiv(SQ, BLOCK_M), B * HQ)."""
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // HQ).to(tl.int64)
    off_h = (pid_bh % HQ).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask = rows[:, None] < SQ
    o = tl.load(O + off_b * sob + off_h * soh + rows[:, None] * som + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + off_b * sdb + off_h * sdh + rows[:, None] * sdm + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * SQ + rows, delta, mask=rows < SQ)


@triton.jit
def _kv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, DOC, slope, sqm, sdm, cols, offs_m, offs_d, lo, hi,
              SQ, SK, SHIFT, WINDOW, qk_scale, sm_scale, SC_IN, SC_OUT, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, MOD: tl.constexpr, BLOCK_M: tl.constexpr,
              HEAD_DIM: tl.constexpr, DQ_ATOMIC: tl.constexpr, UPCAST: tl.constexpr):
    """dK, dV of one key block over query blocks [lo, hi), in the transposed form (keys on axis 0):
    P^T = exp2(K Q^T * qk_scale - lse), dV += P^T dO, dS^T = P^T * (V dO^T - delta), dK += dS^T Q.
    DQ_ATOMIC also adds dS K * sm_scale into the fp32 dQ buffer."""
    for start_m in tl.range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        if MASKED:
            rmask = rows < SQ
            q = tl.load(Q + rows[:, None] * sqm + offs_d[None, :], mask=rmask[:, None], other=0.0)
            lse = tl.load(LSE + rows, mask=rmask, other=float("inf"))
        else:
            q = tl.load(Q + rows[:, None] * sqm + offs_d[None, :])
            lse = tl.load(LSE + rows)
        if MOD == 0:
            p_t = tl.exp2(mma(k, tl.trans(q), None, UPCAST) * qk_scale - lse[None, :])
        else:
            s_t, dmod_t = modified(mma(k, tl.trans(q), None, UPCAST), rows[None, :], cols[:, None], slope, SHIFT,
                                   qk_scale, SC_IN, SC_OUT, MOD)
            p_t = tl.exp2(s_t - lse[None, :])
        if MASKED:  # visible() takes queries on axis 0: transpose the tile's mask
            row_lo = rows
            if HAS_DOC:
                row_lo = tl.load(DOC + rows, mask=rmask, other=0)
            keep = visible(rows, cols, row_lo, SK, SHIFT, WINDOW, CAUSAL, HAS_WINDOW, HAS_DOC)
            p_t = tl.where(tl.trans(keep), p_t, 0.0)
            do = tl.load(DO + rows[:, None] * sdm + offs_d[None, :], mask=rmask[:, None], other=0.0)
            delta = tl.load(DELTA + rows, mask=rmask, other=0.0)
        else:
            do = tl.load(DO + rows[:, None] * sdm + offs_d[None, :])
            delta = tl.load(DELTA + rows)
        dv = mma(p_t.to(do.dtype), do, dv, UPCAST)
        dp_t = mma(v, tl.trans(do), None, UPCAST)
        if MOD == 1:  # through the soft cap
            ds_t = (p_t * (dp_t - delta[None, :]) * dmod_t).to(q.dtype)
        else:
            ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
        dk = mma(ds_t, q, dk, UPCAST)
        if DQ_ATOMIC:
            dq = mma(tl.trans(ds_t), k, None, UPCAST) * sm_scale
            dq_ptrs = DQ + rows[:, None] * HEAD_DIM + offs_d[None, :]
            if MASKED:
                tl.atomic_add(dq_ptrs, dq, mask=rows[:, None] < SQ, sem="relaxed")
            else:
                tl.atomic_add(dq_ptrs, dq, sem="relaxed")
    return dk, dv


@triton.jit
def bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, DQ, DOC,
             sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdb, sdh, sdm, skgb, skgh, skgn, svgb, svgh, svgn,
             HQ, GROUP, SQ, SK, SHIFT, WINDOW, qk_scale, sm_scale, SC_IN, SC_OUT,
             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
             HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, MOD: tl.constexpr, DQ_ATOMIC: tl.constexpr,
             UPCAST: tl.constexpr):
    """One program: BLOCK_N keys of one (batch, KV head), summed over the GROUP query heads that read them, so
    GQA needs neither repeated K/V nor a reduction afterwards; grid (cdiv(SK, BLOCK_N), B * HKV)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    hkv = HQ // GROUP
    off_b = (pid_bh // hkv).to(tl.int64)
    off_hk = (pid_bh % hkv).to(tl.int64)
    n0 = pid_n * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    kmask = cols[:, None] < SK
    k = tl.load(K + off_b * skb + off_hk * skh + cols[:, None] * skn + offs_d[None, :], mask=kmask, other=0.0)
    v = tl.load(V + off_b * svb + off_hk * svh + cols[:, None] * svn + offs_d[None, :], mask=kmask, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    hi_first = 0
    hi_last = 0
    if HAS_WINDOW:  # key j is read by rows up to j + WINDOW - SHIFT
        hi_first = n0 + WINDOW - SHIFT + 1
        hi_last = n0 + BLOCK_N + WINDOW - SHIFT
    if HAS_DOC:  # ... and by rows up to the end of its document (SQ == SK)
        hi_first = tl.load(DOC + SQ + n0)
        hi_last = tl.load(DOC + SQ + tl.minimum(n0 + BLOCK_N - 1, SK - 1))
    lo, mid_lo, mid_hi, hi = query_blocks(n0, SQ, SK, SHIFT, hi_first, hi_last, BLOCK_M, BLOCK_N, CAUSAL,
                                          HAS_WINDOW or HAS_DOC)
    for g in range(0, GROUP):
        off_h = off_hk * GROUP + g
        bh = off_b * HQ + off_h
        q_base = Q + off_b * sqb + off_h * sqh
        do_base = DO + off_b * sdb + off_h * sdh
        lse_base = LSE + bh * SQ
        delta_base = DELTA + bh * SQ
        dq_base = DQ + bh * SQ * HEAD_DIM
        slope = alibi_slope(off_h, HQ, MOD)
        dk, dv = _kv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, DOC, slope, sqm, sdm,
                           cols, offs_m, offs_d, lo, mid_lo, SQ, SK, SHIFT, WINDOW, qk_scale, sm_scale, SC_IN, SC_OUT,
                           True, CAUSAL, HAS_WINDOW, HAS_DOC, MOD, BLOCK_M, HEAD_DIM, DQ_ATOMIC, UPCAST)
        dk, dv = _kv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, DOC, slope, sqm, sdm,
                           cols, offs_m, offs_d, mid_lo, mid_hi, SQ, SK, SHIFT, WINDOW, qk_scale, sm_scale, SC_IN,
                           SC_OUT, False, CAUSAL, HAS_WINDOW, HAS_DOC, MOD, BLOCK_M, HEAD_DIM, DQ_ATOMIC, UPCAST)
        dk, dv = _kv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, DOC, slope, sqm, sdm,
                           cols, offs_m, offs_d, mid_hi, hi, SQ, SK, SHIFT, WINDOW, qk_scale, sm_scale, SC_IN, SC_OUT,
                           True, CAUSAL, HAS_WINDOW, HAS_DOC, MOD, BLOCK_M, HEAD_DIM, DQ_ATOMIC, UPCAST)
    dk = dk * sm_scale
    tl.store(DK + off_b * skgb + off_hk * skgh + cols[:, None] * skgn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=kmask)
    tl.store(DV + off_b * svgb + off_hk * svgh + cols[:, None] * svgn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kmask)


@triton.jit
def _q_inner(dq, q, do, lse, delta, K, V, skn, svn, rows, row_lo, slope, offs_n, offs_d, lo, hi, SK, SHIFT, WINDOW,
             qk_scale, SC_IN, SC_OUT, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
             HAS_DOC: tl.constexpr, MOD: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr):
    """dQ of one query block over key blocks [lo, hi): P = exp2(Q K^T * qk_scale - lse), dS = P * (dO V^T - delta),
    dQ += dS K."""
    for start_n in tl.range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:
            kmask = cols[:, None] < SK
            k = tl.load(K + cols[:, None] * skn + offs_d[None, :], mask=kmask, other=0.0)
            v = tl.load(V + cols[:, None] * svn + offs_d[None, :], mask=kmask, other=0.0)
        else:
            k = tl.load(K + cols[:, None] * skn + offs_d[None, :])
            v = tl.load(V + cols[:, None] * svn + offs_d[None, :])
        if MOD == 0:
            p = tl.exp2(mma(q, tl.trans(k), None, UPCAST) * qk_scale - lse[:, None])
        else:
            s, dmod = modified(mma(q, tl.trans(k), None, UPCAST), rows[:, None], cols[None, :], slope, SHIFT,
                               qk_scale, SC_IN, SC_OUT, MOD)
            p = tl.exp2(s - lse[:, None])
        if MASKED:
            p = tl.where(visible(rows, cols, row_lo, SK, SHIFT, WINDOW, CAUSAL, HAS_WINDOW, HAS_DOC), p, 0.0)
        dp = mma(do, tl.trans(v), None, UPCAST)
        if MOD == 1:
            ds = (p * (dp - delta[:, None]) * dmod).to(k.dtype)
        else:
            ds = (p * (dp - delta[:, None])).to(k.dtype)
        dq = mma(ds, k, dq, UPCAST)
    return dq


@triton.jit
def bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, DOC, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdb, sdh, sdm,
           sqgb, sqgh, sqgm, HQ, GROUP, SQ, SK, SHIFT, WINDOW, qk_scale, sm_scale, SC_IN, SC_OUT,
           HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
           HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, MOD: tl.constexpr, UPCAST: tl.constexpr):
    """One program: dQ of BLOCK_M rows of one (batch, query head), no atomics; grid (cdiv(SQ, BLOCK_M), B * HQ)."""
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // HQ).to(tl.int64)
    off_h = (pid_bh % HQ).to(tl.int64)
    off_hk = off_h // GROUP
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    rmask = rows < SQ
    q = tl.load(Q + off_b * sqb + off_h * sqh + rows[:, None] * sqm + offs_d[None, :], mask=rmask[:, None], other=0.0)
    do = tl.load(DO + off_b * sdb + off_h * sdh + rows[:, None] * sdm + offs_d[None, :], mask=rmask[:, None],
                 other=0.0)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * SQ + rows, mask=rmask, other=float("inf"))
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * SQ + rows, mask=rmask, other=0.0)
    k_base = K + off_b * skb + off_hk * skh
    v_base = V + off_b * svb + off_hk * svh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    row_lo, lo_first, lo_last = row_bounds(DOC, m0, rows, SQ, SHIFT, WINDOW, BLOCK_M, HAS_WINDOW, HAS_DOC)
    lo, mid_lo, mid_hi, hi = key_blocks(m0, SK, SHIFT, lo_first, lo_last, BLOCK_M, BLOCK_N, CAUSAL,
                                        HAS_WINDOW or HAS_DOC)
    slope = alibi_slope(off_h, HQ, MOD)
    dq = _q_inner(dq, q, do, lse, delta, k_base, v_base, skn, svn, rows, row_lo, slope, offs_n, offs_d, lo, mid_lo,
                  SK, SHIFT, WINDOW, qk_scale, SC_IN, SC_OUT, True, CAUSAL, HAS_WINDOW, HAS_DOC, MOD, BLOCK_N, UPCAST)
    dq = _q_inner(dq, q, do, lse, delta, k_base, v_base, skn, svn, rows, row_lo, slope, offs_n, offs_d, mid_lo, mid_hi,
                  SK, SHIFT, WINDOW, qk_scale, SC_IN, SC_OUT, False, CAUSAL, HAS_WINDOW, HAS_DOC, MOD, BLOCK_N, UPCAST)
    dq = _q_inner(dq, q, do, lse, delta, k_base, v_base, skn, svn, rows, row_lo, slope, offs_n, offs_d, mid_hi, hi,
                  SK, SHIFT, WINDOW, qk_scale, SC_IN, SC_OUT, True, CAUSAL, HAS_WINDOW, HAS_DOC, MOD, BLOCK_N, UPCAST)
    dq = dq * sm_scale
    tl.store(DQ + off_b * sqgb + off_h * sqgh + rows[:, None] * sqgm + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=rmask[:, None])
