"""triton-fa: attnbench's own Triton flash-attention (FA2 forward and backward, split-KV decode)."""

from .impl import TritonFAImpl

__all__ = ["TritonFAImpl"]
