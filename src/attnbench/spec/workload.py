"""What is measured: the frozen Workload (shape, dtype, mask, pass), validated on construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from . import masks

DTYPES = ("fp16", "bf16", "fp32", "fp64")
DTYPE_ALIASES = {
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "fp64": "fp64", "float64": "fp64", "double": "fp64",
}
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4, "fp64": 8}
PASSES = ("fwd", "bwd", "fwd+bwd")
LAYOUTS = ("dense", "paged")


def canonical_layout(text: str) -> str:
    """'dense' or 'paged:P' (P tokens per page, a positive whole number); UserError otherwise."""
    text = str(text or "dense").strip().lower()
    if text == "dense":
        return text
    name, _, arg = text.partition(":")
    if name == "paged":
        try:
            size = int(arg)
        except ValueError:
            size = 0
        if size > 0:
            return f"paged:{size}"
    raise UserError(f"unknown layout {text!r}; choose dense or paged:P (P tokens per page, e.g. paged:16)")


@dataclass(frozen=True, order=True)
class Workload:
    """One attention problem. Q is (batch, q_heads, q_len, head_dim); K and V are (batch, kv_heads, kv_len, head_dim).

    `mask` is one of spec.masks' kinds (full, causal, causal-br, window:W, document:...) and `score_mod`
    one of its score modifiers ('' for none). `causal` is kept for SDPA-style callers: it is true exactly
    when the mask is top-left causal, and `causal=True` alone means mask 'causal'.

    `layout` is how K and V are stored: 'dense' (B, Hkv, S, D) tensors, or 'paged:P', a pool of pages of
    P tokens with a block table per sequence, as vLLM and FlashInfer keep a KV cache (impls.base.PagedKV
    says the exact shapes). A paged cache is an inference layout: forward pass only.
    """

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    dtype: str = "fp16"
    causal: bool = False
    direction: str = "fwd"
    mask: str = ""
    score_mod: str = ""
    layout: str = "dense"

    def __post_init__(self) -> None:
        for name in ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        dtype = DTYPE_ALIASES.get(str(self.dtype).lower())
        if dtype is None:
            raise UserError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        object.__setattr__(self, "dtype", dtype)
        if self.q_heads % self.kv_heads:
            raise UserError(
                f"kv_heads ({self.kv_heads}) must divide q_heads ({self.q_heads}) for grouped-query attention"
            )
        if not isinstance(self.causal, bool):
            raise UserError(f"causal must be true or false, got {self.causal!r}")
        if self.mask in ("", None):
            mask = "causal" if self.causal else "full"
        else:
            mask = masks.canonical_mask(self.mask, self.q_len, self.kv_len)
            if self.causal and mask != "causal":
                raise UserError(f"causal=true contradicts mask {mask!r}: give the mask alone")
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "causal", mask == "causal")
        object.__setattr__(self, "score_mod", masks.canonical_score_mod(self.score_mod))
        if self.direction not in PASSES:
            raise UserError(f"unknown pass {self.direction!r}; choose one of {', '.join(PASSES)}")
        layout = canonical_layout(self.layout)
        if layout != "dense" and self.direction != "fwd":
            raise UserError(f"layout {layout!r} is a KV cache for inference: pass fwd only, got {self.direction!r}")
        object.__setattr__(self, "layout", layout)

    @property
    def gqa(self) -> bool:
        return self.kv_heads != self.q_heads

    @property
    def key(self) -> str:
        """A stable, readable identifier: the store and the dispatch table key on it."""
        parts = [
            f"b{self.batch}", f"hq{self.q_heads}", f"hkv{self.kv_heads}", f"sq{self.q_len}",
            f"sk{self.kv_len}", f"d{self.head_dim}", self.dtype, masks.key_token(self.mask),
        ]
        if self.score_mod:
            parts.append(masks.score_mod_token(self.score_mod))
        if self.layout != "dense":  # dense keys stay as they were before layouts existed
            parts.append(self.layout.replace(":", ""))
        parts.append(self.direction)
        return "_".join(parts)

    @property
    def label(self) -> str:
        """Short human label, e.g. 'B32 H8 S512 D64 fp16'."""
        heads = f"H{self.q_heads}" if not self.gqa else f"H{self.q_heads}/{self.kv_heads}"
        seq = f"S{self.q_len}" if self.q_len == self.kv_len else f"S{self.q_len}x{self.kv_len}"
        out = f"B{self.batch} {heads} {seq} D{self.head_dim} {self.dtype}"
        for extra in (masks.label(self.mask), self.score_mod, "" if self.layout == "dense" else self.layout):
            if extra:
                out += f" {extra}"
        if self.direction != "fwd":
            out += f" {self.direction}"
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Workload":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> "Workload":
        """A copy with fields changed; changing `causal` alone re-derives the mask (and `mask` alone, causal)."""
        if "causal" in changes and "mask" not in changes:
            changes["mask"] = ""
        elif "mask" in changes and "causal" not in changes:
            changes["causal"] = False
        return dataclasses.replace(self, **changes)

    @property
    def page_size(self) -> int | None:
        """Tokens per page of a paged layout (None: dense)."""
        return int(self.layout.split(":", 1)[1]) if self.layout != "dense" else None

    @property
    def mask_kind(self) -> str:
        """'window:128' -> 'window'."""
        return masks.kind(self.mask)
