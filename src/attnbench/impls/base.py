"""The Impl protocol: name, params, supports(workload, device) -> reason | None, prepare(...) -> callable."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

from ..spec import Workload

TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "fp64": "float64"}

# f(q, k, v) -> out: attention with the workload's causality, GQA and scale already decided.
AttnFn = Callable[[Any, Any, Any], Any]


def torch_dtype(name: str):
    import torch

    return getattr(torch, TORCH_DTYPES[name])


class Unsupported(Exception):
    """Raised by an impl when it finds, at build or first call, that it cannot run this workload."""


class Impl:
    """An attention implementation. Subclasses set `name` and implement `build`.

    `build(workload, device, params)` returns an AttnFn; compilation belongs in build (or the first
    call, which the runner times apart from the samples). `context()` wraps correctness and timing
    (FlexAttention uses it to fail on recompiles rather than fall back to eager silently).
    """

    name: str = ""
    family: str = ""
    description: str = ""
    mask_kinds: tuple[str, ...] = ("full", "causal")   # spec.masks kinds it computes
    score_mods: tuple[str, ...] = ("",)                 # score modifier kinds it computes ('' = none)

    def supports(self, workload: Workload, device: str) -> str | None:
        """None if it can run here, else the reason it cannot. Subclasses call mask_reason first."""
        return self.mask_reason(workload)

    def mask_reason(self, workload: Workload) -> str | None:
        """Why the workload's mask or score modifier is not one this impl computes (None: it is)."""
        kind = workload.mask_kind
        if kind not in self.mask_kinds:
            return f"{self.name or type(self).__name__} does not implement the {kind} mask"
        mod = workload.score_mod.split(":", 1)[0]
        if mod not in self.score_mods:
            return f"{self.name or type(self).__name__} does not implement the {mod} score modifier"
        return None

    def build(self, workload: Workload, device: str, params: dict[str, Any]) -> AttnFn:
        raise NotImplementedError

    def param_space(self, workload: Workload, device: str) -> list[dict[str, Any]]:
        """Configurations a tuner may try; [{}] means 'no parameters'."""
        return [{}]

    def context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backend(self, fn: AttnFn, inputs: "Inputs", device: str) -> tuple[str, list[str]]:
        """(what actually ran, kernel or op names seen). Default: the impl's own name."""
        return self.name, []


@dataclass
class Inputs:
    q: Any
    k: Any
    v: Any
    grad_out: Any = None
    seed: int = 0

    def clone(self) -> "Inputs":
        """The same values in new memory (a graph timer's extra copies)."""
        g = self.grad_out
        return Inputs(self.q.clone(), self.k.clone(), self.v.clone(), None if g is None else g.clone(), self.seed)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.k, self.v, self.grad_out) if t is not None)


def make_inputs(workload: Workload, device: str, seed: int) -> Inputs:
    """Fresh random (never zero) inputs, drawn on the device from a seeded generator."""
    import torch

    dtype = torch_dtype(workload.dtype)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    w = workload

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dtype)

    q = rand(w.batch, w.q_heads, w.q_len, w.head_dim)
    k = rand(w.batch, w.kv_heads, w.kv_len, w.head_dim)
    v = rand(w.batch, w.kv_heads, w.kv_len, w.head_dim)
    grad = rand(w.batch, w.q_heads, w.q_len, w.head_dim) if w.direction != "fwd" else None
    return Inputs(q, k, v, grad, seed)


def make_call(fn: AttnFn, workload: Workload, inputs: Inputs) -> Callable[[], Any]:
    """A zero-argument callable that performs the workload's pass (fwd, bwd or fwd+bwd) once.

    bwd runs the forward once here and times only the gradient computation (retain_graph keeps
    the saved tensors); fwd+bwd times both. torch.autograd.grad avoids accumulating into .grad.

    The callable carries `copy_bytes` (its inputs' size, plus as much again for what it writes) and
    `on_copy()`, which makes the same call on a fresh copy of the inputs: a graph timer captures several
    calls in one replay, each on its own copy, so that each reads its inputs from a flushed L2.
    """
    import torch

    q, k, v = inputs.q, inputs.k, inputs.v
    if workload.direction == "fwd":
        call = lambda: fn(q, k, v)  # noqa: E731
    else:
        q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
        g = inputs.grad_out
        if workload.direction == "fwd+bwd":
            call = lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), g)  # noqa: E731
        else:
            out = fn(q, k, v)
            call = lambda: torch.autograd.grad(out, (q, k, v), g, retain_graph=True)  # noqa: E731
    call.copy_bytes = 2 * inputs.nbytes()
    call.on_copy = lambda: make_call(fn, workload, inputs.clone())
    return call
