"""The attention workloads a transformers model produces: its config (read locally), its layers, their masks.

A transformers sliding window of `sliding_window` keys (a query sees itself and the sliding_window - 1 keys
before it: masking_utils.sliding_window_overlay) is spec.masks' `window:W` with W = sliding_window - 1,
as transformers itself passes window_size=(sliding_window - 1, ...) to flash-attention. A layer's mask is
bottom-right aligned, as a model's attention over a KV cache is: `causal` for prefill (q_len == kv_len),
`causal-br` for decoding; a window only where it hides a key (kv_len > sliding_window), else the causal
mask it equals.

Phases (`model_workloads`): prefill is q_len = kv_len = seq; decode is one query over a cache holding seq
tokens, the new one included. A sliding layer's cache (transformers' DynamicSlidingWindowLayer, what
generate() builds from the config) keeps only its last sliding_window - 1 tokens, so its decode step sees
min(seq, sliding_window) keys, every one of them in the window: causal-br.

Only a decoder-only causal LM is read (its model_type one AutoModelForCausalLM builds, causal attention). A
layer that soft-caps its scores (Gemma 2's attn_logit_softcapping) runs attnbench's eager soft-capped
attention, never the table (attnbench.attention takes no score modifier): its workload carries the
`softcap:C` score modifier, and `model_workloads` leaves it out, since no tuned entry would be used. So
does a layer whose attention module's `scaling` (what it passes as the scale; Gemma's query_pre_attn_scalar
** -0.5) is not 1/sqrt(head_dim): dispatch sends a custom scale to SDPA (`layer_scales` reads each layer's
from the model built on the meta device, as explain_model reads it from the model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import UserError
from ..spec import Workload
from ..spec import masks as maskmod
from ..spec.workload import DTYPE_ALIASES

MISSING = "transformers is not installed: pip install 'attnbench[hf]'"
PHASES = ("prefill", "decode")


def require_transformers():
    """The transformers module, or a one-line UserError saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise UserError(MISSING) from None
    return transformers


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_config(source: Any):
    """A transformers config from a config.json path, a model folder, or a model id already in the local
    Hugging Face cache; a config object is returned as it is. Never touches the network: a model id is looked
    up in the cache by huggingface_hub's try_to_load_from_cache (files only), then read as a local folder."""
    if not isinstance(source, (str, os.PathLike)):
        if hasattr(source, "model_type") and hasattr(source, "to_dict"):
            return source
        raise UserError(f"not a transformers config, path or model id: {source!r}")
    tf = require_transformers()
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"{path} is a folder without a config.json")
    if path.exists():
        try:
            return tf.AutoConfig.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # transformers raises ValueError, OSError, KeyError or JSON errors here
            raise UserError(f"cannot read a transformers config from {path}: {_first_line(exc)}") from None
    if text.endswith(".json"):
        raise UserError(f"config file not found: {path}")
    # Not AutoConfig.from_pretrained(text, local_files_only=True): on a cache miss huggingface_hub still
    # contacts the Hub (building its request headers fetches a registry) unless HF_HUB_OFFLINE is set.
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(text, "config.json")
    except Exception:  # not a valid repo id (huggingface_hub's HFValidationError)
        found = None
    if not isinstance(found, str):
        raise UserError(f"{text!r} is neither a config.json, a model folder, nor a model id in the local Hugging "
                        "Face cache (attnbench reads only local files and never downloads)")
    try:
        return tf.AutoConfig.from_pretrained(str(Path(found).parent), local_files_only=True)
    except Exception as exc:
        raise UserError(f"cannot read the cached config of {text!r}: {_first_line(exc)}") from None


def _require_causal_lm(config, cfg) -> None:
    """A one-line UserError unless the config is a decoder-only causal LM with causal attention: an encoder
    (ViT), an encoder-decoder (T5) or a bidirectional decoder has none of the workloads collected here."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    kinds = [getattr(c, "model_type", None) for c in (config, cfg)]
    if getattr(config, "is_encoder_decoder", False) or not any(k in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES for k in kinds):
        raise UserError(f"config of model_type {kinds[0]!r} is not a decoder-only causal LM (AutoModelForCausalLM does "
                        "not build it, or it is an encoder-decoder): attnbench collects causal decoder attention only")
    if getattr(cfg, "use_bidirectional_attention", False) or getattr(cfg, "is_causal", True) is False:
        raise UserError(f"config of model_type {kinds[0]!r} attends bidirectionally: attnbench collects causal "
                        "decoder attention only")


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer's shape. sliding_window: transformers' (keys a query sees, itself included);
    None for full causal attention."""

    index: int
    q_heads: int
    kv_heads: int
    head_dim: int
    sliding_window: int | None = None
    softcap: float | None = None  # the scores' tanh soft-cap (attn_logit_softcapping), None when plain


def text_config(config):
    """The decoder's config (a multimodal model's text part)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def attention_layers(config) -> list[AttentionLayer]:
    """Every attention layer of the model, in order. Layer types follow transformers' cache
    (cache_utils.get_layer_types_and_kwargs): `layer_types` when the config has them, else all sliding
    when it has a sliding_window, else all full. Other layer types (chunked, linear) are refused."""
    cfg = text_config(config)
    kind = getattr(cfg, "model_type", "?")
    _require_causal_lm(config, cfg)
    try:
        n = int(cfg.num_hidden_layers)
        hq = int(cfg.num_attention_heads)
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"config of model_type {kind!r} has no num_hidden_layers / num_attention_heads: "
                        "not a decoder attnbench can read") from None
    hkv = int(getattr(cfg, "num_key_value_heads", None) or hq)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq
    window = getattr(cfg, "sliding_window", None)
    cap = getattr(cfg, "attn_logit_softcapping", None)
    cap = float(cap) if cap else None
    types = getattr(cfg, "layer_types", None)
    if types is None:
        if window is not None:
            types = ["sliding_attention"] * n
        elif getattr(cfg, "attention_chunk_size", None) is not None:
            types = ["chunked_attention"] * n
        else:
            types = ["full_attention"] * n
    layers = []
    for i, t in enumerate(list(types)[:n]):
        if t == "full_attention":
            layers.append(AttentionLayer(i, hq, hkv, int(head_dim), None, cap))
        elif t == "sliding_attention":
            if not window:
                raise UserError(f"layer {i} of {kind!r} is a sliding layer but the config has no sliding_window")
            layers.append(AttentionLayer(i, hq, hkv, int(head_dim), int(window), cap))
        else:
            raise UserError(f"layer {i} of {kind!r} is {t!r}: attnbench maps only full_attention and "
                            "sliding_attention layers onto masks")
    return layers


@lru_cache(maxsize=1024)  # called on every attention call of a model: parse the mask text once per shape
def layer_mask(q_len: int, kv_len: int, sliding_window: int | None) -> str:
    """The spec.masks text of a causal layer's attention over kv_len keys, the last query at the last key."""
    text = f"window:{sliding_window - 1}" if sliding_window is not None and kv_len > sliding_window else "causal-br"
    return maskmod.canonical_mask(text, q_len, kv_len)


def config_dtype(config, dtype: str | None = None) -> str:
    """`dtype` if given, else the config's dtype (torch_dtype in older configs), as a Workload dtype."""
    given = dtype
    if given is None:
        cfg = text_config(config)
        given = getattr(cfg, "dtype", None) or getattr(config, "dtype", None)
        if given is None:
            raise UserError("the config gives no dtype: pass --dtype (fp16, bf16, fp32)")
    name = DTYPE_ALIASES.get(str(given).replace("torch.", "").lower())
    if name is None:
        raise UserError(f"dtype {given!r} is not one attnbench measures; pass --dtype (fp16, bf16, fp32)")
    return name


def layer_workload(layer: AttentionLayer, phase: str, batch: int, seq: int, dtype: str,
                   direction: str = "fwd") -> Workload:
    """The workload one layer runs in one phase (see the module docstring for the phases)."""
    if phase == "prefill":
        q_len = kv_len = seq
    elif phase == "decode":
        q_len, kv_len = 1, seq if layer.sliding_window is None else min(seq, layer.sliding_window)
    else:
        raise UserError(f"unknown phase {phase!r}; choose {', '.join(PHASES)}")
    return Workload(batch=batch, q_heads=layer.q_heads, kv_heads=layer.kv_heads, q_len=q_len, kv_len=kv_len,
                    head_dim=layer.head_dim, dtype=dtype, mask=layer_mask(q_len, kv_len, layer.sliding_window),
                    score_mod=f"softcap:{layer.softcap:g}" if layer.softcap else "", direction=direction)


def module_scales(model) -> dict[int, float]:
    """Each decoder attention module's `scaling` by layer index: the scale it passes to the attention function
    (a multimodal model's vision layers, not causal, are not the decoder's)."""
    return {m.layer_idx: m.scaling for m in model.modules()
            if isinstance(getattr(m, "layer_idx", None), int) and isinstance(getattr(m, "scaling", None), float)
            and getattr(m, "is_causal", False)}


def layer_scales(config) -> dict[int, float]:
    """module_scales of the model the config builds, built on the meta device (no memory, no weights, no
    download): the scales its layers will pass, however the model computes them."""
    import torch

    tf = require_transformers()
    _require_causal_lm(config, text_config(config))
    try:
        with torch.device("meta"):
            model = tf.AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # a model class that cannot be built from its config alone
        kind = getattr(text_config(config), "model_type", "?")
        raise UserError(f"cannot build {kind!r} from its config to read its layers' scales: {_first_line(exc)}") from None
    return module_scales(model)


def _layers_left_out(layers: list[AttentionLayer], scales: dict[int, float]) -> tuple[list[AttentionLayer], list[str]]:
    """The layers that can run a tuned entry, and a line for each kind left out: soft-capped layers, and each
    scale that is not 1/sqrt(head_dim) (dispatch sends those to SDPA)."""
    from ..tune.dispatch import is_default_scale

    def names(group, verb: str):  # "layer 3 scales its", "layers 0, 1 scale their"
        one = len(group) == 1
        return (f"layer{'' if one else 's'} " + ", ".join(str(la.index) for la in group)
                + f" {verb}{'s its' if one else ' their'}")

    notes, out = [], set()
    capped = [la for la in layers if la.softcap is not None]
    if capped:
        notes.append(f"{names(capped, 'soft-cap')} scores (attn_logit_softcapping={capped[0].softcap:g}): "
                     "attnbench's eager soft-capped attention runs there, never the table; not tuned")
        out.update(la.index for la in capped)
    custom: dict[tuple[float, int], list[AttentionLayer]] = {}
    for la in layers:
        if la.index not in out and not is_default_scale(scales.get(la.index), la.head_dim):
            custom.setdefault((scales[la.index], la.head_dim), []).append(la)
    for (scale, d), group in custom.items():
        notes.append(f"{names(group, 'scale')} scores by {scale:.6g}, not 1/sqrt({d}) = {d ** -0.5:.6g}: "
                     "attnbench.attention sends a custom scale to scaled_dot_product_attention, never the table; "
                     "not tuned")
        out.update(la.index for la in group)
    return [la for la in layers if la.index not in out], notes


def model_workloads(config, batches: Iterable[int], seqs: Iterable[int], dtype: str | None = None,
                    direction: str = "fwd", scales: dict[int, float] | None = None,
                    say: Callable[[str], None] | None = None) -> list[Workload]:
    """The distinct attention workloads of a model for these batch sizes and sequence lengths: prefill,
    then (for the forward pass only: training does not decode) decode, in layer order, de-duplicated.
    Layers that never run the table (soft-capped, or a scale that is not 1/sqrt(head_dim)) are left out, with
    a line to `say` for each kind; a model with only those is a UserError. scales: each layer's, as
    layer_scales gives them (default: read now)."""
    layers = attention_layers(config)
    plain, notes = _layers_left_out(layers, layer_scales(config) if scales is None else scales)
    if not plain:
        raise UserError(f"no attention layer of {getattr(text_config(config), 'model_type', 'the model')!r} would "
                        f"run a tuned entry: {'; '.join(notes)}: nothing to tune")
    if say is not None:
        for note in notes:
            say(note)
    layers = plain
    dt = config_dtype(config, dtype)
    batches, seqs = [int(b) for b in batches], [int(s) for s in seqs]
    if not batches or not seqs:
        raise UserError("collecting a model's workloads needs at least one batch size and one sequence length")
    phases = PHASES if direction == "fwd" else ("prefill",)
    out = [layer_workload(layer, phase, b, s, dt, direction)
           for phase in phases for b in batches for s in seqs for layer in layers]
    return list(dict.fromkeys(out))


def describe(config) -> str:
    """'llama: 4 layers, H32/8 D64' (+ the sliding layers and their window)."""
    layers = attention_layers(config)
    first = layers[0]
    heads = f"H{first.q_heads}" + (f"/{first.kv_heads}" if first.kv_heads != first.q_heads else "")
    text = f"{getattr(text_config(config), 'model_type', 'model')}: {len(layers)} layers, {heads} D{first.head_dim}"
    sliding = [la for la in layers if la.sliding_window is not None]
    if sliding:
        text += f", {len(sliding)} sliding (window {sliding[0].sliding_window})"
    if first.softcap:
        text += f", softcap {first.softcap:g}"
    return text


def int_list(text: str, flag: str) -> list[int]:
    from ..spec import parse_list

    try:
        values = [int(x) for x in parse_list(text)]
    except ValueError:
        raise UserError(f"{flag}: expected whole numbers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise UserError(f"{flag}: must be positive, got {text!r}")
    return values


def workloads_from_options(source, batch: str | None, seq: str | None, dtype: str | None = None,
                           direction: str | None = None, say: Callable[[str], None] | None = None) -> list[Workload]:
    """`tune --from-model`: the model's workloads from the comma-list options (batch default 1; seq required;
    one dtype, default the config's; passes fwd (prefill and decode, the default) and fwd+bwd (prefill)).
    say: gets a line for each kind of layer left out (see model_workloads)."""
    from ..spec import parse_list

    if seq is None:
        raise UserError("--from-model needs --seq: the sequence lengths to collect the model's workloads at")
    if dtype is not None and "," in dtype:
        raise UserError(f"--dtype: give one value with --from-model, got {dtype!r}")
    passes = parse_list(direction) or ["fwd"]
    for p in passes:
        if p not in ("fwd", "fwd+bwd"):
            raise UserError(f"--pass with --from-model is fwd (prefill and decode) or fwd+bwd (prefill), got {p!r}")
    config = load_config(source)
    batches, seqs = int_list(batch or "1", "--batch"), int_list(seq, "--seq")
    scales = layer_scales(config)
    out = [w for i, p in enumerate(passes)
           for w in model_workloads(config, batches, seqs, dtype, p, scales, say if i == 0 else None)]
    return list(dict.fromkeys(out))
