"""User kernels: `--impl package.module:function` and the `attnbench.impls` entry-point group.

A plugin function has SDPA's signature: fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False,
scale=None, enable_gqa=False) -> out (enable_gqa is passed only for grouped-query workloads).
Optional attributes on the function: `supports(workload, device) -> str | None`,
`param_space(workload, device) -> list[dict]` (params then arrive as keyword arguments), and
`mask_kinds` / `score_mods` (tuples of spec.masks kinds the function computes; default full and causal,
no score modifier): for any other declared mask the function gets `mask=` (spec.masks text, with
is_causal=False) and, with a modifier, `score_mod=` keyword arguments.
An entry point may also name an Impl instance or subclass.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from ..errors import UserError
from ..spec import Workload
from .base import Impl

ENTRY_POINT_GROUP = "attnbench.impls"


class FunctionImpl(Impl):
    family = "plugin"

    def __init__(self, name: str, fn: Callable[..., Any]):
        self.name = name
        self.fn = fn
        self.mask_kinds = tuple(getattr(fn, "mask_kinds", Impl.mask_kinds))
        self.score_mods = tuple(getattr(fn, "score_mods", Impl.score_mods))
        doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
        self.description = doc[0] if doc else f"plugin {name}"

    def supports(self, workload: Workload, device: str) -> str | None:
        why = self.mask_reason(workload)
        if why:
            return why
        check = getattr(self.fn, "supports", None)
        return check(workload, device) if callable(check) else None

    def param_space(self, workload: Workload, device: str) -> list[dict[str, Any]]:
        space = getattr(self.fn, "param_space", None)
        return list(space(workload, device)) if callable(space) else [{}]

    def build(self, workload: Workload, device: str, params: dict[str, Any]):
        user = self.fn
        kwargs: dict[str, Any] = {"is_causal": workload.causal, **params}
        if workload.gqa:
            kwargs["enable_gqa"] = True
        if workload.mask not in ("full", "causal"):
            kwargs["mask"] = workload.mask
        if workload.score_mod:
            kwargs["score_mod"] = workload.score_mod
        return lambda q, k, v: user(q, k, v, **kwargs)


def load_object(spec: str) -> Any:
    """'package.module:attr' -> the object, or a one-line UserError."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"--impl {spec!r}: expected a registered name or 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UserError(f"--impl {spec!r}: cannot import {module_name}: {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"--impl {spec!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def as_impl(name: str, obj: Any) -> Impl:
    if isinstance(obj, Impl):
        return obj
    if isinstance(obj, type) and issubclass(obj, Impl):
        return obj()
    if callable(obj):
        return FunctionImpl(name, obj)
    raise UserError(f"impl {name!r} is neither a function nor an attnbench Impl")


def entry_point_impls() -> dict[str, Impl]:
    from importlib.metadata import entry_points

    found: dict[str, Impl] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = as_impl(ep.name, ep.load())
        except Exception as exc:  # a broken plugin must not break the tool
            found[ep.name] = BrokenImpl(ep.name, f"entry point {ep.value} failed to load: {exc}")
    return found


class BrokenImpl(Impl):
    family = "plugin"

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        self.description = reason

    def supports(self, workload: Workload, device: str) -> str | None:
        return self.reason
