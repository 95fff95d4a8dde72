"""cuDNN's SDPA through nvidia-cudnn-frontend's Python graph API, its execution plans exposed as tunable params.

API from NVIDIA/cudnn-frontend (docs/operations/Attention.md, python/pygraph/sdpa.cpp, samples/python
50_scaled_dot_product_attention): cudnn.pygraph(io_data_type, intermediate_data_type, compute_data_type,
handle); graph.tensor(name, dim, stride, data_type) in BHSD dims (any strides); graph.sdpa(q, k, v,
generate_stats, attn_scale, diagonal_alignment, diagonal_band_left_bound, diagonal_band_right_bound,
use_alibi_mask) -> [O, Stats]; graph.sdpa_backward(q, k, v, o, dO, stats, ...) -> [dQ, dK, dV]; then
validate, build_operation_graph, create_execution_plans([heur_mode, FALLBACK]), check_support, and
build_plan_at_index(i) / execute_plan_at_index(pack, workspace, i, handle). It needs frontend 1.13 or newer
(older ones lack generate_stats, those before 1.10 the diagonal bands too: reported unusable, with the version).
Masks: right bound 0 is causal, TOP_LEFT or BOTTOM_RIGHT aligned; the left bound L masks keys at or before
row - L, so a window keeping W keys before the diagonal has L = W + 1; ALiBi needs right bound 0 (and, as
validate() of 1.32 says, a top-left diagonal) and uses 2^(-8(h+1)/Hq) slopes for a power-of-two head count.

The graphs are built once in build() (plans compiled, workspace allocated there); a timed call only
executes the chosen plan.
"""

from __future__ import annotations

import itertools
from typing import Any

from ...spec import Workload
from ...spec import masks
from ..base import Unsupported, torch_dtype
from .library import LibraryImpl, first_line, refusal

MAX_PLANS = 8  # plans per heuristic mode offered to the tuner
# diagonal_alignment / diagonal_band_{left,right}_bound came with frontend 1.10, generate_stats (the alias that
# replaced is_inference) with 1.13 (NVIDIA/cudnn-frontend release notes, PRs #126 and #150)
MIN_FRONTEND = (1, 13)


def release(version: str) -> tuple[int, ...]:
    """'1.32.0' -> (1, 32, 0); the leading numeric fields only ('' -> ())."""
    out = []
    for part in version.split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        out.append(int(digits))
        if digits != part:
            break
    return tuple(out)


def contiguous_strides(dims: list[int]) -> list[int]:
    out, step = [], 1
    for d in reversed(dims):
        out.append(step)
        step *= d
    return out[::-1]


class CudnnFrontendImpl(LibraryImpl):
    name = "cudnn-fe"
    family = "cudnn"
    description = "cuDNN SDPA built with nvidia-cudnn-frontend's graph API (plan index and heuristic tunable)"
    module = "cudnn"
    dists = ("nvidia-cudnn-frontend",)
    install = "pip install nvidia-cudnn-frontend"
    extra = "cudnn"
    mask_kinds = ("full", "causal", "causal-br", "window")
    score_mods = ("", "alibi")
    passes = ("fwd", "bwd", "fwd+bwd")
    head_dims = "<= 256, a multiple of 8"

    def _version(self, lib: Any) -> str:
        front = super()._version(lib)
        try:
            v = int(lib.backend_version())
        except Exception:
            return front
        return f"{front}, cuDNN {v // 10000}.{v % 10000 // 100}.{v % 100}"

    def unusable(self, lib: Any) -> str:
        """The frontend imports without the cuDNN library (backend_version() is what needs it), and a frontend
        older than MIN_FRONTEND lacks the sdpa() arguments the graphs are built with."""
        front = super()._version(lib)
        if (front and release(front) < MIN_FRONTEND) or not hasattr(lib, "diagonal_alignment"):
            return (f"nvidia-cudnn-frontend {front or '(version unknown)'} predates sdpa(generate_stats=, "
                    f"diagonal_alignment=, diagonal_band_*=) ({'.'.join(map(str, MIN_FRONTEND))}); "
                    "pip install -U nvidia-cudnn-frontend")
        try:
            lib.backend_version()
        except Exception as exc:
            return first_line(exc)
        return ""

    def workload_reason(self, workload: Workload) -> str | None:
        """Which masks take ALiBi is cuDNN's own check (validate(): right bound 0, top-left alignment);
        that its slopes are attnbench's only for a power-of-two head count is a convention it cannot check."""
        w = workload
        if w.score_mod == "alibi" and w.q_heads & (w.q_heads - 1):
            return f"cuDNN's ALiBi slopes equal 2^(-8(h+1)/Hq) only for a power-of-two head count, not Hq={w.q_heads}"
        return None

    # -- graph options --------------------------------------------------------------------------
    @staticmethod
    def mask_options(cudnn, workload: Workload) -> dict[str, Any]:
        kind = workload.mask_kind
        out: dict[str, Any] = {}
        if kind == "causal":
            out.update(diagonal_alignment=cudnn.diagonal_alignment.TOP_LEFT, diagonal_band_right_bound=0)
        elif kind in ("causal-br", "window"):
            out.update(diagonal_alignment=cudnn.diagonal_alignment.BOTTOM_RIGHT, diagonal_band_right_bound=0)
            if kind == "window":
                out["diagonal_band_left_bound"] = masks.window(workload.mask) + 1
        if workload.score_mod == "alibi":
            out["use_alibi_mask"] = True
        return out

    def param_space(self, workload: Workload, device: str) -> list[dict[str, Any]]:
        """Every plan cuDNN's heuristics rank (modes A and B, at most MAX_PLANS each) for this workload."""
        if not device.startswith("cuda") or self.supports(workload, device):
            return [{}]
        try:
            cudnn = self.load()
            handle = cudnn.create_handle()
        except Exception:  # no plan list here: the tuner runs the default
            return [{}]
        space = []
        for mode in ("A", "B"):
            try:
                graph, _ = self._forward_graph(cudnn, workload, handle, mode, stats=workload.direction != "fwd")
                count = graph.get_execution_plan_count()
            except Exception:  # a heuristic mode with no plans for this graph offers none
                continue
            space += [{"heur": mode, "plan": i} for i in range(min(MAX_PLANS, count))]
        return space or [{}]

    # -- graphs ---------------------------------------------------------------------------------
    def _io(self, cudnn, workload: Workload):
        return {"fp16": cudnn.data_type.HALF, "bf16": cudnn.data_type.BFLOAT16}[workload.dtype]

    def _graph(self, cudnn, workload: Workload, handle):
        io = self._io(cudnn, workload)
        return cudnn.pygraph(io_data_type=io, intermediate_data_type=cudnn.data_type.FLOAT,
                             compute_data_type=cudnn.data_type.FLOAT, handle=handle), io

    def _dims(self, workload: Workload) -> dict[str, list[int]]:
        w = workload
        return {"q": [w.batch, w.q_heads, w.q_len, w.head_dim], "k": [w.batch, w.kv_heads, w.kv_len, w.head_dim],
                "v": [w.batch, w.kv_heads, w.kv_len, w.head_dim], "o": [w.batch, w.q_heads, w.q_len, w.head_dim],
                "stats": [w.batch, w.q_heads, w.q_len, 1]}

    def _plan(self, cudnn, graph, mode: str) -> None:
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([getattr(cudnn.heur_mode, mode), cudnn.heur_mode.FALLBACK])
        graph.check_support()

    def _forward_graph(self, cudnn, workload: Workload, handle, mode: str, stats: bool):
        graph, io = self._graph(cudnn, workload, handle)
        dims = self._dims(workload)
        t = {n: graph.tensor(name=n, dim=dims[n], stride=contiguous_strides(dims[n]), data_type=io)
             for n in ("q", "k", "v")}
        o, st = graph.sdpa(name="sdpa", q=t["q"], k=t["k"], v=t["v"], generate_stats=stats,
                           attn_scale=workload.head_dim ** -0.5, **self.mask_options(cudnn, workload))
        o.set_output(True).set_dim(dims["o"]).set_stride(contiguous_strides(dims["o"])).set_data_type(io)
        t["o"] = o
        if stats:
            st.set_output(True).set_dim(dims["stats"]).set_stride(contiguous_strides(dims["stats"]))
            st.set_data_type(cudnn.data_type.FLOAT)
            t["stats"] = st
        self._plan(cudnn, graph, mode)
        return graph, t

    def _backward_graph(self, cudnn, workload: Workload, handle, mode: str):
        graph, io = self._graph(cudnn, workload, handle)
        dims = self._dims(workload)
        t = {}
        for n in ("q", "k", "v", "o", "stats"):
            t[n] = graph.tensor(name=n, dim=dims[n], stride=contiguous_strides(dims[n]),
                                data_type=cudnn.data_type.FLOAT if n == "stats" else io)
        t["dO"] = graph.tensor(name="dO", dim=dims["o"], stride=contiguous_strides(dims["o"]), data_type=io)
        dq, dk, dv = graph.sdpa_backward(name="sdpa_backward", q=t["q"], k=t["k"], v=t["v"], o=t["o"], dO=t["dO"],
                                         stats=t["stats"], attn_scale=workload.head_dim ** -0.5,
                                         **self.mask_options(cudnn, workload))
        for name, tensor, ref in (("dQ", dq, "q"), ("dK", dk, "k"), ("dV", dv, "v")):
            tensor.set_output(True).set_dim(dims[ref]).set_stride(contiguous_strides(dims[ref])).set_data_type(io)
            t[name] = tensor
        self._plan(cudnn, graph, mode)
        return graph, t

    @staticmethod
    def _build_plan(graph, index: int | None) -> int:
        """Compile the plan at `index`, or the first of the ranked plans that builds; its index."""
        if index is not None:
            if not 0 <= index < graph.get_execution_plan_count():
                raise Unsupported(f"cudnn-fe: plan {index} of {graph.get_execution_plan_count()} does not exist")
            graph.build_plan_at_index(index)
            return index
        failures = []
        for i in range(graph.get_execution_plan_count()):
            try:
                graph.build_plan_at_index(i)
                return i
            except Exception as exc:
                if not refusal(exc):
                    raise
                failures.append(first_line(exc, 120))
        raise Unsupported("cudnn-fe: no execution plan builds: " + "; ".join(failures[:3]))

    def make(self, lib, workload: Workload, device: str, params: dict[str, Any]):
        import torch

        cudnn, w = lib, workload
        mode = str(params.get("heur", "A"))
        grads = w.direction != "fwd"
        handle = cudnn.create_handle()
        fwd, ft = self._forward_graph(cudnn, w, handle, mode, stats=grads)
        fwd_plan = self._build_plan(fwd, params.get("plan"))
        sizes = [fwd.get_workspace_size_plan_at_index(fwd_plan)]
        plans = [f"forward plan {fwd_plan}: {fwd.get_plan_name_at_index(fwd_plan)}"]
        bwd = bt = bwd_plan = None
        if grads:
            bwd, bt = self._backward_graph(cudnn, w, handle, "A")
            bwd_plan = self._build_plan(bwd, None)
            sizes.append(bwd.get_workspace_size_plan_at_index(bwd_plan))
            plans.append(f"backward plan {bwd_plan}: {bwd.get_plan_name_at_index(bwd_plan)}")
        workspace = torch.empty(max(1, *sizes), dtype=torch.uint8, device=device)
        dtype = torch_dtype(w.dtype)
        dims = self._dims(w)
        cuda = device.startswith("cuda")
        current = {"stream": None}

        def bind_stream():
            # cuDNN launches on its handle's stream: follow torch's current stream (a graph timer captures
            # on its own), setting it only when it changes (cudnnSetStream is not free).
            if cuda:
                stream = torch.cuda.current_stream().cuda_stream
                if stream != current["stream"]:
                    cudnn.set_stream(handle=handle, stream=stream)
                    current["stream"] = stream

        def forward(q, k, v, with_stats: bool):
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            o = torch.empty(dims["o"], dtype=dtype, device=q.device)
            pack = {ft["q"]: q, ft["k"]: k, ft["v"]: v, ft["o"]: o}
            stats = None
            if with_stats:
                stats = torch.empty(dims["stats"], dtype=torch.float32, device=q.device)
                pack[ft["stats"]] = stats
            bind_stream()
            fwd.execute_plan_at_index(pack, workspace, fwd_plan, handle=handle)
            return o, stats

        def backward(q, k, v, o, do, stats):
            grads_out = [torch.empty(dims[n], dtype=dtype, device=q.device) for n in ("q", "k", "v")]
            pack = {bt["q"]: q, bt["k"]: k, bt["v"]: v, bt["o"]: o, bt["dO"]: do.contiguous(), bt["stats"]: stats,
                    bt["dQ"]: grads_out[0], bt["dK"]: grads_out[1], bt["dV"]: grads_out[2]}
            bind_stream()
            bwd.execute_plan_at_index(pack, workspace, bwd_plan, handle=handle)
            return grads_out

        if grads:
            class CudnnSdpa(torch.autograd.Function):
                @staticmethod
                def forward(ctx, q, k, v):
                    o, stats = forward(q, k, v, True)
                    ctx.save_for_backward(q.contiguous(), k.contiguous(), v.contiguous(), o, stats)
                    return o

                @staticmethod
                def backward(ctx, do):
                    return tuple(backward(*ctx.saved_tensors[:4], do, ctx.saved_tensors[4]))

            def call(q, k, v):
                return CudnnSdpa.apply(q, k, v)
        else:
            def call(q, k, v):
                return forward(q, k, v, False)[0]

        notes = ["layout: BHSD inputs bound as they are (the graph's tensors are declared BHSD)",
                 f"graphs and plans built in build(); workspace {max(sizes)} bytes allocated there; heuristic {mode}"]
        return call, f"cudnn-fe:plan{fwd_plan}", plans + notes
