"""Implementation registry: name -> Impl (built-ins, entry-point plugins, and 'module:function' specs)."""

from __future__ import annotations

from ..errors import UserError
from .adapters import adapter_impls
from .base import Impl, Inputs, Unsupported, footprint_bytes, make_call, make_inputs
from .flex import FlexImpl
from .plugins import as_impl, entry_point_impls, load_object
from .reference import ReferenceImpl
from .sdpa import BACKENDS, SdpaImpl
from .triton_fa import TritonFAImpl

__all__ = ["Alias", "Impl", "Inputs", "Unsupported", "footprint_bytes", "make_call", "make_inputs", "registry",
           "resolve", "resolve_many"]


def builtin_impls() -> dict[str, Impl]:
    impls: dict[str, Impl] = {name: SdpaImpl(name) for name in BACKENDS}
    impls["flex"] = FlexImpl()
    impls["reference"] = ReferenceImpl()
    impls["triton-fa"] = TritonFAImpl()
    return impls


def registry(include_absent: bool = False) -> dict[str, Impl]:
    """Every impl known by name: built-ins first, then the library adapters whose library is installed (all
    of them with include_absent, as `attnbench list` and name lookups use), then entry-point plugins (which
    cannot shadow either)."""
    impls = builtin_impls()
    for name, impl in adapter_impls().items():
        if include_absent or impl.installed():
            impls[name] = impl
    for name, impl in entry_point_impls().items():
        impls.setdefault(name, impl)
    return impls


class Alias(Impl):
    """`impl` under another name, so one impl can be two cells of a run (an A/A comparison's B side)."""

    def __init__(self, impl: Impl, name: str):
        self.impl, self.name = impl, name
        self.family, self.description = impl.family, impl.description

    def supports(self, workload, device):
        return self.impl.supports(workload, device)

    def build(self, workload, device, params):
        return self.impl.build(workload, device, params)

    def param_space(self, workload, device):
        return self.impl.param_space(workload, device)

    def context(self):
        return self.impl.context()

    def backend(self, fn, inputs, device):
        return self.impl.backend(fn, inputs, device)


def resolve(name: str | Impl, known: dict[str, Impl] | None = None) -> Impl:
    """An impl by name; an Impl object (an alias, say) is taken as it is."""
    if isinstance(name, Impl):
        return name
    known = registry(include_absent=True) if known is None else known
    if name in known:
        return known[name]
    if ":" in name:
        return as_impl(name, load_object(name))
    raise UserError(f"unknown impl {name!r}; known: {', '.join(known)} (or give package.module:function)")


def resolve_many(names: list[str | Impl]) -> list[Impl]:
    known = registry(include_absent=True)
    return [resolve(n, known) for n in names]
