"""triton-fa: masks, parameters and resource estimates; forward and gradients in Triton's CPU interpreter against
float64 attention; the default configs compiled ahead of time for sm_90 (no GPU needed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnbench.errors import UserError
from attnbench.impls import registry
from attnbench.impls.reference import attention_math
from attnbench.impls.triton_fa import config as C
from attnbench.impls.triton_fa.impl import TritonFAImpl
from attnbench.measure.correctness import check, tolerance
from attnbench.spec import Workload, masks

triton = pytest.importorskip("triton", reason="triton is in the test extra; the impl's supports() says so without it")

IMPL = TritonFAImpl()
ROOT = Path(__file__).resolve().parents[2]
MARK = "TRITON_FA_CASES "

# Triton chooses interpreter or compiler when triton.language is first imported, so the interpreter cases run
# in one child process started with TRITON_INTERPRET=1 (this process keeps the compiler, for the sm_90 test).
CASES = {}


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


def _child_main() -> None:
    """In the child: run every case; print name -> {ok, error} as one JSON line."""
    assert IMPL.supports(W(), "cpu") is None, IMPL.supports(W(), "cpu")
    results = {}
    for name, fn in CASES.items():
        try:
            fn()
            results[name] = {"ok": True}
        except Exception as exc:  # an assertion or a kernel failure: reported by the parent's test
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(MARK + json.dumps(results), flush=True)


@pytest.fixture(scope="module")
def interpreted():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(ROOT)] + sys.path))
    code = "from tests.impls.test_triton_fa import _child_main; _child_main()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)), None)
    if line is None:
        pytest.fail(f"the interpreter child failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(line[len(MARK):])


def W(**kw):
    base = dict(batch=1, q_heads=2, kv_heads=2, q_len=40, kv_len=40, head_dim=32, dtype="fp16")
    base.update(kw)
    return Workload(**base)


# -- registration and supports() ---------------------------------------------------------------

def test_registered_and_cpu_reasons(monkeypatch):
    assert isinstance(registry()["triton-fa"], TritonFAImpl)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "needs a CUDA GPU, or Triton's CPU interpreter (TRITON_INTERPRET=1" in IMPL.supports(W(), "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # too late: this process imported triton without it
    assert IMPL.supports(W(), "cpu") == ("TRITON_INTERPRET=1 was set after triton was imported; set it before "
                                         "starting Python")
    assert IMPL.supports(W(dtype="fp32"), "cpu") == "triton-fa runs fp16 and bf16, not fp32"
    assert "head_dim in 16, 32, 64, 128, 256" in IMPL.supports(W(head_dim=48), "cpu")


def test_mask_and_other_fields_of_a_workload(monkeypatch):
    """The Workload's mask, score modifier and layout decide what triton-fa takes."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cases = {"window:64": None, "causal-br": None, "document:30+10": None}
    for mask, want in cases.items():
        w = W(mask=mask, q_len=40, kv_len=40 if mask.startswith("document") else 100)
        assert C.workload_mask(w) == w.mask
        why = IMPL.supports(w, "cpu")
        assert want in why if want else why.startswith("triton-fa needs a CUDA GPU")
    for mod in ("softcap:30", "alibi"):
        assert IMPL.supports(W(score_mod=mod), "cpu").startswith("triton-fa needs a CUDA GPU")
    paged = W(q_len=1, kv_len=64, mask="causal-br", layout="paged:16")
    assert IMPL.supports(paged, "cpu").startswith("triton-fa needs a CUDA GPU")


def test_row_offsets_that_would_wrap_int32_are_made_contiguous():
    """The kernels add a row's offset (rows * row stride) in int32: a heads-interleaved (BSHD) view with 2^31
    elements or more per batch element is copied to (batch, head, row, dim) order first; smaller views, and
    contiguous tensors, are passed as they are. Meta tensors: no memory is allocated."""
    import torch

    from attnbench.impls.triton_fa.ops import _last_dim_contiguous

    big = torch.empty(1, 300_000, 64, 128, device="meta").transpose(1, 2)   # (300000 - 1) * 8192 > 2^31
    small = torch.empty(1, 2_000, 64, 128, device="meta").transpose(1, 2)
    out = _last_dim_contiguous(big)
    assert out.stride() == (64 * 300_000 * 128, 300_000 * 128, 128, 1)
    assert _last_dim_contiguous(small) is small
    dense = torch.empty(1, 64, 300_000, 128, device="meta")
    assert _last_dim_contiguous(dense) is dense
    assert _last_dim_contiguous(dense.transpose(2, 3)).stride(-1) == 1   # head_dim strided: copied as before


def test_declares_what_it_computes():
    """Impl.mask_reason and readers of mask_kinds, score_mods and layouts see every kind triton-fa computes (they
    were the base class's full/causal, no modifier, dense), and supports() consults them first as Impl asks."""
    from attnbench.impls.reference import ReferenceImpl

    ref = ReferenceImpl()
    assert (IMPL.mask_kinds, IMPL.score_mods, set(IMPL.layouts)) == (ref.mask_kinds, ref.score_mods, set(ref.layouts))
    for w in (W(mask="window:0"), W(mask="document:rand:3"), W(q_len=8, mask="causal-br"), W(score_mod="softcap:5"),
              W(score_mod="alibi"), W(q_len=1, kv_len=64, layout="paged:16")):
        assert IMPL.mask_reason(w) is None, w


def test_without_triton_supports_says_so(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton now raises ImportError
    why = IMPL.supports(W(), "cpu")
    assert why.startswith("triton is not importable (ModuleNotFoundError") and "pip install triton" in why


# -- masks --------------------------------------------------------------------------------------

def test_mask_spec_maps_every_kind():
    assert C.mask_spec("full", 8, 12) == C.MaskSpec()
    assert C.mask_spec("causal", 8, 12) == C.MaskSpec(causal=True, shift=0)
    assert C.mask_spec("causal-br", 8, 12) == C.MaskSpec(causal=True, shift=4)
    assert C.mask_spec("window:5", 8, 12) == C.MaskSpec(causal=True, shift=4, window=5)
    assert C.mask_spec("document:3+5", 8, 8) == C.MaskSpec(causal=True, docs=(3, 5))
    assert C.mask_spec("document:rand:3", 40, 40).docs == masks.doc_lengths("document:rand:3", 40)
    with pytest.raises(UserError, match="sum to 7"):
        C.mask_spec("document:3+4", 8, 8)
    assert C.mask_spec("window:5", 8, 12, "softcap:30") == C.MaskSpec(causal=True, shift=4, window=5, softcap=30.0)
    assert C.mask_spec("full", 8, 8, "alibi") == C.MaskSpec(alibi=True)
    with pytest.raises(UserError, match="unknown score modifier"):
        C.mask_spec("full", 8, 8, "tanh")
    assert "non-negative integer" in C.mask_problem("window:-1")
    with pytest.raises(UserError, match="unknown mask kind 'diagonal'"):
        C.mask_spec("diagonal", 8, 8)
    assert C.workload_mask(W(causal=True)) == "causal" and C.workload_mask(W()) == "full"


def masked_reference(q, k, v, spec: C.MaskSpec):
    """float64 attention with an explicit boolean mask (rows that see no key give 0)."""
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    i = torch.arange(q.shape[2])[:, None]
    j = torch.arange(k.shape[2])[None, :]
    if spec.softcap is not None:
        s = spec.softcap * torch.tanh(s / spec.softcap)
    if spec.alibi:
        hq = q.shape[1]
        slopes = torch.tensor(masks.alibi_slopes(hq), dtype=s.dtype).view(1, hq, 1, 1)
        s = s + slopes * (j - (i + spec.shift))
    keep = torch.ones_like(i + j, dtype=torch.bool)
    if spec.causal:
        keep &= j <= i + spec.shift
    if spec.window is not None:
        keep &= j >= i + spec.shift - spec.window
    if spec.docs is not None:
        doc = torch.repeat_interleave(torch.arange(len(spec.docs)), torch.tensor(spec.docs))
        keep &= doc[:, None] == doc[None, :]
    p = torch.softmax(s.masked_fill(~keep, float("-inf")), -1).nan_to_num(0.0)
    return p @ v


def rel(a, b):
    return float((a.to(torch.float64) - b).norm() / b.norm())


# -- correctness in the interpreter ---------------------------------------------------------------

FORWARD = {
    "full": W(),                                                          # SQ, SK not multiples of the blocks
    "causal-bf16": W(causal=True, dtype="bf16"),                          # top-left causal, bf16
    "mqa-causal": W(q_heads=4, kv_heads=1, q_len=24, kv_len=56, causal=True),  # MQA, q_len < kv_len
    "gqa-long-q": W(q_heads=4, kv_heads=2, q_len=56, kv_len=24, head_dim=64),  # GQA, q_len > kv_len
    "decode": W(batch=2, q_heads=8, kv_heads=2, q_len=1, kv_len=300, causal=True),  # the split-KV kernel
    "decode-rows": W(batch=1, q_heads=8, kv_heads=2, q_len=1, kv_len=300, causal=True),  # row-block kernel
    "documents": W(batch=2, q_heads=4, kv_heads=2, q_len=70, kv_len=70, mask="document:rand:5"),  # packed, GQA
    "softcap": W(causal=True, score_mod="softcap:2"),  # a cap that bends most scores
    "alibi-window": W(q_heads=4, kv_heads=2, q_len=30, kv_len=50, mask="window:12", score_mod="alibi"),
    "alibi-decode-split": W(batch=2, q_heads=8, kv_heads=2, q_len=2, kv_len=300, mask="causal-br", score_mod="alibi"),
    # a paged cache: 16-token pages under a random block table, the last page part full
    "paged-decode-split": W(batch=2, q_heads=8, kv_heads=2, q_len=1, kv_len=300, mask="causal-br", layout="paged:16"),
    "paged-window-rows": W(batch=2, q_heads=4, kv_heads=2, q_len=20, kv_len=100, mask="window:30", layout="paged:16",
                           dtype="bf16"),
}


def _forward_case(name, w):
    @case(f"forward-{name}")
    def run():
        params = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1, "split_kv": 0}
        if name == "decode" or name.endswith("-split"):
            params = {"BLOCK_N": 32, "split_kv": 4}
        res = check(IMPL.build(w, "cpu", params), w, "cpu", seed=1)
        assert res.ok, res.reason
        assert res.rel_err < tolerance(w.dtype) / 4, res.rel_err


for _name, _w in FORWARD.items():
    _forward_case(_name, _w)


GRADIENTS = {
    "causal": W(causal=True, direction="fwd+bwd"),
    "gqa-bf16-causal": W(q_heads=4, kv_heads=2, q_len=24, kv_len=40, dtype="bf16", causal=True, direction="fwd+bwd"),
    "mqa-full-bwd": W(q_heads=2, kv_heads=1, q_len=36, kv_len=20, direction="bwd"),
    "documents-bf16": W(q_heads=4, kv_heads=2, q_len=60, kv_len=60, dtype="bf16", mask="document:9+30+1+20",
                        direction="fwd+bwd"),
    "softcap-gqa": W(q_heads=4, kv_heads=2, causal=True, score_mod="softcap:2", direction="fwd+bwd"),
    "alibi-documents-bf16": W(q_len=50, kv_len=50, dtype="bf16", mask="document:rand:3", score_mod="alibi",
                              direction="fwd+bwd"),
}


def _gradient_case(name, w):
    @case(f"gradients-{name}")
    def run():
        params = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1, "BWD_BLOCK_M": 16,
                  "BWD_BLOCK_N": 32, "DQ_BLOCK_M": 32, "DQ_BLOCK_N": 16}
        res = check(IMPL.build(w, "cpu", params), w, "cpu", seed=2)
        assert res.ok, res.reason
        assert set(res.details) == {"out", "dq", "dk", "dv"}, res.details


for _name, _w in GRADIENTS.items():
    _gradient_case(_name, _w)


@case("gradients-head-dim-strided")
def _head_dim_strided():
    """q, k and v whose head_dim is not contiguous (every other element of a wider tensor): the forward copied
    them, but autograd saved the originals and the backward kernels read them with a unit stride (dq 4x off)."""
    w = W(q_heads=2, kv_heads=1, q_len=20, kv_len=30, head_dim=16, mask="causal-br", direction="fwd+bwd")
    base = IMPL.build(w, "cpu", {"BLOCK_M": 16, "BLOCK_N": 16, "BWD_BLOCK_M": 16, "BWD_BLOCK_N": 16,
                                 "DQ_BLOCK_M": 16, "DQ_BLOCK_N": 16})

    def strided(q, k, v):
        views = [torch.stack([t, t.flip(-1)], -1)[..., 0] for t in (q, k, v)]   # the same values, stride 2
        assert all(t.stride(-1) == 2 for t in views)
        return base(*views)

    res = check(strided, w, "cpu", seed=3)
    assert res.ok, res.reason


MASKS = {
    "br-short-q": ("causal-br", 24, 56, {}),
    "br-long-q": ("causal-br", 56, 24, {}),             # the first 32 rows see no key: output 0, gradient 0
    "window": ("window:10", 50, 70, {}),
    "window-tma": ("window:10", 70, 50, {"tma": True}),  # tensor descriptors (TMA on Hopper)
    "window-atomic-dq": ("window:7", 40, 40, {"dq_atomic": True}),  # dQ by atomics in the dK/dV pass
    "br-split": ("causal-br", 3, 200, {"split_kv": 3}),  # decode with bottom-right causal, split-KV
    "window-split": ("window:40", 2, 200, {"split_kv": 5}),
    "full-tma": ("full", 33, 47, {"tma": True}),
    # documents: shorter and longer than the 16/32-wide blocks, one of a single token, one boundary on a block edge
    "documents": ("document:5+11+1+35+12+6", 70, 70, {}),
    "documents-tma": ("document:16+16+40", 72, 72, {"tma": True}),
    "documents-atomic-dq": ("document:rand:4", 50, 50, {"dq_atomic": True}),
    "documents-long": ("document:100+28", 128, 128, {}),  # long enough for unmasked blocks inside a document
    "softcap-atomic-dq": ("causal", 40, 40, {"dq_atomic": True}, "softcap:2"),
    "alibi-br-tma": ("causal-br", 30, 60, {"tma": True}, "alibi"),
    "alibi-long-q": ("causal-br", 56, 24, {}, "alibi"),
}


def _mask_case(name, args):
    case(f"mask-{name}")(lambda: _mask_check(*args))


def _mask_check(mask, sq, sk, cfg, score_mod=""):
    from attnbench.impls.triton_fa import ops

    torch.manual_seed(3)
    spec = C.mask_spec(mask, sq, sk, score_mod)
    base = C.Config(block_m=16, block_n=16, num_warps=4, num_stages=1, bwd_block_m=16, bwd_block_n=32,
                    dq_block_m=32, dq_block_n=16)
    config = base.with_params({"BLOCK_N": 32, **cfg} if "split_kv" in cfg else cfg)
    q = torch.randn(1, 4, sq, 32).half()
    k, v = torch.randn(2, 1, 2, sk, 32).half()
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    out = ops.attention(qg, kg, vg, spec, config)
    q6, k6, v6 = (t.to(torch.float64).requires_grad_() for t in (q, k, v))
    ref = masked_reference(q6, k6, v6, spec)
    assert rel(out, ref.detach()) < 2e-3
    if mask == "causal-br" and not score_mod:  # the mask through attnbench's reference (bottom-right: a row offset)
        if sq <= sk:
            assert rel(out, attention_math(q6, k6, v6, True, q_offset=sk - sq).detach()) < 2e-3
        else:
            assert torch.count_nonzero(out[:, :, :sq - sk]) == 0
    grad = torch.randn_like(q)
    got = torch.autograd.grad(out, (qg, kg, vg), grad)
    want = torch.autograd.grad(ref, (q6, k6, v6), grad.to(torch.float64))
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert a.shape == b.shape, name
        assert rel(a, b) < 8e-3, (name, rel(a, b))


for _name, _args in MASKS.items():
    _mask_case(_name, _args)


# -- randomized workloads: a few each run, from a fixed seed ------------------------------------------------------
# Every mask kind (window 0 and wider than the sequence, listed and random documents), soft-capping and ALiBi,
# MHA/GQA/MQA, q_len below, equal to and above kv_len, decode rows (split-KV, past is_decode's 256 keys too), paged
# caches with part-full last pages, lengths inside one block and across several, fp16 and bf16, every pass, the
# default config, one of param_space's and random ones (blocks 16-64, stages, warps, TMA, split_kv, dq_atomic), and
# inputs in other memory layouts; each judged by measure.correctness.check, the project's rule. 80 cases from seed 0
# (about 30 s of CPU in the interpreter); TRITON_FA_FUZZ=cases:seed runs others (e.g. 2000:7 for a deep search).
_FUZZ = os.environ.get("TRITON_FA_FUZZ", "80:0").split(":")
FUZZ_CASES, FUZZ_SEED = int(_FUZZ[0]), int(_FUZZ[1]) if len(_FUZZ) > 1 else 0


def length(rng, most: int) -> int:
    """1..most, half the time on or next to a multiple of 16 (the block sizes' edges, where masks change)."""
    if rng.random() < 0.5:
        return rng.randint(1, most)
    return min(most, max(1, 16 * rng.randint(0, most // 16 + 1) + rng.choice([-1, 0, 1])))


def random_workload(rng, max_len: int = 64) -> tuple[Workload, dict, str]:
    """(workload, params, input layout) drawn from rng; lengths up to max_len (decode caches up to 300 keys)."""
    kind = rng.choice(["full", "causal", "causal-br", "window", "document", "document-rand"])
    decode = not kind.startswith("document") and rng.random() < 0.25
    if kind.startswith("document"):
        sq = sk = length(rng, max_len)
    elif decode:
        sq, sk = rng.choice([1, 1, 2, 3]), length(rng, max_len) if rng.random() < 0.7 else rng.randint(256, 300)
    else:
        sq, sk = length(rng, max_len), length(rng, max_len)
        sq = sk if rng.random() < 0.3 else sq
    if kind == "window":
        near_edge = max(0, sk - sq + length(rng, 32) - 1)   # window - shift on or next to a block edge
        mask = f"window:{rng.choice([0, 1, length(rng, sk) - 1, near_edge, sk - 1, sk, sk + 50])}"
    elif kind == "document":
        cuts = sorted(rng.sample(range(1, sq), k=min(sq - 1, rng.randint(0, 5))))
        mask = "document:" + "+".join(str(b - a) for a, b in zip([0, *cuts], [*cuts, sq]))
    elif kind == "document-rand":
        mask = f"document:rand:{rng.randint(1, min(sq, 6))}"
    else:
        mask = kind
    kv_heads, group = rng.choice([1, 2]), rng.choice([1, 2, 4])   # MHA, GQA, and MQA when kv_heads is 1
    paged = rng.random() < 0.2
    w = W(batch=rng.choice([1, 2]), q_heads=kv_heads * group, kv_heads=kv_heads, q_len=sq, kv_len=sk,
          head_dim=rng.choice([16, 32]), dtype=rng.choice(["fp16", "bf16"]), mask=mask,
          score_mod=rng.choice(["", "", f"softcap:{rng.choice([0.5, 2, 30])}", "alibi"]),
          layout=f"paged:{rng.choice([1, 3, 5, 8, 16])}" if paged else "dense",
          direction="fwd" if paged else rng.choice(["fwd", "bwd", "fwd+bwd"]))
    pick = rng.random()
    if pick < 0.1:
        params = {}
    elif pick < 0.4:
        params = dict(rng.choice(C.param_space(w)))
    else:
        params = {"BLOCK_M": rng.choice([16, 32, 64]), "BLOCK_N": rng.choice([16, 32, 64]),
                  "num_warps": rng.choice([1, 2, 4, 8]), "num_stages": rng.choice([1, 2, 3, 4]),
                  "tma": rng.random() < 0.3, "split_kv": 0}
        if not kind.startswith("document") and group * sq <= ops_split_rows() and rng.random() < (0.7 if decode else 0.2):
            params["split_kv"] = rng.choice([1, 2, 3, 4, 7, 16])
        if w.direction != "fwd":
            params.update(BWD_BLOCK_M=rng.choice([16, 32]), BWD_BLOCK_N=rng.choice([16, 32, 64]),
                          bwd_stages=rng.choice([1, 2, 3]), dq_atomic=rng.random() < 0.3,
                          DQ_BLOCK_M=rng.choice([16, 32, 64]), DQ_BLOCK_N=rng.choice([16, 32]),
                          dq_stages=rng.choice([1, 2]))
    inputs = "dense" if paged else rng.choice(["dense", "dense", "bshd", "strided"])
    return w, params, inputs


def ops_split_rows() -> int:
    from attnbench.impls.triton_fa.ops import SPLIT_ROWS

    return SPLIT_ROWS


def in_layout(fn, inputs: str):
    """fn, called with q, k and v moved to another memory layout (the same values): 'bshd', heads interleaved
    in memory (and K a slice of a wider tensor, so rows are 2 * head_dim apart); 'strided', head_dim itself
    strided (every other element)."""
    if inputs == "bshd":
        return lambda q, k, v: fn(q.transpose(1, 2).contiguous().transpose(1, 2),
                                  torch.cat([k, k], -1)[..., :k.shape[-1]],
                                  v.transpose(1, 2).contiguous().transpose(1, 2))
    if inputs == "strided":
        return lambda q, k, v: fn(*(torch.stack([t, t.flip(-1)], -1)[..., 0] for t in (q, k, v)))
    return fn


def _fuzz_case(i):
    import random

    w, params, inputs = random_workload(random.Random(FUZZ_SEED * 100003 + i))

    @case(f"random-{i}-{w.key}-{inputs}")
    def run():
        why = IMPL.supports(w, "cpu")
        assert why is None, why
        res = check(in_layout(IMPL.build(w, "cpu", params), inputs), w, "cpu", seed=FUZZ_SEED * 100003 + i)
        assert res.ok, f"{params}: {res.reason}"


for _i in range(FUZZ_CASES):
    _fuzz_case(_i)


# Windows whose edges fall on, or next to, the edges of 16- and 32-wide blocks (window - shift 0, 14..32; lengths
# 15..47): where key_blocks and query_blocks decide which blocks skip the mask. 60 of the grid each run, all 840
# with TRITON_FA_EDGES=all. Moving the backward's last reading row of a key block one row down (kernels_bwd:
# hi_first + 1) fails 4 of the 60 (16 of the 840); the 80 random cases above missed it.
EDGE_GRID = [(bm, bn, sq, sk, d) for bm, bn in ((16, 16), (16, 32), (32, 16), (32, 32))
             for sq in (15, 16, 17, 32, 33, 47) for sk in (15, 16, 17, 32, 33, 47) for d in (0, 14, 15, 16, 30, 31, 32)
             if d + sk - sq >= 0]


def _edge_case(bm, bn, sq, sk, d):
    w = W(q_heads=1, kv_heads=1, q_len=sq, kv_len=sk, head_dim=16, mask=f"window:{d + sk - sq}", direction="fwd+bwd")

    @case(f"edge-{bm}x{bn}-{w.key}")
    def run():
        params = {"BLOCK_M": bm, "BLOCK_N": bn, "BWD_BLOCK_M": bm, "BWD_BLOCK_N": bn, "DQ_BLOCK_M": bm, "DQ_BLOCK_N": bn}
        res = check(IMPL.build(w, "cpu", params), w, "cpu", seed=sq * 100 + sk)
        assert res.ok, f"{params}: {res.reason}"


def _edge_sample():
    import random

    if os.environ.get("TRITON_FA_EDGES") == "all":
        return EDGE_GRID
    return random.Random(FUZZ_SEED).sample(EDGE_GRID, 60)


for _args in _edge_sample():
    _edge_case(*_args)


@case("a-wrong-mask-is-caught")
def _wrong_mask():
    """The checks can fail: the kernel with the window dropped is far from the windowed reference."""
    from attnbench.impls.triton_fa import ops

    torch.manual_seed(4)
    q, k, v = torch.randn(3, 1, 2, 48, 32).half()
    spec = C.mask_spec("window:8", 48, 48)
    wrong = ops.attention(q, k, v, C.mask_spec("causal-br", 48, 48), C.Config(block_m=16, block_n=16))
    assert rel(wrong, masked_reference(q, k, v, spec)) > 0.1
    docs = C.mask_spec("document:20+28", 48, 48)  # and with the documents dropped
    assert rel(wrong, masked_reference(q, k, v, docs)) > 0.1
    assert rel(ops.attention(q, k, v, docs, C.Config(block_m=16, block_n=16)), masked_reference(q, k, v, docs)) < 2e-3


@case("documents-refuse-split-kv-and-other-lengths")
def _documents_refuse():
    from attnbench.impls.base import Unsupported
    from attnbench.impls.triton_fa import ops

    q, k, v = torch.randn(3, 1, 2, 48, 32).half()
    docs = C.mask_spec("document:20+28", 48, 48)
    for cfg, qq, match in ((C.Config(split_kv=2), q, "split_kv"), (C.Config(), q[:, :, :40], "q_len == kv_len")):
        try:
            ops.attention(qq, k, v, docs, cfg)
        except Unsupported as exc:
            assert match in str(exc), exc
        else:
            raise AssertionError(f"no Unsupported for {match}")


@case("paged-block-table-layouts")
def _paged_table_layouts():
    """A block table whose page index is not its unit-stride dimension (the kernels stepped through it as if it
    were: relative error 1.2, silently), and V's pages under another table than K's, which the kernels never read:
    refused with the reason."""
    from attnbench.impls.base import PagedKV, Unsupported, make_inputs
    from attnbench.impls.reference import reference_output
    from attnbench.impls.triton_fa import ops

    w = W(batch=3, q_heads=4, kv_heads=2, q_len=5, kv_len=45, head_dim=16, mask="causal-br", layout="paged:8")
    x = make_inputs(w, "cpu", 5)
    spec = C.mask_spec(w.mask, w.q_len, w.kv_len)
    ref = reference_output(x.q, x.k, x.v, w.mask)
    table = x.k.block_table.t().contiguous().t()   # the same values, column-major
    k, v = (PagedKV(t.pages, table, t.seq_lens) for t in (x.k, x.v))
    for split in (0, 2):
        out = ops.attention(x.q, k, v, spec, C.Config(block_m=16, block_n=16, split_kv=split), kv_len=w.kv_len)
        assert rel(out, ref) < 2e-3, (split, rel(out, ref))
    other = PagedKV(x.v.pages, x.k.block_table.clone(), x.v.seq_lens)
    try:
        ops.attention(x.q, x.k, other, spec, C.Config(block_m=16, block_n=16), kv_len=w.kv_len)
    except Unsupported as exc:
        assert "same block table" in str(exc), exc
    else:
        raise AssertionError("no Unsupported for V under another block table")


@pytest.mark.parametrize("name", list(CASES))
def test_in_the_interpreter(interpreted, name):
    assert name in interpreted, f"the child did not run {name}"
    result = interpreted[name]
    assert result["ok"], result.get("error")


# -- parameters and resource estimates -------------------------------------------------------------

@pytest.mark.parametrize("w", [
    Workload(4, 16, 16, 2048, 2048, 128, "bf16", True),
    Workload(32, 8, 8, 512, 512, 64, "fp16"),
    Workload(1, 32, 8, 16384, 16384, 128, "bf16", True, "fwd+bwd"),
    Workload(16, 32, 8, 1, 4096, 128, "bf16", True),
    Workload(2, 8, 8, 1024, 1024, 256, "bf16"),
], ids=["d128-causal", "d64", "d128-train", "decode", "d256"])
def test_param_space_is_pruned_and_capped(w):
    space = C.param_space(w)
    assert 1 <= len(space) <= C.MAX_CONFIGS
    base = C.default_config(w)
    assert space[0] == {k: v for k, v in base.params().items() if k in space[0]}  # the default comes first
    assert len({tuple(sorted(p.items())) for p in space}) == len(space)
    for params in space:
        cfg = base.with_params(params)
        assert C.fits(cfg, w.head_dim, 2, w.direction)
        if w.direction == "fwd":
            assert set(params) == set(C.FWD_PARAMS)
            assert C.fwd_smem(w.head_dim, 2, cfg.block_m, cfg.block_n, cfg.num_stages) <= C.SMEM_LIMIT
        else:
            assert "BWD_BLOCK_N" in params and "BLOCK_M" not in params
    if C.is_decode(w.q_heads // w.kv_heads, w.q_len, w.kv_len):
        assert base.split_kv >= 1 and any(p["split_kv"] == 0 for p in space)
    assert IMPL.param_space(w, "cpu") == [{}]


def test_smem_estimate_matches_triton_on_sm90():
    # Shared bytes triton 3.6 allocated on sm_90 for the pointer forward kernel (compiled ahead of time).
    for d, bm, bn, stages, measured in ((128, 128, 64, 3, 131072), (64, 128, 128, 2, 81920),
                                        (128, 128, 128, 3, 229376), (256, 128, 64, 3, 262144)):
        assert C.fwd_smem(d, 2, bm, bn, stages) - C.SMEM_SLACK == measured
    assert C.fwd_smem(256, 2, 128, 64, 3) > C.SMEM_LIMIT  # pruned: it cannot launch
    # dK/dV (d, BWD_BLOCK_M, BWD_BLOCK_N, stages, dq_atomic): the estimate is an upper bound within 1.5 KB.
    for d, bm, bn, stages, atomic, measured in ((64, 32, 128, 2, False, 49408), (64, 32, 128, 2, True, 73984),
                                                (128, 16, 128, 2, True, 123008), (128, 64, 128, 2, False, 131584),
                                                (128, 16, 64, 2, True, 73856), (128, 32, 64, 2, False, 65792)):
        assert 0 <= C.dkdv_smem(d, 2, bm, bn, stages, atomic) - measured <= 1536, (d, bm, bn, atomic)
    assert C.dq_smem(128, 2, 128, 64, 2) - C.SMEM_SLACK == 131072


def test_params_are_validated():
    with pytest.raises(UserError, match="unknown parameter"):
        C.Config().with_params({"BLOCK_K": 64})
    with pytest.raises(UserError, match="power of two"):
        C.Config().with_params({"BLOCK_M": 96})
    with pytest.raises(UserError, match="num_warps"):
        C.Config().with_params({"num_warps": 3})
    assert C.Config().with_params({"tma": True}).tma


# -- the real compiler, ahead of time for sm_90 -----------------------------------------------------

def _compile_sm90(fn, constexprs, warps, stages, dtype="bf16"):
    """Compile a kernel for sm_90 here, specialised as triton's launcher does for contiguous inputs with
    d >= 64 (pointers and strides divisible by 16); returns (registers, spilled bytes, shared bytes, wgmma
    instructions in the PTX)."""
    import os
    import re
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    pointers = {"Q", "K", "V", "O", "LSE", "DO", "DELTA", "DK", "DV", "DQ", "OP", "LP", "DOC", "TABLE"}
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = "*" + ("fp32" if name in ("LSE", "DELTA", "OP", "LP") else "i32" if name in ("DOC", "TABLE")
                               else dtype)
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "fp32" if name in ("qk_scale", "sm_scale", "SC_IN", "SC_OUT") else "i32"
            if name.startswith("s") and name not in ("sm_scale",):  # strides: sqb, skn, ...
                attrs[(i,)] = [["tt.divisibility", 16]]
    kernel = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": warps, "num_stages": stages})
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    regs, stack = (int(re.search(rf"{key}:(\d+)", usage).group(1)) for key in ("REG", "STACK"))
    return regs, stack, kernel.metadata.shared, kernel.asm["ptx"].count("wgmma.mma_async")


@pytest.mark.parametrize("docs,mod", [(False, 0), (True, 0), (False, 1), (True, 2)],
                         ids=["causal", "documents", "softcap", "documents-alibi"])
def test_defaults_compile_for_sm90_without_spills(docs, mod):
    from attnbench.impls.triton_fa import ops

    fwd, bwd = ops.kernels()
    assert not fwd.INTERPRETED, "run the suite without TRITON_INTERPRET (the interpreter cases start their own)"
    w = Workload(1, 16, 16, 4096, 4096, 128, "bf16", not docs, "fwd+bwd", mask="document:rand:9" if docs else None,
                 score_mod=("", "softcap:30", "alibi")[mod])
    c = C.default_config(w)
    common = dict(HEAD_DIM=128, CAUSAL=True, HAS_WINDOW=False, HAS_DOC=docs, MOD=mod, UPCAST=False)
    for tma in (False, True):
        regs, stack, shared, wgmma = _compile_sm90(
            fwd.attn_fwd, dict(common, BLOCK_M=c.block_m, BLOCK_N=c.block_n, USE_TMA=tma, PAGED=False, PAGE=1,
                               STORE_LSE=True),
            c.num_warps, c.num_stages)
        assert stack == 0 and wgmma > 0, (tma, regs, stack)
        assert shared <= C.fwd_smem(128, 2, c.block_m, c.block_n, c.num_stages)
    regs, stack, shared, _ = _compile_sm90(
        bwd.bwd_dkdv, dict(common, BLOCK_M=c.bwd_block_m, BLOCK_N=c.bwd_block_n, DQ_ATOMIC=False),
        c.bwd_warps, c.bwd_stages)
    assert stack == 0 and shared <= C.dkdv_smem(128, 2, c.bwd_block_m, c.bwd_block_n, c.bwd_stages, False)
    regs, stack, shared, _ = _compile_sm90(bwd.bwd_dq, dict(common, BLOCK_M=c.dq_block_m, BLOCK_N=c.dq_block_n),
                                           8, c.dq_stages)
    assert stack == 0 and shared <= C.dq_smem(128, 2, c.dq_block_m, c.dq_block_n, c.dq_stages)


def test_paged_decode_compiles_for_sm90_without_spills():
    """The split-KV kernel reading K and V through a block table, as the decode preset's paged cell runs it."""
    from attnbench.impls.triton_fa import ops

    fwd, _ = ops.kernels()
    w = Workload(32, 32, 8, 1, 8192, 128, "bf16", mask="causal-br", layout="paged:16")
    c = C.default_config(w)
    assert c.split_kv > 0
    for paged in (False, True):
        regs, stack, shared, _ = _compile_sm90(
            fwd.attn_fwd_split, dict(HEAD_DIM=128, BLOCK_M=16, BLOCK_N=c.block_n, CAUSAL=True, HAS_WINDOW=False,
                                     MOD=0, PAGED=paged, PAGE=16, UPCAST=False), c.num_warps, c.num_stages)
        assert stack == 0, (paged, regs)


# -- on a GPU (scripts/gpu_check.sh tests) -----------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("w,params", [
    (Workload(2, 16, 16, 1000, 1000, 64, "fp16"), {}),
    (Workload(2, 16, 16, 2048, 2048, 128, "bf16", True), {}),
    (Workload(2, 16, 16, 2048, 2048, 128, "bf16", True), {"tma": True}),
    (Workload(2, 32, 8, 700, 1500, 128, "bf16", True), {}),
    (Workload(16, 32, 8, 1, 4096, 128, "bf16", True), {}),
    (Workload(2, 16, 16, 1024, 1024, 128, "bf16", True, "fwd+bwd"), {}),
    (Workload(1, 32, 8, 1000, 1200, 64, "fp16", False, "fwd+bwd"), {"dq_atomic": True}),
    (Workload(2, 16, 8, 4096, 4096, 128, "bf16", direction="fwd+bwd", mask="document:rand:7"), {}),
    (Workload(2, 16, 8, 2048, 2048, 128, "bf16", True, "fwd+bwd", score_mod="softcap:30"), {}),
    (Workload(16, 32, 8, 1, 4096, 128, "bf16", True, score_mod="alibi"), {}),
    (Workload(32, 32, 8, 1, 8192, 128, "bf16", mask="causal-br", layout="paged:16"), {}),
], ids=["d64", "d128-causal", "d128-causal-tma", "gqa-q<kv", "decode-split", "d128-bwd", "gqa-bwd-atomic",
        "documents-bwd", "softcap-bwd", "alibi-decode-split", "paged-decode-split"])
def test_on_the_gpu(w, params):
    assert IMPL.supports(w, "cuda") is None
    res = check(IMPL.build(w, "cuda", params), w, "cuda", seed=5)
    assert res.ok, res.reason


@pytest.mark.gpu
def test_on_the_gpu_in_other_memory_layouts():
    """The launcher fixes the interpreter cases found, compiled: q, k and v with a strided head_dim through the
    backward, BSHD inputs, and a column-major block table (split-KV and row-block kernels)."""
    from attnbench.impls.base import PagedKV

    w = Workload(2, 16, 4, 700, 900, 128, "bf16", mask="causal-br", direction="fwd+bwd")
    for inputs in ("strided", "bshd"):
        res = check(in_layout(IMPL.build(w, "cuda", {}), inputs), w, "cuda", seed=6)
        assert res.ok, (inputs, res.reason)
    w = Workload(8, 32, 8, 1, 3000, 128, "bf16", mask="causal-br", layout="paged:16")

    def column_major(fn):
        def run(q, k, v):
            table = k.block_table.t().contiguous().t()
            return fn(q, PagedKV(k.pages, table, k.seq_lens), PagedKV(v.pages, table, v.seq_lens))
        return run

    for split in (0, 8):
        res = check(column_major(IMPL.build(w, "cuda", {"split_kv": split, "BLOCK_M": 16})), w, "cuda", seed=7)
        assert res.ok, (split, res.reason)
