"""Implementation registry: name -> Impl (built-ins, entry-point plugins, and 'module:function' specs)."""

from __future__ import annotations

from ..errors import UserError
from .base import Impl, Inputs, Unsupported, make_call, make_inputs
from .flex import FlexImpl
from .plugins import as_impl, entry_point_impls, load_object
from .reference import ReferenceImpl
from .sdpa import BACKENDS, SdpaImpl

__all__ = ["Impl", "Inputs", "Unsupported", "make_call", "make_inputs", "registry", "resolve", "resolve_many"]


def builtin_impls() -> dict[str, Impl]:
    impls: dict[str, Impl] = {name: SdpaImpl(name) for name in BACKENDS}
    impls["flex"] = FlexImpl()
    impls["reference"] = ReferenceImpl()
    return impls


def registry() -> dict[str, Impl]:
    """Every impl known by name: built-ins first, then entry-point plugins (which cannot shadow them)."""
    impls = builtin_impls()
    for name, impl in entry_point_impls().items():
        impls.setdefault(name, impl)
    return impls


def resolve(name: str, known: dict[str, Impl] | None = None) -> Impl:
    known = registry() if known is None else known
    if name in known:
        return known[name]
    if ":" in name:
        return as_impl(name, load_object(name))
    raise UserError(f"unknown impl {name!r}; known: {', '.join(known)} (or give package.module:function)")


def resolve_many(names: list[str]) -> list[Impl]:
    known = registry()
    return [resolve(n, known) for n in names]
