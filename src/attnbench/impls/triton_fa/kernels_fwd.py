"""triton-fa's forward kernels: the FA2 row-block kernel, a split-KV (flash-decoding) kernel and its combine."""

import triton
import triton.language as tl

# Whether triton.jit chose the interpreter when this module was imported.
INTERPRETED = bool(triton.knobs.runtime.interpret)

# Scores and the log-sum-exp live in base 2: qk_scale = sm_scale * log2(e), so exp2 replaces exp.
# A query row i sees key j when (not CAUSAL or j <= i + SHIFT) and (not HAS_WINDOW or j >= i + SHIFT - WINDOW)
# and (not HAS_DOC or j >= START[i]) and j < SK: SHIFT = 0 is top-left causal, SHIFT = SK - SQ bottom-right
# (config.mask_spec). HAS_DOC (packed documents, causal within each) reads DOC, int32 [START; END]: the first
# token of each token's document, then one past its last (ops.doc_bounds); without it DOC is not read.
# MOD applies a score modifier (spec/masks.py) before the mask: 1 soft-capping, 2 ALiBi (modified()).
# Every row's lowest visible key (window or document) is non-decreasing in the row, and every key's highest
# reading row too, which is what lets whole key (row) blocks be skipped or taken without the mask.


@triton.jit
def mma(a, b, acc, UPCAST: tl.constexpr):
    """tl.dot; UPCAST (interpreter, bf16 only): in fp32, since the interpreter's bf16 dot multiplies raw bits.
    bf16 -> fp32 is exact, so the products are the same."""
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        out = tl.dot(a, b, acc)
    return out


@triton.jit
def key_blocks(m0, SK, SHIFT, LO_FIRST, LO_LAST, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_LO: tl.constexpr):
    """Key range of query rows m0..m0+BLOCK_M-1 as lo <= mid_lo <= mid_hi <= hi: every row sees every key of
    [mid_lo, mid_hi) (no mask needed; whole blocks inside SK); [lo, mid_lo) and [mid_hi, hi) need the mask;
    keys outside [lo, hi) are seen by no row. HAS_LO: rows have a lowest visible key (window, document),
    LO_FIRST that of the first row and LO_LAST that of the last. Divisions only of non-negative values (C and
    numpy differ)."""
    hi = SK
    mid_hi = (SK // BLOCK_N) * BLOCK_N
    lo = 0
    mid_lo = 0
    if CAUSAL:
        hi = tl.minimum(hi, tl.maximum(m0 + BLOCK_M + SHIFT, 0))
        mid_hi = tl.minimum(mid_hi, (tl.maximum(m0 + SHIFT + 1, 0) // BLOCK_N) * BLOCK_N)
    if HAS_LO:
        lo = (tl.maximum(LO_FIRST, 0) // BLOCK_N) * BLOCK_N
        mid_lo = tl.cdiv(tl.maximum(LO_LAST, 0), BLOCK_N) * BLOCK_N
    lo = tl.minimum(lo, hi)
    mid_lo = tl.minimum(tl.maximum(mid_lo, lo), hi)
    mid_hi = tl.minimum(tl.maximum(mid_hi, mid_lo), hi)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def row_bounds(DOC, m0, rows, SQ, SHIFT, WINDOW, BLOCK_M: tl.constexpr, HAS_WINDOW: tl.constexpr,
               HAS_DOC: tl.constexpr):
    """(each row's lowest visible key, where a document mask needs it; that of the first and of the last row of
    the block) for key_blocks and visible."""
    row_lo = rows
    lo_first = 0
    lo_last = 0
    if HAS_WINDOW:
        lo_first = m0 + SHIFT - WINDOW
        lo_last = m0 + BLOCK_M - 1 + SHIFT - WINDOW
    if HAS_DOC:
        row_lo = tl.load(DOC + tl.minimum(rows, SQ - 1))
        lo_first = tl.load(DOC + m0)
        lo_last = tl.load(DOC + tl.minimum(m0 + BLOCK_M - 1, SQ - 1))
    return row_lo, lo_first, lo_last


@triton.jit
def visible(rows, cols, row_lo, SK, SHIFT, WINDOW, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
            HAS_DOC: tl.constexpr):
    """The mask of one tile: rows (queries) on axis 0, cols (keys) on axis 1; row_lo is each row's first
    visible key under a document mask (read only with HAS_DOC)."""
    keep = cols[None, :] < SK
    if CAUSAL:
        keep = keep & (cols[None, :] <= rows[:, None] + SHIFT)
    if HAS_WINDOW:
        keep = keep & (cols[None, :] >= rows[:, None] + SHIFT - WINDOW)
    if HAS_DOC:
        keep = keep & (cols[None, :] >= row_lo[:, None])
    return keep


@triton.jit
def modified(s, qpos, kpos, slope, SHIFT, qk_scale, SC_IN, SC_OUT, MOD: tl.constexpr):
    """Base-2 scores from raw q.k under a score modifier, and d(modified x)/dx for the backward (x the scaled
    score). MOD 1, soft-capping: C tanh(x / C), tanh(y) = 1 - 2 / (exp(2y) + 1) with SC_IN = 2 log2(e) scale / C
    and SC_OUT = C log2(e); its derivative 1 - tanh^2. MOD 2, ALiBi: x + slope (key position - query position),
    the query at qpos + SHIFT, slope already times log2(e); derivative 1. qpos and kpos broadcast against s."""
    out = s * qk_scale
    grad = 1.0
    if MOD == 1:
        th = 1.0 - 2.0 / (tl.exp2(s * SC_IN) + 1.0)
        out = th * SC_OUT
        grad = 1.0 - th * th
    if MOD == 2:
        out = out + slope * (kpos - qpos - SHIFT).to(tl.float32)
    return out, grad


@triton.jit
def alibi_slope(head, HQ, MOD: tl.constexpr):
    """ALiBi's slope of query head(s) `head`, 2^(-8 (h + 1) / HQ), times log2(e) (scores are in base 2); 0 unless
    MOD is 2."""
    slope = 0.0
    if MOD == 2:
        slope = tl.exp2((head + 1).to(tl.float32) * (-8.0 / HQ)) * 1.4426950408889634
    return slope


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K, V, k_desc, v_desc, skn, svn, TABLE, sp, rows, row_lo, slope, offs_n, offs_d,
               lo, hi, SK, SHIFT, WINDOW, qk_scale, SC_IN, SC_OUT, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, MOD: tl.constexpr, BLOCK_N: tl.constexpr,
               USE_TMA: tl.constexpr, PAGED: tl.constexpr, PAGE: tl.constexpr, UPCAST: tl.constexpr):
    """Online softmax over key blocks [lo, hi). Only MASKED ranges pay for the mask and the bounds checks.
    PAGED: key j is row j % PAGE of the pool's page TABLE[j // PAGE] (TABLE this sequence's row of the block
    table, sp the pool's page stride); V's pool is laid out as K's."""
    for start_n in tl.range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if PAGED:
            if MASKED:
                page = tl.load(TABLE + cols // PAGE, mask=cols < SK, other=0).to(tl.int64)
            else:
                page = tl.load(TABLE + cols // PAGE).to(tl.int64)
            krow = page * sp + (cols % PAGE) * skn
            if MASKED:
                k = tl.load(K + krow[:, None] + offs_d[None, :], mask=cols[:, None] < SK, other=0.0)
            else:
                k = tl.load(K + krow[:, None] + offs_d[None, :])
        elif USE_TMA:
            k = k_desc.load([start_n, 0])
        elif MASKED:
            k = tl.load(K + cols[:, None] * skn + offs_d[None, :], mask=cols[:, None] < SK, other=0.0)
        else:
            k = tl.load(K + cols[:, None] * skn + offs_d[None, :])
        s = mma(q, tl.trans(k), None, UPCAST)
        if MOD == 0:
            sc = qk_scale
        else:  # s in base 2 already
            s, _ = modified(s, rows[:, None], cols[None, :], slope, SHIFT, qk_scale, SC_IN, SC_OUT, MOD)
            sc = 1.0
        if MASKED:
            s = tl.where(visible(rows, cols, row_lo, SK, SHIFT, WINDOW, CAUSAL, HAS_WINDOW, HAS_DOC), s,
                         float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * sc)
        if MASKED:  # a row that has seen no key yet keeps m = -inf; subtract 0 instead (exp2(-inf) = 0)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_use = m_new
        p = tl.exp2(s * sc - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if PAGED:
            if MASKED:
                v = tl.load(V + krow[:, None] + offs_d[None, :], mask=cols[:, None] < SK, other=0.0)
            else:
                v = tl.load(V + krow[:, None] + offs_d[None, :])
        elif USE_TMA:
            v = v_desc.load([start_n, 0])
        elif MASKED:
            v = tl.load(V + cols[:, None] * svn + offs_d[None, :], mask=cols[:, None] < SK, other=0.0)
        else:
            v = tl.load(V + cols[:, None] * svn + offs_d[None, :])
        acc = mma(p.to(v.dtype), v, acc, UPCAST)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attn_fwd(Q, K, V, O, LSE, DOC, TABLE, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som, stp, sp,
             HQ, GROUP, SQ, SK, SHIFT, WINDOW, qk_scale, SC_IN, SC_OUT,
             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
             HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, MOD: tl.constexpr, USE_TMA: tl.constexpr,
             PAGED: tl.constexpr, PAGE: tl.constexpr, STORE_LSE: tl.constexpr, UPCAST: tl.constexpr):
    """One program: BLOCK_M query rows of one (batch, query head); grid (cdiv(SQ, BLOCK_M), B * HQ).
    The KV head is query head // GROUP (GQA/MQA without repeating K and V). PAGED: K and V are page pools
    under the block table TABLE (row stride stp, page stride sp; skb and svb 0)."""
    pid_m = tl.program_id(0)
    if CAUSAL:  # the row blocks with the most keys start first, so the short ones fill the tail
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // HQ).to(tl.int64)
    off_h = (pid_bh % HQ).to(tl.int64)
    off_hk = off_h // GROUP
    q_base = Q + off_b * sqb + off_h * sqh
    k_base = K + off_b * skb + off_hk * skh
    v_base = V + off_b * svb + off_hk * svh
    o_base = O + off_b * sob + off_h * soh
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    if USE_TMA:  # device-side descriptors, one per (batch, head) slice: TMA checks the bounds of that slice
        q_desc = tl.make_tensor_descriptor(q_base, shape=[SQ, HEAD_DIM], strides=[sqm, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
        k_desc = tl.make_tensor_descriptor(k_base, shape=[SK, HEAD_DIM], strides=[skn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        v_desc = tl.make_tensor_descriptor(v_base, shape=[SK, HEAD_DIM], strides=[svn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        q = q_desc.load([m0, 0])
    else:
        k_desc = k_base
        v_desc = v_base
        q = tl.load(q_base + rows[:, None] * sqm + offs_d[None, :], mask=rows[:, None] < SQ, other=0.0)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_lo, lo_first, lo_last = row_bounds(DOC, m0, rows, SQ, SHIFT, WINDOW, BLOCK_M, HAS_WINDOW, HAS_DOC)
    lo, mid_lo, mid_hi, hi = key_blocks(m0, SK, SHIFT, lo_first, lo_last, BLOCK_M, BLOCK_N, CAUSAL,
                                        HAS_WINDOW or HAS_DOC)
    slope = alibi_slope(off_h, HQ, MOD)
    table = TABLE + off_b * stp
    if HAS_WINDOW or HAS_DOC:
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, skn, svn, table, sp, rows,
                                   row_lo, slope, offs_n, offs_d, lo, mid_lo, SK, SHIFT, WINDOW, qk_scale, SC_IN,
                                   SC_OUT, True, CAUSAL, HAS_WINDOW, HAS_DOC, MOD, BLOCK_N, USE_TMA, PAGED, PAGE,
                                   UPCAST)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, skn, svn, table, sp, rows,
                               row_lo, slope, offs_n, offs_d, mid_lo, mid_hi, SK, SHIFT, WINDOW, qk_scale, SC_IN,
                               SC_OUT, False, CAUSAL, HAS_WINDOW, HAS_DOC, MOD, BLOCK_N, USE_TMA, PAGED, PAGE,
                               UPCAST)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, skn, svn, table, sp, rows,
                               row_lo, slope, offs_n, offs_d, mid_hi, hi, SK, SHIFT, WINDOW, qk_scale, SC_IN,
                               SC_OUT, True, CAUSAL, HAS_WINDOW, HAS_DOC, MOD, BLOCK_N, USE_TMA, PAGED, PAGE,
                               UPCAST)
    # A row that saw no key (bottom-right masks with SQ > SK) gets 0 and lse = +inf, so its backward is 0.
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = (acc * (1.0 / l_safe)[:, None]).to(O.dtype.element_ty)
    if STORE_LSE:
        lse = tl.where(empty, float("inf"), m_i + tl.log2(l_safe))
        tl.store(LSE + pid_bh.to(tl.int64) * SQ + rows, lse, mask=rows < SQ)
    if USE_TMA:
        o_desc = tl.make_tensor_descriptor(o_base, shape=[SQ, HEAD_DIM], strides=[som, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
        o_desc.store([m0, 0], out)
    else:
        tl.store(o_base + rows[:, None] * som + offs_d[None, :], out, mask=rows[:, None] < SQ)


@triton.jit
def attn_fwd_split(Q, K, V, OP, LP, TABLE, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, stp, sp,
                   HQ, GROUP, SQ, SK, SHIFT, WINDOW, qk_scale, SC_IN, SC_OUT, SPLIT_LEN, NUM_SPLITS,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                   HAS_WINDOW: tl.constexpr, MOD: tl.constexpr, PAGED: tl.constexpr, PAGE: tl.constexpr,
                   UPCAST: tl.constexpr):
    """Split-KV forward for few query rows (decode): one program takes every query row of one KV head's group
    (GROUP heads x SQ positions packed into BLOCK_M rows) over one SPLIT_LEN slice of the keys, and writes that
    slice's normalised output and its lse in fp32; attn_combine merges the slices. Grid (NUM_SPLITS, B * HKV)."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    hkv = HQ // GROUP
    off_b = (pid_bh // hkv).to(tl.int64)
    off_hk = (pid_bh % hkv).to(tl.int64)
    r = tl.arange(0, BLOCK_M)
    head = off_hk * GROUP + r // SQ
    pos = r % SQ
    valid = r < GROUP * SQ
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + off_b * sqb + head[:, None] * sqh + pos[:, None] * sqm + offs_d[None, :],
                mask=valid[:, None], other=0.0)
    k_base = K + off_b * skb + off_hk * skh
    v_base = V + off_b * svb + off_hk * svh
    lo = pid_s * SPLIT_LEN
    hi = tl.minimum(lo + SPLIT_LEN, SK)
    if CAUSAL:  # the last position sees up to SQ - 1 + SHIFT
        hi = tl.minimum(hi, tl.maximum(SQ + SHIFT, 0))
    if HAS_WINDOW:  # the first position sees from SHIFT - WINDOW
        lo = tl.maximum(lo, (tl.maximum(SHIFT - WINDOW, 0) // BLOCK_N) * BLOCK_N)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    # `hi` stands for SK in the masks: keys past this slice belong to the next program.
    slope = alibi_slope(head, HQ, MOD)  # a head per row: rows pack the group's heads
    if MOD == 2:
        slope = slope[:, None]
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_base, v_base, skn, svn, TABLE + off_b * stp, sp,
                               pos, pos, slope, offs_n, offs_d, lo, hi, hi, SHIFT, WINDOW, qk_scale, SC_IN, SC_OUT,
                               True, CAUSAL, HAS_WINDOW, False, MOD, BLOCK_N, False, PAGED, PAGE, UPCAST)
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    bh = off_b * HQ + head
    row = (bh * NUM_SPLITS + pid_s) * SQ + pos
    tl.store(LP + row, tl.where(empty, float("-inf"), m_i + tl.log2(l_safe)), mask=valid)
    tl.store(OP + row[:, None] * HEAD_DIM + offs_d[None, :], acc * (1.0 / l_safe)[:, None], mask=valid[:, None])


@triton.jit
def attn_combine(OP, LP, O, LSE, sob, soh, som, HQ, SQ, NUM_SPLITS,
                 HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr, STORE_LSE: tl.constexpr):
    """Merge the split-KV partials of one query row (grid B * HQ * SQ): weights exp2(lse_s - max lse)."""
    pid = tl.program_id(0)
    bh = (pid // SQ).to(tl.int64)
    pos = pid % SQ
    s = tl.arange(0, SPLITS)
    offs_d = tl.arange(0, HEAD_DIM)
    valid = s < NUM_SPLITS
    row = (bh * NUM_SPLITS + s) * SQ + pos
    lse = tl.load(LP + row, mask=valid, other=float("-inf"))
    m = tl.max(lse, 0)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m_use)
    total = tl.sum(w, 0)
    part = tl.load(OP + row[:, None] * HEAD_DIM + offs_d[None, :], mask=valid[:, None], other=0.0)
    out = tl.sum(part * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    off_b = bh // HQ
    off_h = bh % HQ
    tl.store(O + off_b * sob + off_h * soh + pos * som + offs_d, out.to(O.dtype.element_ty))
    if STORE_LSE:
        tl.store(LSE + bh * SQ + pos, tl.where(total == 0.0, float("inf"), m_use + tl.log2(total)))
