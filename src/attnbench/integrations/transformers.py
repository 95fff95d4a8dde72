"""transformers' attention through the tuned dispatch: `register()` adds the "attnbench" implementation.

After `register(table="dispatch.json")`, `from_pretrained(..., attn_implementation="attnbench")` or
`model.set_attn_implementation("attnbench")` sends every attention layer to `attnbench.attention`.

What reaches the attention function, and what it does (transformers 5.x; checked against
integrations/sdpa_attention.py and masking_utils.py):

- query (B, Hq, Sq, D), key and value (B, Hkv, Sk, D), not repeated for grouped-query attention: passed
  as they are with enable_gqa; `scaling` (the layer's, usually 1/sqrt(D)) is passed as the scale, so a
  custom one falls back to SDPA by dispatch's own rule (and tune --from-model leaves such layers out).
  The output goes back as (B, Sq, Hq, D), as SDPA's integration returns it, with no attention weights.
- The mask. The "attnbench" mask function is transformers' sdpa_mask, which returns None where SDPA's
  is_causal suffices (no padding: prefill, or one query at the end of the cache), with one addition: a
  sliding-window layer without padding whose queries end at the last key also gets None, instead of a
  dense (q_len, kv_len) matrix, and its window comes from the `sliding_window` argument, as transformers'
  flash-attention path takes it. A None mask is read as SDPA's integration reads it (causal for a prefill,
  every key for one query; keys past the queries cut off on a static cache's prefill), made a
  spec.masks text by hf_workloads.layer_mask: the bucket's mask.
- Anything else (a padding or custom mask, dropout, a position bias, output_attentions) goes to
  transformers' own sdpa_attention_forward unchanged: the same call "sdpa" makes.
- A `softcap` (Gemma 2's attn_logit_softcapping), which SDPA refuses and attnbench.attention does not
  take, runs an eager soft-capped attention here (scores, tanh cap, the given mask or the layer's own,
  softmax in float32), as transformers' eager path computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..spec import Workload
from .hf_workloads import (PHASES, attention_layers, config_dtype, layer_mask, layer_workload, module_scales,
                           require_transformers)

NAME = "attnbench"
_STATE: dict[str, Any] = {"table": None, "names": set()}
SOFTCAP_RUNS = "attnbench's eager soft-capped attention (attnbench.attention takes no score modifier)"


def register(table=None, name: str = NAME) -> str:
    """Register `name` with transformers' AttentionInterface and AttentionMaskInterface; returns the name.

    table: a dispatch table path or a loaded DispatchTable (default: $ATTNBENCH_DISPATCH, else plain SDPA),
    read now so a bad path fails here, and read again on each call, so a table tuned anew into the same file
    is the one used. Calling it again replaces the table: registering is idempotent.
    """
    tf = require_transformers()
    from ..tune.dispatch import DispatchTable, load_table

    if table is not None and not isinstance(table, DispatchTable):
        table = load_table(table, reload=True)
    _STATE["table"] = table
    tf.AttentionInterface.register(name, attention_forward)
    from transformers.masking_utils import AttentionMaskInterface

    AttentionMaskInterface.register(name, attnbench_mask)
    _STATE["names"].add(name)
    return name


def current_table():
    """The table register() was last given (None: $ATTNBENCH_DISPATCH, else plain SDPA)."""
    return _STATE["table"]


# ---------------------------------------------------------------------------------------------
# The mask function
# ---------------------------------------------------------------------------------------------

def _no_padding(attention_mask, kv_length: int, kv_offset: int) -> bool:
    if attention_mask is None:
        return True
    cols = attention_mask[:, kv_offset:kv_offset + kv_length]
    return bool(cols.all()) if cols.shape[-1] else True


def _is_plain_window(mask_function, q_length: int, kv_length: int, q_offset: int, kv_offset: int,
                     sliding_window: int, device) -> bool:
    """Whether mask_function keeps, for the first and last query rows, exactly a sliding window's keys:
    a check on two rows (cheap) that the function is the plain sliding-window one and not a variant."""
    import torch

    rows = torch.tensor([q_offset, q_offset + q_length - 1], device=device)
    cols = torch.arange(kv_length, device=device) + kv_offset
    zero = torch.zeros(1, dtype=torch.long, device=device)
    got = mask_function(zero[:, None, None, None], zero[None, :, None, None], rows[None, None, :, None],
                        cols[None, None, None, :])
    want = (cols[None, :] <= rows[:, None]) & (cols[None, :] > rows[:, None] - sliding_window)
    return bool((got.reshape(2, kv_length) == want).all())


def attnbench_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0,
                   mask_function=None, attention_mask=None, local_size: int | None = None,
                   allow_is_causal_skip: bool = True, **kwargs):
    """transformers' sdpa_mask, except that a plain sliding-window mask without padding, its last query at
    the last key (prefill, or decoding), is None too: the attention function applies the window."""
    from transformers.masking_utils import sdpa_mask

    config = kwargs.get("config")
    window = getattr(config, "sliding_window", None) if config is not None else None
    if (local_size is not None and local_size == window and mask_function is not None and allow_is_causal_skip
            and getattr(config, "attention_chunk_size", None) is None
            and isinstance(q_offset, int) and isinstance(kv_offset, int)
            and (q_length == kv_length and q_offset == kv_offset
                 or q_length == 1 and q_offset - kv_offset == kv_length - 1)
            and _no_padding(attention_mask, kv_length, kv_offset)
            and _is_plain_window(mask_function, q_length, kv_length, q_offset, kv_offset, window,
                                 kwargs.get("device", "cpu"))):
        return None
    if mask_function is not None:
        kwargs["mask_function"] = mask_function
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, attention_mask=attention_mask,
                     local_size=local_size, allow_is_causal_skip=allow_is_causal_skip, **kwargs)


# ---------------------------------------------------------------------------------------------
# The attention function
# ---------------------------------------------------------------------------------------------

def _layer_is_causal(module, kwargs) -> bool:
    is_causal = kwargs.get("is_causal")
    return bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)


def _softcapped_attention(query, key, value, attention_mask, dropout: float, scaling, softcap: float,
                          sliding_window: int | None, causal: bool):
    """Eager attention with soft-capped scores, cap * tanh(scores / cap) -> (B, Sq, Hq, D). A None mask is
    the layer's own (top-left on a static cache's prefill, bottom-right otherwise, as attention_forward)."""
    import torch

    from ..spec import masks

    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    q_len = query.shape[2]
    if attention_mask is None and causal and 1 < q_len < key.shape[2]:
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    scores = softcap * torch.tanh(scores / softcap)
    lowest = torch.finfo(scores.dtype).min  # not -inf: a row with every key masked (padding) stays finite
    if attention_mask is None:
        if causal:
            kv_len = key.shape[2]
            keep = masks.mask_matrix(layer_mask(q_len, kv_len, sliding_window), q_len, kv_len, device=query.device)
            scores = scores.masked_fill(~keep, lowest)
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., :key.shape[2]], lowest)
    else:
        scores = scores + attention_mask[..., :key.shape[2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout:
        probs = torch.nn.functional.dropout(probs, p=dropout, training=True)
    return torch.matmul(probs, value).transpose(1, 2).contiguous()


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      sliding_window: int | None = None, **kwargs):
    """transformers' attention-function signature -> (attn_output (B, Sq, Hq, D), None)."""
    softcap = kwargs.get("softcap")
    if softcap is not None:
        # SDPA refuses a soft-cap and dropping it changes every score: computed here, never silently ignored
        out = _softcapped_attention(query, key, value, attention_mask, dropout, scaling, float(softcap),
                                    sliding_window, _layer_is_causal(module, kwargs))
        return out, None
    if (attention_mask is not None or dropout or kwargs.get("position_bias") is not None
            or kwargs.get("output_attentions")):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    from ..tune.dispatch import attention

    causal = _layer_is_causal(module, kwargs)
    q_len = query.shape[2]
    if causal and 1 < q_len < key.shape[2]:
        # As SDPA's integration does: with no mask, a causal prefill into a static cache attends top-left, to
        # the first q_len keys (the rest are empty slots), so it reads only those.
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    mask = layer_mask(q_len, key.shape[2], sliding_window) if causal else "full"
    out = attention(query, key, value, scale=scaling, enable_gqa=query.shape[1] != key.shape[1],
                    table=_STATE["table"], mask=mask)
    return out.transpose(1, 2).contiguous(), None


# ---------------------------------------------------------------------------------------------
# Which impl each layer uses
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerDispatch:
    """What one layer's attention runs in one phase."""

    layer: int
    phase: str
    workload: Workload
    runs: str  # attnbench.explain's text: the winner and its bucket, or the fallback and why

    def line(self) -> str:
        return f"layer {self.layer} {self.phase}: {self.workload.label} -> {self.runs}"


def explain_model(model, batch: int, seq: int, table=None, direction: str = "fwd") -> list[LayerDispatch]:
    """For each attention layer and phase (prefill and decode; prefill alone for a training pass,
    direction "fwd+bwd"), what `attnbench.attention` runs for the shape that layer produces at this batch
    size and sequence length (hf_workloads has the shapes). model: a transformers model (its config,
    dtype and device are used). table: default the one register() holds. No input is allocated: views of
    one element, expanded, carry the shapes. Each layer's scale is its (causal) attention module's `scaling`,
    as the model passes it; a soft-capped layer runs attnbench's eager soft-capped attention, never the table;
    a model whose attn_implementation is not one register() added runs that instead.
    """
    import torch

    from ..tune.dispatch import explain

    param = next(model.parameters())
    dt = config_dtype(model.config, str(param.dtype))
    table = table if table is not None else _STATE["table"]
    impl = getattr(model.config, "_attn_implementation", None)
    scales = module_scales(model)  # what tune --from-model reads too (hf_workloads.layer_scales)
    grad = direction != "fwd"
    out = []
    for phase in PHASES if not grad else ("prefill",):
        for layer in attention_layers(model.config):
            w = layer_workload(layer, phase, batch, seq, dt, direction)
            if impl not in _STATE["names"]:
                runs = f"{impl} (the model's attn_implementation: not attnbench)"
            elif layer.softcap is not None:
                runs = SOFTCAP_RUNS
            else:
                with torch.set_grad_enabled(grad):
                    one = torch.empty(1, 1, 1, w.head_dim, dtype=param.dtype, device=param.device, requires_grad=grad)
                    q = one.expand(w.batch, w.q_heads, w.q_len, w.head_dim)
                    k = one.expand(w.batch, w.kv_heads, w.kv_len, w.head_dim)
                    runs = explain(q, k, k, scale=scales.get(layer.index), enable_gqa=w.gqa, table=table, mask=w.mask)
            out.append(LayerDispatch(layer.index, phase, w, runs))
    return out
