"""torch SDPA backends, chosen with torch.nn.attention.sdpa_kernel; sdpa-auto records what actually ran.

Masks: `full` and `causal` (top-left, is_causal) go as they always did. `causal-br`, `window:W` and
`document:...` become an additive attn_mask (0 where a pair is kept, -inf where not), and `alibi` a float
one (its bias plus the mask), built once per workload in build(), outside the timed region, in the inputs'
dtype: torch turns a boolean mask into that form inside every call (convert_boolean_attn_mask in aten's
attention.cpp), which would put a mask-sized kernel in the timed window. Its rows are padded to 16
elements, so the memory-efficient kernel takes the mask as it is instead of padding a copy per call.
A mask that keeps the same pairs as a plainer one (spec.masks.simplest: a decode row under causal-br
sees every key) takes the plainer path. `softcap` is not expressible in SDPA and is refused. A backend
that refuses a mask (flash takes no attn_mask) says so through torch's own reason (Unsupported).
"""

from __future__ import annotations

import warnings
from typing import Any

from ..spec import DTYPE_BYTES, Workload, masks
from ..spec.masks import MASK_KINDS
from .base import Impl, Inputs, Unsupported, torch_dtype

# impl name -> SDPBackend member name (None: let torch choose)
BACKENDS = {
    "sdpa-auto": None,
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-efficient": "EFFICIENT_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
    "sdpa-math": "MATH",
}

# Substrings of profiler op / kernel names -> backend. Op names are the same on CPU and GPU.
_OP_BACKENDS = [
    ("_scaled_dot_product_flash_attention", "flash"),
    ("_scaled_dot_product_efficient_attention", "efficient"),
    ("_scaled_dot_product_cudnn_attention", "cudnn"),
    ("_scaled_dot_product_attention_math", "math"),
    ("_scaled_dot_product_fused_attention_overrideable", "overrideable"),
]
_NO_KERNEL = ("No available kernel", "No viable backend")
MASK_BUDGET = 4 * 2**30   # bytes an attn_mask may take (the largest built-in preset needs 512 MiB)
MASK_ALIGN = 16           # elements: mask rows padded to this, as the memory-efficient kernel wants them
# Bytes of temporaries sdpa-math may need (math_bytes); above it the cell is refused. On an H200 (141 GB) two decode
# cells estimated at 34 GiB ran out of memory in the correctness check (its references need room too): 24 GiB.
MATH_BUDGET = 24 * 2**30


def math_bytes(workload: Workload) -> int:
    """An estimate of the math backend's temporaries: the float32 scores and probabilities (B*Hq*Sq*Sk
    each; twice that with a backward pass) and, for GQA, K and V repeated once per query head (the math
    backend expands them; the fused backends do not)."""
    w = workload
    scores = w.batch * w.q_heads * w.q_len * w.kv_len * 4 * (2 if w.direction == "fwd" else 4)
    repeated = 2 * w.batch * w.q_heads * w.kv_len * w.head_dim * DTYPE_BYTES[w.dtype] if w.gqa else 0
    return scores + repeated


def plan(workload: Workload) -> tuple[str, bool]:
    """(the mask SDPA computes, whether it needs an attn_mask): 'full' and 'causal' without alibi go by
    is_causal alone; anything else is an attn_mask."""
    w = workload
    mask = masks.simplest(w.mask, w.q_len, w.kv_len)
    return mask, bool(w.score_mod) or mask not in ("full", "causal")


def mask_bytes(workload: Workload) -> int:
    """Bytes of the attn_mask build() makes for this workload (0: none)."""
    w = workload
    if not plan(w)[1]:
        return 0
    heads = w.q_heads if w.score_mod == "alibi" else 1
    width = -(-w.kv_len // MASK_ALIGN) * MASK_ALIGN
    return heads * w.q_len * width * DTYPE_BYTES[w.dtype]


def additive_mask(workload: Workload, device: str):
    """The (1, 1 or Hq, Sq, Sk) float attn_mask of a workload: 0 or the ALiBi bias where a pair is kept,
    -inf where not; rows padded to MASK_ALIGN elements (the tensor is a view of the padded buffer)."""
    import torch

    w = workload
    mask, _ = plan(w)
    heads = w.q_heads if w.score_mod == "alibi" else 1
    width = -(-w.kv_len // MASK_ALIGN) * MASK_ALIGN
    buf = torch.zeros(1, heads, w.q_len, width, dtype=torch_dtype(w.dtype), device=device)
    out = buf[..., :w.kv_len]
    step = max(1, 2**26 // max(1, heads * w.kv_len))  # rows per chunk: float32 temporaries of <= 256 MiB
    for i in range(0, w.q_len, step):
        rows = slice(i, min(w.q_len, i + step))
        n = rows.stop - rows.start
        bias = torch.zeros(1, heads, n, w.kv_len, dtype=torch.float32, device=device)
        bias = masks.apply_score_mod(bias, w.score_mod, w.mask, w.q_len, w.kv_len, rows, w.q_heads)
        if mask != "full":
            bias = bias.masked_fill(~masks.mask_matrix(mask, w.q_len, w.kv_len, rows, device), float("-inf"))
        out[:, :, rows] = bias.to(out.dtype)
    return out


def _reasons(messages) -> str:
    """torch's warnings on why each backend was skipped, without source locations, headers, or the
    backends that sdpa_kernel itself disabled."""
    import re

    out = []
    for text in messages:
        text = re.sub(r"\s*\(Triggered internally at [^)]*\)\.?", "", text).strip()
        if not text or text.endswith("because:") or "has been runtime disabled" in text:
            continue
        out.append(text)
    return "; ".join(dict.fromkeys(out))


class SdpaImpl(Impl):
    family = "sdpa"
    mask_kinds = MASK_KINDS
    score_mods = ("", "alibi")

    def __init__(self, name: str):
        self.name = name
        self.backend_name = BACKENDS[name]
        self.description = (
            "torch.nn.functional.scaled_dot_product_attention, backend chosen by torch"
            if self.backend_name is None
            else f"SDPA restricted to SDPBackend.{self.backend_name}"
        )

    def supports(self, workload: Workload, device: str) -> str | None:
        if workload.score_mod.startswith("softcap"):
            return ("SDPA cannot express softcap: it maps each score s to C*tanh(s/C) before the softmax, and "
                    "SDPA takes only an additive mask")
        why = self.mask_reason(workload)
        if why:
            return why
        need = mask_bytes(workload)
        if need > MASK_BUDGET:
            return (f"this mask needs a {need / 2**30:.1f} GiB attn_mask in SDPA (more than the "
                    f"{MASK_BUDGET / 2**30:.0f} GiB allowed)")
        if self.backend_name == "MATH" and math_bytes(workload) > MATH_BUDGET:
            what = "scores and probabilities" + (", K and V repeated per query head" if workload.gqa else "")
            return (f"the math backend would need about {math_bytes(workload) / 2**30:.0f} GiB of temporaries "
                    f"({what}), more than the {MATH_BUDGET / 2**30:.0f} GiB allowed")
        if self.backend_name in ("EFFICIENT_ATTENTION", "CUDNN_ATTENTION") and not device.startswith("cuda"):
            return "needs a CUDA GPU (no CPU kernel for this backend)"
        if self.backend_name == "CUDNN_ATTENTION":
            import torch

            if not torch.backends.cudnn.is_available():
                return "cuDNN is not available in this torch build"
        return None

    def build(self, workload: Workload, device: str, params: dict[str, Any]):
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        mask, needs_mask = plan(workload)
        extra: dict[str, Any] = {"enable_gqa": True} if workload.gqa else {}
        if needs_mask:
            extra["attn_mask"] = additive_mask(workload, device)  # once, outside the timed region
        causal = mask == "causal" and not needs_mask
        if self.backend_name is None:
            def fn(q, k, v):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **extra)
        else:
            backend = getattr(SDPBackend, self.backend_name)

            def fn(q, k, v):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **extra)

        def checked(q, k, v):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    out = fn(q, k, v)
                except RuntimeError as exc:
                    if any(s in str(exc) for s in _NO_KERNEL):
                        why = _reasons(str(w.message) for w in caught)
                        raise Unsupported(f"torch has no {self.name} kernel for this input"
                                          + (f": {why}" if why else "")) from None
                    raise
            return out

        # The first call goes through `checked` to turn torch's "no kernel" into a reason; timed
        # calls use the plain function, so the warnings machinery is not inside the timed region.
        state = {"first": True}

        def call(q, k, v):
            if state["first"]:
                state["first"] = False
                return checked(q, k, v)
            return fn(q, k, v)

        return call

    def backend(self, fn, inputs: Inputs, device: str) -> tuple[str, list[str]]:
        """Run fn once under the profiler; name the backend from the aten op that ran.

        An explicit backend is known by construction (sdpa_kernel raises when it cannot run), so only
        sdpa-auto is profiled.
        """
        if self.backend_name is not None:
            return self.backend_name.split("_")[0].lower(), []
        from torch.profiler import ProfilerActivity

        from .profiling import profiled

        activities = [ProfilerActivity.CPU]
        if device.startswith("cuda"):
            activities.append(ProfilerActivity.CUDA)
        with profiled(activities) as prof:
            fn(inputs.q, inputs.k, inputs.v)
            if device.startswith("cuda"):
                import torch

                torch.cuda.synchronize()
        names = [e.name for e in prof.events()]
        ran = [label for op, label in _OP_BACKENDS if any(op in n for n in names)]
        kernels = sorted({e.name for e in prof.events()
                          if getattr(e, "device_type", None) is not None and "CUDA" in str(e.device_type)})
        return (ran[0] if ran else "unknown"), kernels[:8]
