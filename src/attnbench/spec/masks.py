"""Mask kinds and score modifiers: parsing, canonical text, exact pair counts and the boolean mask itself.

Conventions (every impl and the float64 reference follow them; reports state them):

- `full`: every query sees every key.
- `causal`: top-left aligned, as torch SDPA's is_causal: query i sees keys 0..i.
- `causal-br`: bottom-right aligned, as flash-attention and decoding: query i sits at position
  p = i + kv_len - q_len and sees keys 0..p (for q_len == kv_len this is `causal`, and is written so).
- `window:W`: bottom-right causal with a left window of W, as flash-attention's window_size=(W, 0):
  query i (position p as above) sees keys p-W..p, i.e. at most W+1 keys.
- `document:L1+L2+...`: packed sequences of those lengths (summing to q_len == kv_len), causal within
  each document and blind across documents (flash_attn_varlen_func with causal=True on the packed
  batch). `document:rand:N` is N documents with lengths drawn by a generator seeded with N and the
  sequence length, so the same text always means the same packing.

Score modifiers change the scaled scores s = q.k * scale before the mask and the softmax:

- `softcap:C`: s -> C * tanh(s / C) (Gemma-2's logit soft-capping).
- `alibi`: s -> s + m_h * (key position - query position), m_h = 2^(-8 (h+1) / Hq) for query head h
  (ALiBi's geometric slopes), positions aligned as the mask aligns them (bottom-right for causal-br,
  window and document's packed positions; top-left otherwise).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

from ..errors import UserError

MASK_KINDS = ("full", "causal", "causal-br", "window", "document")
SCORE_MODS = ("", "softcap", "alibi")
_DOC_KEY_LIMIT = 6   # documents listed in a key before it switches to a count and a hash


def kind(mask: str) -> str:
    """'window:128' -> 'window'."""
    return mask.split(":", 1)[0]


def _positive_int(text: str, what: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise UserError(f"{what}: expected a whole number, got {text!r}") from None
    if value <= 0:
        raise UserError(f"{what}: must be positive, got {value}")
    return value


def random_lengths(n_docs: int, total: int) -> tuple[int, ...]:
    """A seeded packing of `total` tokens into `n_docs` documents of at least one token each."""
    if n_docs > total:
        raise UserError(f"document:rand:{n_docs} needs at least {n_docs} tokens, the sequence has {total}")
    import numpy as np

    rng = np.random.default_rng([n_docs, total])
    cuts = np.sort(rng.choice(np.arange(1, total), size=n_docs - 1, replace=False)) if n_docs > 1 else []
    edges = [0, *[int(c) for c in cuts], total]
    return tuple(b - a for a, b in zip(edges, edges[1:]))


def canonical_mask(text: str, q_len: int, kv_len: int) -> str:
    """The one spelling of a mask for these lengths (validated); UserError on nonsense."""
    text = str(text).strip().lower()
    name, _, arg = text.partition(":")
    if name in ("full", "none", "no"):
        return "full"
    if name == "causal":
        return "causal"
    if name in ("causal-br", "causal_br", "bottom-right"):
        return "causal" if q_len == kv_len else "causal-br"
    if name in ("window", "sliding", "swa"):
        try:
            w = int(arg)
        except ValueError:
            raise UserError(f"mask {text!r}: expected window:W with W a whole number of keys") from None
        if w < 0:
            raise UserError(f"mask {text!r}: the window must be >= 0")
        return f"window:{w}"
    if name in ("document", "doc"):
        if q_len != kv_len:
            raise UserError(f"mask {text!r}: packed documents need q_len == kv_len, got {q_len} and {kv_len}")
        if arg.startswith("rand:"):
            n = _positive_int(arg[5:], f"mask {text!r}")
            random_lengths(n, q_len)  # validates
            return f"document:rand:{n}"
        lengths = [_positive_int(x, f"mask {text!r}") for x in re.split(r"[+,]", arg) if x.strip()]
        if not lengths:
            raise UserError(f"mask {text!r}: expected document:L1+L2+... or document:rand:N")
        if sum(lengths) != q_len:
            raise UserError(f"mask {text!r}: document lengths sum to {sum(lengths)}, the sequence has {q_len}")
        return "document:" + "+".join(str(n) for n in lengths)
    raise UserError(f"unknown mask {text!r}; choose full, causal, causal-br, window:W, document:L1+L2+... "
                    "or document:rand:N")


def canonical_score_mod(text: str) -> str:
    text = str(text or "").strip().lower()
    if text in ("", "none"):
        return ""
    if text == "alibi":
        return "alibi"
    name, _, arg = text.partition(":")
    if name == "softcap":
        try:
            cap = float(arg)
        except ValueError:
            raise UserError(f"score modifier {text!r}: expected softcap:C with C a number") from None
        if not cap > 0:
            raise UserError(f"score modifier {text!r}: the cap must be > 0")
        return f"softcap:{cap:g}"
    raise UserError(f"unknown score modifier {text!r}; choose softcap:C or alibi")


@lru_cache(maxsize=64)
def doc_lengths(mask: str, seq_len: int) -> tuple[int, ...]:
    """The document lengths of a document mask (resolving document:rand:N)."""
    arg = mask.split(":", 1)[1]
    if arg.startswith("rand:"):
        return random_lengths(int(arg[5:]), seq_len)
    return tuple(int(x) for x in arg.split("+"))


def window(mask: str) -> int:
    return int(mask.split(":", 1)[1])


def simplest(mask: str, q_len: int, kv_len: int) -> str:
    """The plainest mask that keeps exactly the same pairs: 'full' when it keeps every pair (a decode row
    under causal-br), 'causal' for one document or a window wider than the sequence, else the mask itself.
    Impls use it to take their fastest exact path (is_causal, no mask) without changing the workload."""
    if attended_pairs(mask, q_len, kv_len) == q_len * kv_len:
        return "full"
    k = kind(mask)
    if k == "document" and len(doc_lengths(mask, q_len)) == 1:
        return "causal"
    if k == "window" and window(mask) >= kv_len - 1:
        return canonical_mask("causal-br", q_len, kv_len)
    return mask


def doc_ids(mask: str, seq_len: int, device=None):
    """Document index of every token of a document mask (int32, torch)."""
    import torch

    lengths = doc_lengths(mask, seq_len)
    return torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32),
                                   torch.tensor(lengths)).to(device)


def key_token(mask: str) -> str:
    """The mask's part of a workload key: [a-z0-9.-] only ('_' separates a key's parts)."""
    k = kind(mask)
    if k in ("full", "causal"):
        return k
    if k == "causal-br":
        return "causalbr"
    if k == "window":
        return f"win{window(mask)}"
    arg = mask.split(":", 1)[1]
    if arg.startswith("rand:"):
        return f"docrand{arg[5:]}"
    lengths = arg.split("+")
    if len(lengths) <= _DOC_KEY_LIMIT:
        return "doc" + "-".join(lengths)
    return f"doc{len(lengths)}x" + hashlib.sha256(arg.encode()).hexdigest()[:8]


def score_mod_token(score_mod: str) -> str:
    return score_mod.replace(":", "")


def label(mask: str) -> str:
    """Short human text: '' for full, 'causal', 'causal-br', 'window:W', 'docs:N'."""
    k = kind(mask)
    if k == "full":
        return ""
    if k == "document":
        arg = mask.split(":", 1)[1]
        n = arg[5:] if arg.startswith("rand:") else str(len(arg.split("+")))
        return f"docs:{n}" + ("(rand)" if arg.startswith("rand:") else "")
    return mask


def query_offset(mask: str, q_len: int, kv_len: int) -> int:
    """Position of query row 0 in key coordinates: bottom-right alignment for causal-br and window."""
    return kv_len - q_len if kind(mask) in ("causal-br", "window") else 0



def _row_span(mask: str, i: int, q_len: int, kv_len: int, docs: tuple[int, ...] | None) -> tuple[int, int]:
    """[lo, hi) of the keys query row i sees (every kind is one contiguous span per row)."""
    k = kind(mask)
    if k == "full":
        return 0, kv_len
    p = i + query_offset(mask, q_len, kv_len)
    if k in ("causal", "causal-br"):
        return 0, max(0, min(kv_len, p + 1))
    if k == "window":
        return max(0, p - window(mask)), max(0, min(kv_len, p + 1))
    start = 0
    for n in docs or ():
        if i < start + n:
            return start, i + 1
        start += n
    raise ValueError("row outside the documents")


def spans(mask: str, q_len: int, kv_len: int) -> list[tuple[int, int]]:
    """[lo, hi) of visible keys for every query row (a row may see none: lo == hi)."""
    docs = doc_lengths(mask, q_len) if kind(mask) == "document" else None
    return [_row_span(mask, i, q_len, kv_len, docs) for i in range(q_len)]


@lru_cache(maxsize=256)
def attended_pairs(mask: str, q_len: int, kv_len: int) -> int:
    """Exactly the (query, key) pairs the mask keeps, per batch element and head (closed forms; the
    tests check them against the boolean mask)."""
    k = kind(mask)
    if k == "full":
        return q_len * kv_len
    if k in ("causal", "causal-br"):
        off = query_offset(mask, q_len, kv_len)
        # row i sees clamp(i + off + 1, 0, kv_len) keys
        total = 0
        first_full = max(0, kv_len - off - 1)       # rows from here on see every key
        lo_row = max(0, -off)                       # rows before this see none (off < 0: q_len > kv_len, br)
        ramp_end = min(q_len, first_full)
        if ramp_end > lo_row:
            a, b = lo_row + off + 1, ramp_end - 1 + off + 1
            total += (a + b) * (ramp_end - lo_row) // 2
        total += max(0, q_len - max(first_full, lo_row)) * kv_len
        return total
    if k == "document":
        return sum(n * (n + 1) // 2 for n in doc_lengths(mask, q_len))
    return sum(hi - lo for lo, hi in spans(mask, q_len, kv_len))


@lru_cache(maxsize=256)
def keys_read(mask: str, q_len: int, kv_len: int) -> int:
    """Key (and value) rows that at least one query sees: the minimum K/V traffic under the mask."""
    k = kind(mask)
    if k in ("full", "document"):
        return kv_len
    if k in ("causal", "causal-br"):
        off = query_offset(mask, q_len, kv_len)
        return max(0, min(kv_len, q_len - 1 + off + 1))
    covered = 0
    last = 0
    for lo, hi in spans(mask, q_len, kv_len):  # spans move right with the row: merge as we go
        lo = max(lo, last)
        if hi > lo:
            covered += hi - lo
            last = hi
    return covered


def alibi_slopes(q_heads: int) -> list[float]:
    return [2.0 ** (-8.0 * (h + 1) / q_heads) for h in range(q_heads)]


def mask_matrix(mask: str, q_len: int, kv_len: int, rows: slice | None = None, device=None,
                cols: slice | None = None):
    """The boolean (q rows, key cols) matrix, True where a pair is kept (torch, built without Python loops).
    rows and cols default to all of q_len and kv_len."""
    import torch

    i = torch.arange(q_len, device=device)[rows or slice(0, q_len)].unsqueeze(1)
    j = torch.arange(kv_len, device=device)[cols or slice(0, kv_len)].unsqueeze(0)
    k = kind(mask)
    if k == "full":
        return torch.ones(i.shape[0], j.shape[1], dtype=torch.bool, device=device)
    if k == "document":
        ids = doc_ids(mask, q_len, device)
        return (j <= i) & (ids[i] == ids[j])
    p = i + query_offset(mask, q_len, kv_len)
    keep = j <= p
    if k == "window":
        keep &= j >= p - window(mask)
    return keep


def query_positions(mask: str, q_len: int, kv_len: int, rows: slice | None = None, device=None):
    """Position of each query row in key coordinates (for position-dependent score modifiers)."""
    import torch

    rows = rows or slice(0, q_len)
    return torch.arange(q_len, device=device)[rows] + query_offset(mask, q_len, kv_len)


def apply_score_mod(scores, score_mod: str, mask: str, q_len: int, kv_len: int, rows: slice | None = None,
                    heads_total: int | None = None, *, cols: slice | None = None, head_offset: int = 0):
    """scores (B, Hq, rows, cols), already scaled -> modified scores (same dtype). `heads_total`: the
    workload's query heads when `scores` holds only some, heads head_offset.. (ALiBi's slopes depend on it);
    cols: the key columns scores holds (default all kv_len)."""
    if not score_mod:
        return scores
    import torch

    if score_mod.startswith("softcap:"):
        cap = float(score_mod.split(":", 1)[1])
        return cap * torch.tanh(scores / cap)
    # alibi
    hq = scores.shape[1]
    slopes = alibi_slopes(heads_total or hq)[head_offset:head_offset + hq]
    slopes = torch.tensor(slopes, dtype=scores.dtype, device=scores.device).view(1, hq, 1, 1)
    qpos = query_positions(mask, q_len, kv_len, rows, scores.device).to(scores.dtype).view(1, 1, -1, 1)
    kpos = torch.arange(kv_len, device=scores.device, dtype=scores.dtype)[cols or slice(0, kv_len)].view(1, 1, 1, -1)
    return scores + slopes * (kpos - qpos)
