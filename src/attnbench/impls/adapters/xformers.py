"""xFormers' memory_efficient_attention as an impl, with its attn_bias masks and the operator it dispatched to.

API from facebookresearch/xformers, xformers/ops/fmha/__init__.py and attn_bias.py (its fmha docs):
inputs are BMHK (batch, seqlen, heads, K; non-contiguous allowed, unit last stride) or BMGHK for GQA,
K and V expanded over each group's heads, which is forward only; masks are attn_bias objects:
LowerTriangularMask (top-left causal), LowerTriangularFromBottomRightMask,
LowerTriangularFromBottomRightLocalAttentionMask(window_size) (keys within window_size of the diagonal,
the diagonal included) and BlockDiagonalCausalMask.from_seqlens (packed sequences in a batch of one; its
seqstart tensors go to `device=`, else to the current CUDA device, and a mask on another device than the
inputs is a ValueError);
op=(FwOp, BwOp) pins operators, else fmha.dispatch picks by each op's not_supported_reasons.
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import Any

from ...spec import Workload
from ...spec import masks
from ..base import Unsupported
from .layouts import PerInputs, bhsd, bshd, doc_lengths, pack
from .library import LibraryImpl

# fmha operator modules a tuner may pin (those absent from an install are reported unsupported)
OPS = ("flash", "flash3", "cutlass", "triton_splitk", "ck")


def reasons_text(exc: BaseException, limit: int = 400) -> str:
    """xFormers' 'No operator found' message without its inputs description: the ops and their reasons."""
    keep = [line.strip() for line in str(exc).splitlines()
            if line.strip() and not re.match(r"\s*(query|key|value|attn_bias|p)\s*:", line)]
    text = " ".join(keep)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def private_dispatch(fn, inp, extra):
    """fmha.dispatch's private choosers: _dispatch_fw(inp, needs_gradient) and _dispatch_bw(inp,
    varlen_lse_packed) in current releases, (inp) alone in older ones (dispatch.py, both stored versions)."""
    try:
        count = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        count = 2
    return fn(inp, extra) if count >= 2 else fn(inp)


class XFormersImpl(LibraryImpl):
    name = "xformers"
    family = "xformers"
    description = "xFormers memory_efficient_attention (attn_bias masks; the dispatched operator is recorded)"
    module = "xformers.ops"
    probe_module = "xformers"
    dists = ("xformers",)
    install = "pip install xformers (its wheel is built for one torch version)"
    extra = "xformers"
    mask_kinds = ("full", "causal", "causal-br", "window", "document")
    dtypes = ("fp16", "bf16", "fp32")
    passes = ("fwd", "bwd", "fwd+bwd")
    gqa = "any ratio (BMGHK, forward only)"
    head_dims = "per operator"

    def unusable(self, lib: Any) -> str:
        """xFormers imports without its C++/CUDA extension (a warning only); that is what makes it unusable."""
        cpp = sys.modules.get("xformers._cpp_lib")
        exc = getattr(cpp, "_cpp_library_load_exception", None)
        if exc is None:
            return ""
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        head = [line for line in lines[:3] if not line.lower().startswith("please")]
        return " ".join(" ".join(head).split())

    def workload_reason(self, workload: Workload) -> str | None:
        if workload.gqa and workload.direction != "fwd":
            return "xformers computes grouped-query attention (5-D BMGHK inputs) in the forward pass only"
        return None

    def param_space(self, workload: Workload, device: str) -> list[dict[str, Any]]:
        if not device.startswith("cuda"):
            return [{}]
        return [{}] + [{"op": op} for op in OPS]

    def bias(self, lib, workload: Workload, device: str = "cpu"):
        ab = lib.fmha.attn_bias
        kind = workload.mask_kind
        if kind == "causal":
            return ab.LowerTriangularMask()
        if kind == "causal-br":
            return ab.LowerTriangularFromBottomRightMask()
        if kind == "window":
            return ab.LowerTriangularFromBottomRightLocalAttentionMask(masks.window(workload.mask) + 1)
        if kind == "document":
            make = ab.BlockDiagonalCausalMask.from_seqlens
            if "device" in inspect.signature(make).parameters:  # newer releases; their default is the current GPU
                import torch

                return make(doc_lengths(workload), device=torch.device(device))
            return make(doc_lengths(workload))
        return None

    def make(self, lib, workload: Workload, device: str, params: dict[str, Any]):
        w = workload
        fmha = lib.fmha
        bias = self.bias(lib, w, device)
        group = w.q_heads // w.kv_heads
        op = None
        if "op" in params:
            mod = getattr(fmha, params["op"], None)
            if mod is None or not hasattr(mod, "FwOp"):
                raise Unsupported(f"xformers: this install has no fmha.{params['op']} operator")
            op = (mod.FwOp, getattr(mod, "BwOp", None))

        def shaped(q, k, v):
            """BHSD -> BMHK views; GQA -> BMGHK with K/V expanded over each group (xFormers' documented form)."""
            if w.mask_kind == "document":
                q, k, v = (pack(t).unsqueeze(0) for t in (q, k, v))
            else:
                q, k, v = bshd(q), bshd(k), bshd(v)
            if group > 1:
                q = q.unflatten(2, (w.kv_heads, group))
                k, v = (t.unsqueeze(3).expand(-1, -1, -1, group, -1) for t in (k, v))
            return q, k, v

        convert = PerInputs(shaped) if w.mask_kind == "document" else shaped
        state = {"checked": False}

        def call(q, k, v):
            qx, kx, vx = convert(q, k, v)
            if not state["checked"]:
                call.ran = self._dispatched(fmha, qx, kx, vx, bias, op, q.requires_grad)
                state["checked"] = True
            out = lib.memory_efficient_attention(qx, kx, vx, attn_bias=bias, op=op)
            if group > 1:
                out = out.flatten(2, 3)
            if w.mask_kind == "document":
                b = w.batch
                return bhsd(out.view(b, out.shape[1] // b, out.shape[2], out.shape[3]))
            return bhsd(out)

        call.ran = "xformers"
        notes = ["layout: q, k, v packed to (1, total tokens, H, K) for BlockDiagonalCausalMask "
                 + ("(a view: batch 1)" if w.batch == 1 else "(a copy, once per input set, outside the timed call)")
                 if w.mask_kind == "document" else "layout: BHSD q, k, v passed as BMHK strided views (no copy)"]
        if group > 1:
            notes.append(f"layout: GQA as BMGHK, K and V expanded (stride 0) over {group} heads per group")
        if bias is not None:
            notes.append(f"attn_bias: {type(bias).__name__}")
        return call, "xformers", notes

    @staticmethod
    def _dispatched(fmha, q, k, v, bias, op, grad: bool) -> str:
        """The operator(s) that run: a pinned op after its own not_supported_reasons, else fmha.dispatch's
        choice. A refusal becomes Unsupported with xFormers' reasons."""
        inp = fmha.common.Inputs(query=q, key=k, value=v, attn_bias=bias, p=0.0, scale=None)
        if op is not None:
            fw, bw = op
            why = list(fw.not_supported_reasons(inp))
            if grad:
                why += ["no backward operator"] if bw is None else list(bw.not_supported_reasons(inp))
            if why:
                raise Unsupported(f"xformers: {fw.NAME} does not support these inputs: "
                                  f"{'; '.join(dict.fromkeys(why))}"[:400])
            return f"xformers:{fw.NAME}" + (f"+{bw.NAME}" if grad and bw is not None else "")
        dispatch = getattr(fmha, "dispatch", None)
        if dispatch is None or not hasattr(dispatch, "_dispatch_fw"):
            return "xformers:auto"
        try:
            fw = private_dispatch(dispatch._dispatch_fw, inp, grad)
        except NotImplementedError as exc:
            raise Unsupported(f"xformers: {reasons_text(exc)}") from None
        ran = f"xformers:{fw.NAME}"
        if grad:
            try:
                bw = private_dispatch(dispatch._dispatch_bw, inp, getattr(fw, "VARLEN_LSE_PACKED", None))
                ran += f"+{bw.NAME}"
            except NotImplementedError as exc:
                raise Unsupported(f"xformers: {reasons_text(exc)}") from None
        return ran
