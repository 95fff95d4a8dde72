"""Tiny transformers configs (random weights, no download) and a spy kernel for the integration tests."""

from collections import Counter

import torch
import torch.nn.functional as F

from attnbench.spec import masks

CALLS = Counter()
SPY = "tests.integrations.tiny:masked_spy"
SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, dtype="float32")


def masked_spy(q, k, v, is_causal=False, enable_gqa=False, mask=None, **_):
    """Exact attention for every mask a model layer produces; counts its calls by mask."""
    CALLS[mask or ("causal" if is_causal else "full")] += 1
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=enable_gqa)
    keep = masks.mask_matrix(mask, q.shape[-2], k.shape[-2], device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=enable_gqa)


masked_spy.mask_kinds = ("full", "causal", "causal-br", "window")


def llama(**changes):
    from transformers import LlamaConfig

    return LlamaConfig(**{**SMALL, **changes})


def mqa(**changes):
    """Llama with one KV head for all query heads (multi-query attention)."""
    return llama(**{"num_key_value_heads": 1, **changes})


def mistral(window: int = 16, **changes):
    from transformers import MistralConfig

    return MistralConfig(**{**SMALL, "sliding_window": window, **changes})


def qwen2(window: int = 16, **changes):
    """Layer 0 full, layer 1 sliding (max_window_layers=1)."""
    from transformers import Qwen2Config

    return Qwen2Config(**{**SMALL, "use_sliding_window": True, "sliding_window": window, "max_window_layers": 1,
                          **changes})


def model(config, attn="sdpa", seed=0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def tokens(batch=2, seq=24, vocab=96, seed=0):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def gemma2(window: int = 8, softcap: float = 1.0, **changes):
    """Layers alternate sliding and full (layer_types), scores soft-capped at `softcap`."""
    from transformers import Gemma2Config

    return Gemma2Config(**{**SMALL, "head_dim": 16, "sliding_window": window, "query_pre_attn_scalar": 16,
                           "attn_logit_softcapping": softcap, **changes})


def gemma3(window: int = 8, scalar: int = 16, **changes):
    """Layers alternate sliding and full; the scale is query_pre_attn_scalar ** -0.5 (1/sqrt(16) = the default)."""
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(**{**SMALL, "head_dim": 16, "sliding_window": window, "query_pre_attn_scalar": scalar,
                               "sliding_window_pattern": 2, **changes})
