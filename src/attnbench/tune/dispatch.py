"""Runtime dispatch: `attention(q, k, v, ...)` calls the tuned winner for the input's bucket, else SDPA.

The dispatch table (written by `attnbench tune -o dispatch.json`) is versioned JSON. Format history:
  1: format "attnbench-dispatch"; environment (env_id + summary); entries keyed by `bucket_key`, each
     with winner impl + params, runner-up, medians and CIs, speedup over the baseline with its CI,
     and the workload it was measured on.

Buckets (`bucket_key`): dtype, head_dim, mask, GQA ratio (q_heads // kv_heads) and pass are exact;
q_len, kv_len and batch are rounded *up* to a power of two (n in (2^(k-1), 2^k] -> 2^k, so 512 -> 512,
513 -> 1024). A call's pass is "fwd" when autograd will not record it (grad mode off, or no input
requires grad), else "fwd+bwd"; tuned "bwd" workloads are kept in the table but never dispatched to.

The mask is `is_causal` (SDPA's top-left causal) or, as a keyword beyond SDPA's signature, `mask=`: a
spec.masks text such as 'causal-br' (bottom-right: decoding over a KV cache) or 'window:W' (bottom-right
causal with a left window of W keys, flash-attention's window_size=(W, 0)); it picks the bucket's mask.

Falls back to torch.nn.functional.scaled_dot_product_attention (same arguments) for: no entry for the
bucket, a table from another environment (env id differs: warned once), inputs the impls do not take
(attn_mask, dropout, non-4D, mixed devices or dtypes, custom scale, v's shape unlike k's), and a
winner that fails to build or raises (warned once; that shape then stays on SDPA). A `mask=` the
fallback meets becomes an explicit boolean attn_mask (built once per shape; none when it keeps every
pair, is_causal when it is SDPA's causal one; grouped-query K and V repeated beside a mask, which SDPA
takes with enable_gqa only in its math kernel). Decisions and built callables are memoised per call key
(call_key: shapes, dtypes, devices, is_causal, scale, enable_gqa, mask, whether autograd records the call),
so a call costs one tuple and one dict lookup (without a table, no mask= and enable_gqa not None: a lookup
on is_causal, scale and enable_gqa alone); a change to the table (its entries, environment or baseline,
or load_table(path, reload=True) for a path) drops them.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError

FORMAT = "attnbench-dispatch"
VERSION = 1

# torch dtype name (str(torch.float16) == "torch.float16") -> workload dtype
_DTYPE_NAMES = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32",
                "torch.float64": "fp64"}


def pow2_bucket(n: int) -> int:
    """The smallest power of two >= n (1 -> 1, 3 -> 4, 512 -> 512, 513 -> 1024)."""
    if n < 1:
        raise ValueError(f"bucket of a non-positive size {n}")
    return 1 << (int(n) - 1).bit_length()


def bucket_key(dtype: str, head_dim: int, causal: bool | str, gqa_ratio: int, direction: str, q_len: int,
               kv_len: int, batch: int, score_mod: str = "") -> str:
    """'fp16/d64/full/gqa1/fwd/q512/kv512/b32': exact dtype, head dim, mask, GQA ratio and pass;
    power-of-two buckets (rounded up) of q_len, kv_len and batch. `causal` is a bool or a spec.masks
    text (its key token names the mask: causal, causalbr, win4096, ...; documents share one 'doc')."""
    if isinstance(causal, bool):
        token = "causal" if causal else "full"
    else:
        from ..spec import masks

        token = "doc" if masks.kind(causal) == "document" else masks.key_token(causal)
    if score_mod:
        token += "+" + score_mod.replace(":", "")
    return (f"{dtype}/d{head_dim}/{token}/gqa{gqa_ratio}/{direction}/"
            f"q{pow2_bucket(q_len)}/kv{pow2_bucket(kv_len)}/b{pow2_bucket(batch)}")


def is_default_scale(scale: float | None, head_dim: int) -> bool:
    """Whether dispatch takes `scale` for the tuned impls' 1/sqrt(head_dim) (None is; another goes to SDPA)."""
    return scale is None or abs(scale - head_dim ** -0.5) <= 1e-12 * head_dim ** -0.5


def workload_bucket(w) -> str:
    return bucket_key(w.dtype, w.head_dim, w.mask, w.q_heads // w.kv_heads, w.direction, w.q_len,
                      w.kv_len, w.batch, w.score_mod)


@dataclass
class Entry:
    """One bucket's decision. `workload` is the Workload (as a dict) it was measured on."""

    bucket: str
    impl: str
    params: dict[str, Any]
    workload: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)  # medians, CIs, runner-up, speedup: for people

    def to_dict(self) -> dict[str, Any]:
        return {**self.data, "bucket": self.bucket, "winner": {**self.data.get("winner", {}),
                "impl": self.impl, "params": self.params}, "workload": self.workload}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Entry":
        if not isinstance(d, dict):
            raise UserError(f"dispatch table entry is malformed: {type(d).__name__}, not an object")
        try:
            win = d["winner"]
            entry = cls(bucket=d["bucket"], impl=win["impl"], params=win.get("params") or {},
                        workload=d["workload"], data={k: v for k, v in d.items()})
        except KeyError as exc:
            raise UserError(f"dispatch table entry is malformed (missing {exc})") from None
        except (TypeError, AttributeError):
            raise UserError(f"dispatch table entry is malformed: its winner is {d.get('winner')!r}") from None
        for name, want in (("bucket", str), ("impl", str), ("params", dict), ("workload", dict)):
            if not isinstance(getattr(entry, name), want):
                raise UserError(f"dispatch table entry {d.get('bucket')!r} is malformed: {name} is "
                                f"{getattr(entry, name)!r}, not a {want.__name__}")
        entry.params, entry.workload = dict(entry.params), dict(entry.workload)
        return entry


def _notifying(name: str):
    """dict's method `name`, then _Watched._changed."""
    def method(self, *args, **kwargs):
        out = getattr(dict, name)(self, *args, **kwargs)
        self._changed()
        return out

    method.__name__ = name
    return method


class _Watched(dict):
    """A table's entries or environment: a change drops the decisions its dispatchers memoised."""

    __slots__ = ("_owner",)

    def __init__(self, data=(), owner=None):
        super().__init__(data)
        self._owner = owner

    def _changed(self) -> None:
        owner = getattr(self, "_owner", None)
        if owner is not None:
            owner._changed()

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key):
        super().__delitem__(key)
        self._changed()

    def __ior__(self, other):
        super().__ior__(other)
        self._changed()
        return self

    pop = _notifying("pop")
    popitem = _notifying("popitem")
    clear = _notifying("clear")
    update = _notifying("update")
    setdefault = _notifying("setdefault")


# DispatchTable fields whose change changes a decision (entries and environment are also watched inside)
_DECIDING = ("entries", "environment", "baseline")


@dataclass(eq=False)  # identity hash: attention() keys its dispatcher cache on the table object
class DispatchTable:
    environment: dict[str, Any]
    entries: dict[str, Entry]
    baseline: str = "sdpa-auto"
    created: str = ""
    notes: list[str] = field(default_factory=list)
    source: str = ""  # the path it was loaded from, if any

    @property
    def env_id(self) -> str:
        return str(self.environment.get("env_id", ""))

    def lookup(self, bucket: str) -> Entry | None:
        return self.entries.get(bucket)

    # Dispatchers memoise decisions per call shape; a change to entries, environment or baseline (assigned,
    # or entries and environment changed in place) drops them. An Entry edited in place is not seen: replace it.
    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("entries", "environment"):
            value = _Watched(value, self)
        object.__setattr__(self, name, value)
        if name in _DECIDING:
            self._changed()

    def _watch(self, dispatcher: "Dispatcher") -> None:
        watchers = self.__dict__.get("_watchers")
        if watchers is None:
            import weakref

            watchers = self.__dict__["_watchers"] = weakref.WeakSet()
        watchers.add(dispatcher)

    def _changed(self) -> None:
        for d in list(self.__dict__.get("_watchers", ())):
            d.forget()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "created": self.created,
            "environment": self.environment,
            "baseline": self.baseline,
            "bucketing": "dtype, head_dim, causal, gqa ratio (q_heads // kv_heads), pass exact; q_len, kv_len, "
                         "batch rounded up to a power of two",
            "speedup_definition": f"median({self.baseline}) / median(winner), 95% bootstrap CI",
            "notes": list(self.notes),
            "entries": [self.entries[k].to_dict() for k in sorted(self.entries)],
        }

    def dumps(self) -> str:
        """Stable text: format and version first, then sorted keys and entries, one field per line, so
        two tables diff cleanly."""
        return json.dumps({k: _sorted(v) for k, v in self.to_dict().items()}, indent=2, default=str) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.dumps())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> "DispatchTable":
        where = f" ({source})" if source else ""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"not an attnbench dispatch table{where}: format is not {FORMAT!r}")
        version = data.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
            raise UserError(f"dispatch table{where} has version {version!r}; this attnbench reads up to "
                            f"{VERSION}: upgrade attnbench")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise UserError(f"dispatch table{where} has version {version!r}, not a whole number from 1 to {VERSION}")
        fields = {"entries": list, "environment": dict, "notes": list, "baseline": str, "created": str}
        for name, want in fields.items():
            if name in data and not isinstance(data[name], want):
                raise UserError(f"dispatch table{where} is malformed: {name} is a {type(data[name]).__name__}, "
                                f"not a {want.__name__}")
        entries = {}
        for d in data.get("entries", []):
            e = Entry.from_dict(d)
            entries[e.bucket] = e
        return cls(environment=dict(data.get("environment") or {}), entries=entries,
                   baseline=data.get("baseline", "sdpa-auto"), created=data.get("created", ""),
                   notes=[str(n) for n in data.get("notes", [])], source=source)


def _sorted(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _sorted(x[k]) for k in sorted(x)}
    if isinstance(x, (list, tuple)):
        return [_sorted(i) for i in x]
    return x


_TABLES: dict[str, DispatchTable] = {}
_LOCK = threading.Lock()


def load_table(path: str | os.PathLike, reload: bool = False) -> DispatchTable:
    """Read a dispatch table; cached by path (reload=True reads the file again)."""
    key = os.fspath(path)
    table = _TABLES.get(key)
    if table is None or reload:
        p = Path(key)
        if not p.is_file():
            raise UserError(f"dispatch table not found: {p}")
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"dispatch table {p} is not JSON: {exc}") from None
        except OSError as exc:
            raise UserError(f"dispatch table {p} cannot be read: {exc}") from None
        table = DispatchTable.from_dict(data, source=key)
        with _LOCK:
            old = _TABLES.get(key)
            _TABLES[key] = table
            # every name that led to the old table (this path as str or Path, None through $ATTNBENCH_DISPATCH)
            # now leads to the new one; a DispatchTable object given directly keeps its own dispatcher
            stale = [name for name, d in _FAST.items() if not isinstance(name, DispatchTable)
                     and (name == key or name == path or (old is not None and d.table is old))]
            for name in stale:
                del _FAST[name]
    return table


# ---------------------------------------------------------------------------------------------
# Runtime
# ---------------------------------------------------------------------------------------------

def _mask_fallback(F, mask: str, scale, enable_gqa, dropout_p: float = 0.0):
    """SDPA with a spec.masks mask made explicit for the first call's lengths and device (built then, so
    a shape that a winner serves never builds it): no attn_mask when the mask keeps every pair (one query
    at the end of a cache), is_causal when it is SDPA's own causal mask, else the boolean matrix."""
    state: dict[str, Callable] = {}

    def fn(q, k, v):
        inner = state.get("fn")
        if inner is None:
            from ..spec import masks

            q_len, kv_len = q.shape[-2], k.shape[-2]
            keep = masks.mask_matrix(mask, q_len, kv_len, device=q.device)
            if bool(keep.all()):
                inner = _sdpa_fallback(F, False, scale, enable_gqa, dropout_p=dropout_p)
            elif q_len == kv_len and bool((keep == masks.mask_matrix("causal", q_len, kv_len, device=q.device)).all()):
                inner = _sdpa_fallback(F, True, scale, enable_gqa, dropout_p=dropout_p)
            elif enable_gqa and q.shape[-3] != k.shape[-3]:
                # SDPA takes enable_gqa with a mask only in its math kernel; with the KV heads repeated, as
                # transformers' SDPA path does, the memory-efficient kernel takes the mask.
                inner = _repeat_kv(_sdpa_fallback(F, False, scale, False, keep, dropout_p), q.shape[-3] // k.shape[-3])
            else:
                inner = _sdpa_fallback(F, False, scale, enable_gqa, keep, dropout_p)
            state["fn"] = inner
        return inner(q, k, v)

    return fn


def _repeat_kv(fn, groups: int):
    def call(q, k, v):
        return fn(q, k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3))

    return call


def _resolve_mask(mask, is_causal, q, k) -> str:
    """The spec.masks text of a call: `mask=` (validated for these lengths) or SDPA's is_causal."""
    if mask is None:
        return "causal" if is_causal else "full"
    if is_causal:
        raise UserError("attnbench.attention: give is_causal=True or mask=..., not both")
    from ..spec import masks

    return masks.canonical_mask(mask, q.shape[-2], k.shape[-2])


# SDPA's backend flags are process-wide, not per thread. A winner restricted to one backend sets them for its
# call and restores them; without this lock, two threads doing so interleave their save and restore and leave
# backends switched off for the whole process, and an SDPA fallback in another thread meanwhile runs under the
# winner's flags ("No available kernel" for dropout in a CPU flash-only window). Held only once a restricted
# winner has been built in this process (_RESTRICTED), and never while torch.compile traces (it cannot enter
# a lock). SDPA called by other code than attnbench's is not covered: torch's own sdpa_kernel has the same race.
# Until then a fallback is SDPA itself (no wrapper: its cost per call is SDPA's); the first restricted winner
# makes every dispatcher forget its decisions, so their fallbacks are built again, with the lock.
_SDP_FLAGS_LOCK = threading.Lock()
_RESTRICTED = [False]


def _restrict() -> None:
    if _RESTRICTED[0]:
        return
    _RESTRICTED[0] = True
    with _LOCK:
        dispatchers = {id(d): d for d in _FAST.values()}
    for d in dispatchers.values():
        d.forget()


def _compiling() -> Callable[[], bool]:
    import torch

    return getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


def _sdpa_fallback(F, is_causal: bool, scale, enable_gqa, attn_mask=None, dropout_p: float = 0.0):
    # only the arguments that differ from SDPA's defaults: each keyword costs SDPA's parser time per call
    given = {"attn_mask": attn_mask, "dropout_p": dropout_p, "is_causal": is_causal, "scale": scale,
             "enable_gqa": bool(enable_gqa)}
    kwargs = {name: value for name, value in given.items() if value is not None and value is not False
              and not (name == "dropout_p" and value == 0.0)}
    sdpa, compiling, lock = F.scaled_dot_product_attention, _compiling(), _SDP_FLAGS_LOCK
    if not _RESTRICTED[0]:
        import functools

        return functools.partial(sdpa, **kwargs) if kwargs else sdpa

    def fn(q, k, v):
        if compiling():
            return sdpa(q, k, v, **kwargs)
        with lock:
            return sdpa(q, k, v, **kwargs)

    return fn


FLEX_MASKS = ("full", "causal", "causal-br", "window")  # mask kinds _build_flex states as a mask_mod


def _flex_mask_mod(mask: str, q_len: int, kv_len: int):
    """FlexAttention's mask_mod for a spec.masks mask (None: every pair is kept). Bottom-right kinds put
    query i at key position i + kv_len - q_len, as spec.masks says."""
    from ..spec import masks

    kind = masks.kind(mask)
    if kind == "full":
        return None
    if kind not in FLEX_MASKS:
        raise ValueError(f"no FlexAttention mask_mod for {mask!r} in dispatch")
    off = 0 if kind == "causal" else kv_len - q_len
    if kind == "window":
        width = masks.window(mask)

        def window_mod(b, h, q_idx, kv_idx):
            return (q_idx + off >= kv_idx) & (q_idx + off - kv_idx <= width)

        return window_mod

    def causal_mod(b, h, q_idx, kv_idx):
        return q_idx + off >= kv_idx

    return causal_mod


def _build_flex(workload, device: str, params: dict[str, Any]):
    """FlexAttention for dispatch: like FlexImpl.build but without torch._dynamo.reset(), which would
    throw away the caller's compiled functions. One compile per shape, on its first call, with the
    recompile limit lifted for that call so the Nth shape does not fall back to the unfused eager path;
    that path's warning is turned into an error (then the caller falls back to SDPA)."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    w = workload
    block_mask = None
    mask_mod = _flex_mask_mod(w.mask, w.q_len, w.kv_len)
    if mask_mod is not None:
        block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=w.q_len, KV_LEN=w.kv_len, device=device)
    compiled = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    kwargs: dict[str, Any] = {"block_mask": block_mask, "enable_gqa": w.gqa}
    if params:
        kwargs["kernel_options"] = dict(params)
    limits = {name: 4096 for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                                      "accumulated_cache_size_limit") if hasattr(torch._dynamo.config, name)}
    state = {"first": True}

    def fn(q, k, v):
        if state["first"]:
            with torch._dynamo.config.patch(**limits), warnings.catch_warnings():
                warnings.filterwarnings("error", message=".*flex_attention called without torch.compile.*")
                out = compiled(q, k, v, **kwargs)
            state["first"] = False
            return out
        return compiled(q, k, v, **kwargs)

    return fn


# SDPBackend name -> the torch._C flag functions sdpa_kernel toggles
_FLAGS = {"FLASH_ATTENTION": "flash", "EFFICIENT_ATTENTION": "mem_efficient", "MATH": "math",
          "CUDNN_ATTENTION": "cudnn", "OVERRIDEABLE": "overrideable"}


def _build_sdpa_backend(workload, backend_name: str):
    """SDPA restricted to one backend, like `with sdpa_kernel(backend):` but without its per-call cost
    (a context manager and getattr loops: tens of microseconds, more than a small kernel takes). Sets
    the same global flags directly and restores them; falls back to sdpa_kernel on a torch without
    these functions."""
    import torch
    import torch.nn.functional as F

    C = torch._C
    names = [n for n in _FLAGS.values() if hasattr(C, f"_set_sdp_use_{n}") and hasattr(C, f"_get_{n}_sdp_enabled")]
    causal = workload.causal
    extra = {"enable_gqa": True} if workload.gqa else {}
    if _FLAGS.get(backend_name) not in names:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, backend_name)
        _restrict()

        def slow(q, k, v):
            with _SDP_FLAGS_LOCK, sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **extra)

        return slow
    setters = tuple(getattr(C, f"_set_sdp_use_{n}") for n in names)
    getters = tuple(getattr(C, f"_get_{n}_sdp_enabled") for n in names)
    want = tuple(n == _FLAGS[backend_name] for n in names)
    sdpa, compiling, lock = F.scaled_dot_product_attention, _compiling(), _SDP_FLAGS_LOCK
    flags = tuple(zip(getters, setters, want))
    if causal:
        extra["is_causal"] = True
    _restrict()

    def restricted(q, k, v):
        # set and restore only the flags that differ (the same state as setting all, in fewer calls)
        changed = [(s, on) for g, s, on in flags if g() != on]  # the flags are bools: it was `not on`
        for s, on in changed:
            s(on)
        try:
            return sdpa(q, k, v, **extra)
        finally:
            for s, on in changed:
                s(not on)

    def fn(q, k, v):
        if compiling():
            return restricted(q, k, v)
        with lock:
            return restricted(q, k, v)

    return fn


_grad_enabled: Callable[[], bool] = lambda: False  # torch.is_grad_enabled, set by the first Dispatcher


def call_key(q, k, v, is_causal, scale, enable_gqa, mask) -> tuple:
    """The memo key of a call without attn_mask or dropout: everything a decision reads. attention() builds
    the same tuple inline (one call layer less); tests check that the two agree."""
    return (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, is_causal, scale,
            enable_gqa, _grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad), mask)


class Dispatcher:
    """Per-table state: the exact-shape cache of built callables and the warnings already given. The
    table's changes drop it (forget); _gen tells a decision made meanwhile not to store itself."""

    def __init__(self, table: DispatchTable | None):
        global _grad_enabled
        import torch
        import torch.nn.functional as F

        _grad_enabled = torch.is_grad_enabled
        self.table = table
        self._torch = torch
        self._F = F
        self._lock = threading.Lock()
        self._gen = 0
        self.forget()
        if table is not None:
            table._watch(self)

    def forget(self) -> None:
        """Drop every memoised decision, built callable, environment check and warning given."""
        with self._lock:
            self._gen += 1
            # new objects, not cleared ones: a call that read the old dict finishes with it
            self._fns: dict[tuple, Callable] = {}
            self._why: dict[tuple, str] = {}
            self._env_ok: dict[str, bool] = {}
            self._warned: set[str] = set()
            # without a table every call is SDPA, chosen by these arguments alone (given no mask= and an
            # enable_gqa that is not None: those read the shapes), so the call shape is not needed
            self._plain: dict[tuple, Callable] | None = {} if self.table is None else None

    # -- the hot path (attention() inlines it) -------------------------------------------------------
    def __call__(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                 mask=None):
        if attn_mask is not None or dropout_p:
            return self._unbucketed(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, mask)
        key = call_key(q, k, v, is_causal, scale, enable_gqa, mask)
        fn = self._fns.get(key)
        if fn is None:
            fn = self._resolve(key, q, k, v)
        return fn(q, k, v)

    def _plain_fn(self, is_causal, scale, enable_gqa) -> Callable:
        """No table: SDPA with these arguments, as _choose would pick it, memoised in _plain."""
        gen = self._gen
        fn = _sdpa_fallback(self._F, bool(is_causal), scale, enable_gqa)
        with self._lock:
            if gen == self._gen:
                self._plain[(is_causal, scale, enable_gqa)] = fn
        return fn

    def _unbucketed(self, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, mask):
        """attn_mask or dropout: SDPA, with a `mask=` made explicit (built per call: a rare path)."""
        if enable_gqa is None:
            enable_gqa = q.dim() == 4 and k.dim() == 4 and q.shape[1] != k.shape[1]
        if mask is None:
            return _sdpa_fallback(self._F, is_causal, scale, enable_gqa, attn_mask, dropout_p)(q, k, v)
        if attn_mask is not None:
            raise UserError("attnbench.attention: give attn_mask or mask=..., not both")
        text = _resolve_mask(mask, is_causal, q, k)
        return _mask_fallback(self._F, text, scale, enable_gqa, dropout_p)(q, k, v)

    # -- the slow path, once per exact key --------------------------------------------------------
    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(f"attnbench.attention: {message}", RuntimeWarning, stacklevel=4)

    def _env_matches(self, device: str) -> bool:
        kind = device.split(":")[0]
        ok = self._env_ok.get(device)
        if ok is None and kind not in ("cpu", "cuda"):
            # tables are tuned on a CPU or a CUDA GPU; the fingerprint would call any other device a CPU
            ok = self._env_ok[device] = False
            self._warn(f"{self.table.source or 'the dispatch table'} was tuned on "
                       f"{self.table.environment.get('device_kind', '?')}, these inputs are on {device}: using "
                       "scaled_dot_product_attention")
        if ok is None:
            from ..analysis import device as devmod

            fp = devmod.fingerprint(device)
            here = devmod.env_id(fp)
            ok = self.table.environment.get("device_kind", kind) == kind and here == self.table.env_id
            self._env_ok[device] = ok
            if not ok:
                src = self.table.source or "the dispatch table"
                tuned = self.table.environment
                # the table keeps a summary of its fingerprint: name what differs among the keys it kept
                diff = [f"{k}: {tuned.get(k)} -> {fp.get(k)}" for k in devmod.PERF_KEYS
                        if k in tuned and tuned.get(k) != fp.get(k)]
                what = ", ".join(diff) or "a setting outside the summary, e.g. TF32 or deterministic mode"
                self._warn(f"{src} was tuned in environment {self.table.env_id or '?'}, this is {here} "
                           f"({device}; {what}): using scaled_dot_product_attention")
        return ok

    def _decide(self, key: tuple, q, k, v) -> tuple[Any, str]:
        """(entry, workload) or (None, reason for the fallback)."""
        qs, ks, vs, qd, kd, vd, qdev, kdev, vdev, is_causal, scale, enable_gqa, grad, mask = key
        if self.table is None:
            return None, "no dispatch table"
        if len(qs) != 4 or len(ks) != 4 or len(vs) != 4:
            return None, "inputs are not 4-D (batch, heads, seq, dim)"
        if not (qdev == kdev == vdev):
            return None, "inputs on different devices"
        if not (qd == kd == vd):
            return None, "inputs of different dtypes"
        dtype = _DTYPE_NAMES.get(str(qd))
        if dtype is None:
            return None, f"dtype {qd} is not tuned"
        if tuple(vs) != tuple(ks) or qs[0] != ks[0] or qs[3] != ks[3]:
            return None, "q, k, v shapes do not form one attention problem the impls take"
        hq, hkv = qs[1], ks[1]
        if hq % hkv:
            return None, "kv heads do not divide q heads"
        if hq != hkv and enable_gqa is False:
            return None, "grouped-query shapes with enable_gqa=False"
        if not is_default_scale(scale, qs[3]):
            return None, "custom scale (tuned impls use 1/sqrt(head_dim))"
        device = str(qdev)
        if not self._env_matches(device):
            return None, "environment differs from the table's"
        from ..spec import Workload

        w = Workload(batch=qs[0], q_heads=hq, kv_heads=hkv, q_len=qs[2], kv_len=ks[2], head_dim=qs[3],
                     dtype=dtype, mask=mask, direction="fwd+bwd" if grad else "fwd")
        entry = self.table.lookup(workload_bucket(w))
        if entry is None:
            return None, f"no entry for bucket {workload_bucket(w)}"
        return (entry, w), ""

    def _resolve(self, key: tuple, q, k, v) -> Callable:
        return self._choose(key, q, k, v)[0]

    def _choose(self, key: tuple, q, k, v) -> tuple[Callable, str]:
        """The callable for a key and why, memoised. A change meanwhile (the table, or the first winner restricted
        to one SDPA backend, maybe this one: the fallbacks need the lock then) means deciding again."""
        for _ in range(3):
            gen = self._gen
            fn, why = self._decision(key, gen, q, k, v)
            with self._lock:
                if gen == self._gen:
                    self._fns[key] = fn
                    self._why[key] = why
                    break
        return fn, why

    def _decision(self, key: tuple, gen: int, q, k, v) -> tuple[Callable, str]:
        is_causal, scale, enable_gqa = key[9], key[10], key[11]
        gqa = enable_gqa if enable_gqa is not None else (q.dim() == 4 and k.dim() == 4
                                                         and q.shape[1] != k.shape[1])
        mask = _resolve_mask(key[13], is_causal, q, k)
        if mask in ("full", "causal"):
            fallback = _sdpa_fallback(self._F, mask == "causal", scale, gqa)
        else:
            fallback = _mask_fallback(self._F, mask, scale, gqa)
        found, why = self._decide(key[:13] + (mask,), q, k, v)
        fn = fallback
        if found is not None:
            entry, w = found
            if entry.impl == self.table.baseline == "sdpa-auto":
                fn, why = fallback, "winner is sdpa-auto"
            else:
                try:
                    fn = self._guarded(key, gen, self._build(entry, w, str(q.device)), fallback, entry)
                    why = f"{entry.impl}{_params_text(entry.params)} (bucket {entry.bucket})"
                except Exception as exc:  # a winner that cannot be built here is not worth failing for
                    self._warn(f"cannot build {entry.impl} for {w.label}: {type(exc).__name__}: {exc}; "
                               "using scaled_dot_product_attention")
                    fn, why = fallback, f"build failed: {exc}"
        return fn, (why if found is not None and fn is not fallback else f"sdpa fallback: {why}")

    def _build(self, entry: Entry, w, device: str) -> Callable:
        from ..impls import resolve

        impl = resolve(entry.impl)
        why = impl.supports(w, device)
        if why:
            raise RuntimeError(f"unsupported here: {why}")
        if impl.family == "flex" and w.mask_kind in FLEX_MASKS:
            return _build_flex(w, device, entry.params)
        if (impl.family == "sdpa" and getattr(impl, "backend_name", None) and not entry.params
                and w.mask in ("full", "causal")):
            return _build_sdpa_backend(w, impl.backend_name)
        return impl.build(w, device, entry.params)  # the impl states any other mask itself

    def _guarded(self, key: tuple, gen: int, fn: Callable, fallback: Callable, entry: Entry) -> Callable:
        def call(q, k, v):
            try:
                return fn(q, k, v)
            except Exception as exc:
                self._warn(f"{entry.impl} raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                           f" for shape {tuple(q.shape)}; using scaled_dot_product_attention for it from now on")
                with self._lock:
                    if gen == self._gen:
                        self._fns[key] = fallback
                        self._why[key] = f"sdpa fallback: {entry.impl} raised {type(exc).__name__}"
                return fallback(q, k, v)

        return call

    def explain(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                mask=None) -> str:
        """Which callable a call with these arguments uses, and why (builds it if needed)."""
        if attn_mask is not None or dropout_p:
            return "sdpa fallback: attn_mask or dropout given"
        key = call_key(q, k, v, is_causal, scale, enable_gqa, mask)
        why = self._why.get(key)
        return why if why is not None else self._choose(key, q, k, v)[1]


def _params_text(params: dict[str, Any]) -> str:
    return "[" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + "]" if params else ""


# table argument (None, a path, or a DispatchTable, hashed by identity) -> its Dispatcher
_FAST: dict[Any, Dispatcher] = {}


def _dispatcher(table) -> Dispatcher:
    try:
        d = _FAST.get(table)
    except TypeError:  # unhashable: not a path nor a DispatchTable
        raise UserError(f"attnbench.attention: table must be a path or a DispatchTable, not a "
                        f"{type(table).__name__}") from None
    if d is not None:
        return d
    if table is None:
        path = os.environ.get("ATTNBENCH_DISPATCH")
        loaded = load_table(path) if path else None
    elif isinstance(table, DispatchTable):
        loaded = table
    elif isinstance(table, (str, os.PathLike)):
        loaded = load_table(table)
    else:
        raise UserError(f"attnbench.attention: table must be a path or a DispatchTable, not a "
                        f"{type(table).__name__}")
    with _LOCK:
        d = _FAST.get(loaded) if loaded is not None else None
        if d is None:
            d = Dispatcher(loaded)
            if loaded is not None:
                _FAST[loaded] = d
        _FAST[table] = d
    return d


def attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, *,
              table=None, mask=None):
    """scaled_dot_product_attention's signature; runs the tuned winner for the input's bucket.

    table: a dispatch table path or a loaded DispatchTable (default: $ATTNBENCH_DISPATCH, else plain
    SDPA). enable_gqa: as SDPA's (default False: K and V with fewer heads than Q are SDPA's error, or its
    broadcast of a single head); None infers it from the head counts. mask: instead of
    is_causal, a spec.masks text ('causal-br', 'window:W', ...), aligned bottom-right as decoding and
    flash-attention's sliding windows are; without a table entry it becomes an explicit SDPA mask.
    """
    try:
        d = _FAST[table]
    except (KeyError, TypeError):  # first call with this table, or an unhashable one (its UserError)
        d = _dispatcher(table)
    if attn_mask is None and not dropout_p:
        plain = d._plain
        if plain is not None and mask is None and enable_gqa is not None:
            fn = plain.get((is_causal, scale, enable_gqa)) or d._plain_fn(is_causal, scale, enable_gqa)
            return fn(q, k, v)
        # call_key inlined: the memoised decision for this call shape costs one tuple and one dict lookup
        fn = d._fns.get((q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device,
                         is_causal, scale, enable_gqa,
                         _grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad), mask))
        if fn is not None:
            return fn(q, k, v)
    return d(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, mask)


def explain(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, *,
            table=None, mask=None) -> str:
    """What `attention` with the same arguments runs, in words."""
    return _dispatcher(table).explain(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, mask)
