"""An optional attention library as an impl: found without importing it, imported lazily, its refusals made Unsupported."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from ...spec import Workload
from ..base import Impl, Inputs, Unsupported

# Words with which the libraries' own argument checks refuse an input (TORCH_CHECK texts of flash-attn,
# FlashInfer's ValueErrors, cuDNN's support checks). Anything else raised by a call is a real error.
REFUSALS = ("not support", "only support", "unsupported", "must be divisible", "at most", "requires",
            "no operator found", "does not support", "is not supported", "not implemented", "must be a multiple")


@dataclass(frozen=True)
class LibraryState:
    """ready (with its version), missing (with the line that installs it) or broken (with its own reason)."""

    status: str
    version: str = ""
    detail: str = ""

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def text(self) -> str:
        if self.status == "ready":
            return f"ready ({self.version})" if self.version else "ready"
        if self.status == "missing":
            return f"not installed: {self.detail}"
        return f"installed{' ' + self.version if self.version else ''} but unusable: {self.detail}"


def first_line(exc: BaseException, limit: int = 300) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def module_findable(dotted: str) -> bool:
    """Whether `dotted` could be imported, decided without importing it or its parents (a subpackage is
    looked for in its top-level package's folders)."""
    if dotted in sys.modules:
        return sys.modules[dotted] is not None
    top, _, rest = dotted.partition(".")
    try:
        spec = sys.modules[top].__spec__ if top in sys.modules else importlib.util.find_spec(top)
    except (ImportError, ValueError, AttributeError):
        return False
    if spec is None:
        return False
    if not rest:
        return True
    for folder in spec.submodule_search_locations or ():
        base = os.path.join(folder, *rest.split("."))
        if os.path.isdir(base) or os.path.exists(base + ".py"):
            return True
    return False


def refusal(exc: BaseException) -> bool:
    """Whether an exception from a library call is the library declining the input (not a failure)."""
    text = str(exc).lower()
    if "out of memory" in text or "cuda error" in text or "illegal memory" in text:
        return False
    if isinstance(exc, (NotImplementedError, AssertionError)):
        return True
    if type(exc).__name__ == "cudnnGraphNotSupportedError":
        return True
    return isinstance(exc, (RuntimeError, ValueError)) and any(word in text for word in REFUSALS)


def layout_of(workload: Workload) -> str:
    """The workload's KV layout: 'dense' or 'paged:P'."""
    return workload.layout


def page_size(workload: Workload) -> int:
    return int(layout_of(workload).split(":", 1)[1])


class LibraryImpl(Impl):
    """An impl backed by a library that may be absent. Subclasses set the library's names and declarations
    and implement `make(lib, workload, device, params)`, which returns (call, ran, notes)."""

    family = "adapter"
    module = ""                # what build() imports
    probe_module = ""          # what must be findable for the library to count as installed (default: module)
    dists: tuple[str, ...] = ()  # distribution names, for the version
    install = ""               # the line that installs it
    extra = ""                 # attnbench's optional-dependency group
    dtypes: tuple[str, ...] = ("fp16", "bf16")
    passes: tuple[str, ...] = ("fwd",)
    head_dims = ""             # the library's documented head-dim range (enforced by the library itself)
    gqa = "any ratio"
    paged = False              # takes a paged KV cache

    def __init__(self) -> None:
        self._state: LibraryState | None = None

    # -- the library ----------------------------------------------------------------------------
    def installed(self) -> bool:
        """Found on the path (nothing imported): such adapters join the default impl list."""
        return module_findable(self.probe_module or self.module)

    def state(self) -> LibraryState:
        if self._state is None:
            self._state = self._probe()
        return self._state

    def _probe(self) -> LibraryState:
        if not self.installed():
            return LibraryState("missing", detail=self.install)
        try:
            lib = importlib.import_module(self.module)
        except Exception as exc:  # an extension built for another torch, a missing shared library, ...
            return LibraryState("broken", self._version(None), first_line(exc))
        version = self._version(lib)
        why = self.unusable(lib)
        return LibraryState("broken", version, why) if why else LibraryState("ready", version)

    def _version(self, lib: Any) -> str:
        from importlib.metadata import PackageNotFoundError, version

        for dist in self.dists:
            try:
                return version(dist)
            except PackageNotFoundError:
                continue
        top = sys.modules.get(self.module.split(".")[0])
        return str(getattr(lib, "__version__", "") or getattr(top, "__version__", "") or "")

    def unusable(self, lib: Any) -> str:
        """The library's own reason it cannot run although it imported ('' if none)."""
        return ""

    def load(self) -> Any:
        state = self.state()
        if not state.ready:
            raise Unsupported(f"{self.name}: {state.text()}")
        return importlib.import_module(self.module)

    def declares(self) -> str:
        """One line: what the adapter declares it computes."""
        mods = [m for m in self.score_mods if m]
        parts = ["masks " + ",".join(self.mask_kinds), "mods " + (",".join(mods) or "none"), ",".join(self.dtypes),
                 "passes " + ",".join(self.passes), f"GQA {self.gqa}"]
        if self.head_dims:
            parts.append(f"D {self.head_dims}")
        if self.paged:
            parts.append("paged KV")
        return "; ".join(parts)

    # -- the Impl protocol ----------------------------------------------------------------------
    def workload_reason(self, workload: Workload) -> str | None:
        """A reason this library computes something else for this workload (conventions, not support)."""
        return None

    @property
    def layouts(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("dense", "paged") if self.paged else ("dense",)

    def supports(self, workload: Workload, device: str) -> str | None:
        w = workload
        state = self.state()
        if not state.ready:
            return f"{self.name}: {state.text()}"
        why = self.mask_reason(w) or self.workload_reason(w)
        if why:
            return why
        if w.dtype not in self.dtypes:
            return f"{self.name} takes {', '.join(self.dtypes)}, not {w.dtype}"
        paged = layout_of(w).startswith("paged:")
        if paged and not self.paged:
            return f"{self.name}: a paged KV cache is not wired for this library"
        passes = ("fwd",) if paged else self.passes
        if w.direction not in passes:
            return f"{self.name} has no {w.direction} pass here (it computes: {', '.join(passes)})"
        if not device.startswith("cuda"):
            return "needs a CUDA GPU"
        return None

    def make(self, lib: Any, workload: Workload, device: str,
             params: dict[str, Any]) -> tuple[Callable[..., Any], str, list[str]]:
        raise NotImplementedError

    def build(self, workload: Workload, device: str, params: dict[str, Any]):
        lib = self.load()
        try:
            call, ran, notes = self.make(lib, workload, device, params)
        except Exception as exc:
            if refusal(exc):
                raise Unsupported(f"{self.name}: {first_line(exc)}") from None
            raise
        name = self.name

        def fn(q, k, v):
            try:
                return call(q, k, v)
            except Unsupported:
                raise
            except Exception as exc:
                if refusal(exc):
                    raise Unsupported(f"{name}: {first_line(exc)}") from None
                raise

        fn.ran = getattr(call, "ran", ran)
        fn.notes = notes
        fn.inner = call
        return fn

    def backend(self, fn, inputs: Inputs, device: str) -> tuple[str, list[str]]:
        """What ran (the library's dispatch where it reports one) and, on a GPU, the kernels the profiler saw;
        the layout conversions made outside the timed call are listed first."""
        inner = getattr(fn, "inner", fn)
        ran = str(getattr(inner, "ran", None) or getattr(fn, "ran", self.name))
        notes = list(getattr(fn, "notes", []))
        if device.startswith("cuda"):
            notes += profiled_kernels(fn, inputs)
        return ran, notes


def profiled_kernels(fn, inputs: Inputs, limit: int = 8) -> list[str]:
    import torch
    from torch.profiler import ProfilerActivity

    from ..profiling import profiled

    try:
        with profiled([ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn(inputs.q, inputs.k, inputs.v)
            torch.cuda.synchronize()
    except Exception:  # the profiler is a nicety; what ran is known without it
        return []
    names = sorted({e.name for e in prof.events()
                    if getattr(e, "device_type", None) is not None and "CUDA" in str(e.device_type)})
    return [f"kernel: {n}" for n in names[:limit]]
