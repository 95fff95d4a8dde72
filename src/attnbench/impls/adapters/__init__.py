"""The field's kernels as impls: flash-attn 2/3/4, FlashInfer, xFormers and cuDNN's frontend, each imported lazily."""

from __future__ import annotations

from .cudnn_fe import CudnnFrontendImpl
from .fa2 import FlashAttn2
from .fa3 import FlashAttn3
from .fa4 import FlashAttn4
from .flashinfer import FlashInferImpl
from .library import LibraryImpl, LibraryState
from .xformers import XFormersImpl

ADAPTERS = (FlashAttn2, FlashAttn3, FlashAttn4, FlashInferImpl, XFormersImpl, CudnnFrontendImpl)

__all__ = ["ADAPTERS", "LibraryImpl", "LibraryState", "adapter_impls"]


def adapter_impls() -> dict[str, LibraryImpl]:
    """Every adapter by name, new instances (each probes its library at most once, when first asked)."""
    return {cls.name: cls() for cls in ADAPTERS}
