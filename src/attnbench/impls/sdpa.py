"""torch SDPA backends, chosen with torch.nn.attention.sdpa_kernel; sdpa-auto records what actually ran."""

from __future__ import annotations

import warnings
from typing import Any

from ..spec import Workload
from .base import Impl, Inputs, Unsupported

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

    def __init__(self, name: str):
        self.name = name
        self.backend_name = BACKENDS[name]
        self.description = (
            "torch.nn.functional.scaled_dot_product_attention, backend chosen by torch"
            if self.backend_name is None
            else f"SDPA restricted to SDPBackend.{self.backend_name}"
        )

    def supports(self, workload: Workload, device: str) -> str | None:
        why = self.mask_reason(workload)
        if why:
            return why
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

        causal = workload.causal
        extra = {"enable_gqa": True} if workload.gqa else {}
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
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if device.startswith("cuda"):
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            fn(inputs.q, inputs.k, inputs.v)
            if device.startswith("cuda"):
                import torch

                torch.cuda.synchronize()
        names = [e.name for e in prof.events()]
        ran = [label for op, label in _OP_BACKENDS if any(op in n for n in names)]
        kernels = sorted({e.name for e in prof.events()
                          if getattr(e, "device_type", None) is not None and "CUDA" in str(e.device_type)})
        return (ran[0] if ran else "unknown"), kernels[:8]
