"""Device timers: CUDA events around eager calls (`cold`, `warm`) and around CUDA-graph replays (`graph`).

One sample, on the current stream of the device:

    [L2 flush]  [spin]  start-event  call (or graph replay)  end-event

- L2 flush (cold modes only): a sum over a buffer twice the L2 size, outside the timed window, so
  none of the call's inputs are in L2 when it starts. A read, not a write (do_bench zeroes a buffer):
  after a read the L2 holds clean lines, so the timed kernel does not pay for writing back the
  flush's dirty lines, and ncu (the reference) also starts kernels from a clean, flushed cache.
- Spin (nvbench's blocking kernel; here `torch.cuda._sleep`): it holds the GPU while the host
  enqueues start-event, the call and end-event, so the window holds device work only, not launch
  latency or host-side dispatch (FIELD-NOTES: +2-4 us per eager call, up to 3.4x for cuDNN's host
  work on 10 us kernels). Length: 1.5 x the call's host time (measured once per callable, with a
  synchronize after each call) + 10 us, capped at 2 ms, in cycles at the GPU's maximum SM clock; at
  a lower clock the spin only lasts longer, never too short.
- Within a batch the host runs ahead of the GPU (at most LAG samples, so a full launch queue never
  blocks a timed enqueue and inflates the host time), the spins keep the SMs busy (an idle GPU drops
  its clock: FIELD-NOTES), the host waits once per batch (on the last end event), and the SM clock is
  read through NVML mid-batch while the GPU is busy. Between batches a keep-alive spin, enqueued after
  the last end event and sized to the host's last gap between batches (statistics, NVML; capped at
  1 ms), keeps the GPU busy until the next batch is queued, so no sample starts on an idle GPU.
- The host time of every call (Python, dispatch, launch: what a caller pays) is kept beside it.
- Guard: the host notes when it finished enqueueing each spin and when it finished recording the end
  event. If that interval is longer than the spin's shortest possible duration (its cycles at the
  maximum clock), the GPU may have run out of spin before the call arrived, so host latency may be
  in the window: the sample is dropped, the spin grows to cover the longest interval seen, and the
  sample is taken again (up to RETAKES passes; the counts go to info()). The test uses host times
  only, so which samples are dropped does not depend on their device times. Python's garbage
  collector is paused during a batch, so a collection cannot stall the host mid-sample.

Graph mode captures several calls in one CUDA graph and times its replays in the same frame, one
sample per replay divided by the number of calls. Each sample window holds a fixed cost that no
kernel-duration profiler sees: the GPU starting the first kernel after the start event and writing the
end event, about 2-3 us on an H100 (benchmarks/ncu_cache_probe.py). One call per window puts all of it
on a 10 us kernel; k calls per window put 1/k of it on each. k is chosen so that a replay lasts at
least GRAPH_WINDOW_US (from the eager call's device time), within MAX_GRAPH_CALLS and a memory budget;
a call of that length or more is captured alone. Cold-cache form (`graph`): each of the k calls works
on its own copy of the inputs (the call's `on_copy()`, from impls.make_call), and the L2 is flushed
eagerly before each replay, outside the window, so every call in the replay reads inputs that nothing
has touched since the flush. Without `on_copy` (a bare callable) k is 1. Warm form (`graph-warm`):
the same call k times, no flush. The replay is a single launch, enqueued while the spin runs. The
capture is checked: torch's "graph is empty" warning, the graph's nodes (from
cudaGraphDebugDotPrint where torch can keep the graph: it must hold a kernel), and the replay's device
time against k eager calls in the same regime (at least GRAPH_MIN_RATIO of it; less means the capture
missed work that ran on another stream or on the host). A call that cannot be
captured (a host synchronization such as .item(), CPU work, an op capture forbids) raises
GraphCaptureError with the reason; the runner records that as status `error`.
"""

from __future__ import annotations

import gc
import math
import os
import re
import statistics
import tempfile
import time
import warnings
from typing import Any, Callable

from .protocol import Sample

LAG = 64                  # samples the host may enqueue ahead of the GPU within a batch
SPIN_CAP_US = 2000.0
SPIN_PAD_US = 10.0
KEEPALIVE_US = (50.0, 1000.0)  # bounds of the spin that covers the host's work between batches
FALLBACK_MHZ = 2000.0     # if neither NVML nor torch gives the max SM clock (over-estimate: longer spin)
GRAPH_MIN_RATIO = 0.4
PROBE_SAMPLES = 5
GRAPH_WINDOW_US = 200.0   # a graph replay holds enough calls to last this long
MAX_GRAPH_CALLS = 32
GRAPH_COPY_BUDGET = 2**30  # bytes of extra input copies a cold graph may allocate
RETAKES = 3               # passes that retake samples whose spin may not have covered the enqueue


class GraphCaptureError(RuntimeError):
    """The call cannot be timed as a CUDA graph: capture failed, or the graph misses its work."""


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _props_mhz(props: Any) -> float | None:
    khz = getattr(props, "clock_rate", None)
    return float(khz) / 1000.0 if khz else None


class CudaEventTimer:
    """Device time per call by CUDA events, launch hidden behind a spin; cold L2 (flush) or warm."""

    def __init__(self, device: str = "cuda", cold: bool = True, clock: Any = None, flush_factor: float = 2.0):
        import torch

        dev = torch.device(device)
        self.index = dev.index if dev.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", self.index)
        self.cold = cold
        self.clock = clock
        self.mode = "cold" if cold else "warm"
        props = torch.cuda.get_device_properties(self.index)
        self.l2_bytes = int(getattr(props, "L2_cache_size", 0) or 64 * 2**20)
        self._flush_buf = None
        if cold:
            self._flush_buf = torch.zeros(int(flush_factor * self.l2_bytes) // 4, dtype=torch.float32,
                                          device=self.device)
        self.mhz = (clock.max_sm_mhz() if clock is not None else None) or _props_mhz(props) or FALLBACK_MHZ
        self._spin: dict[int, tuple[Callable, int, float]] = {}  # id(fn) -> (fn, cycles, host us)
        self._batch_end: float | None = None  # perf_counter when the host last finished waiting for a batch
        self._keepalive_us = 200.0
        self._exposed: list[bool] = []  # per sample of the last batch: the spin may not have covered it
        self._enqueue_us = 0.0          # the last batch's longest spin-to-end-event host interval
        self._guard: dict[int, dict[str, int]] = {}  # id(fn) -> {"retaken": n, "exposed_kept": n}

    def now_ms(self) -> float:
        return time.perf_counter() * 1e3

    def sync(self) -> None:
        import torch

        torch.cuda.synchronize(self.device)

    def _flush(self) -> None:
        if self._flush_buf is not None:
            self._flush_buf.sum()

    def _target(self, fn: Callable) -> Callable:
        """What a sample times: the call itself (the graph timer returns its replay)."""
        return fn

    def _spin_cycles(self, fn: Callable, call: Callable) -> int:
        entry = self._spin.get(id(fn))
        if entry is not None and entry[0] is fn:
            return entry[1]
        times = []
        for _ in range(3):
            self.sync()
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        self.sync()
        host_us = statistics.median(times) * 1e6
        cycles = int(min(SPIN_CAP_US, 1.5 * host_us + SPIN_PAD_US) * self.mhz)
        self._spin[id(fn)] = (fn, cycles, host_us)
        return cycles

    def _grow_spin(self, fn: Callable, cycles: int) -> int:
        """A longer spin for fn, covering the longest enqueue interval of the last batch."""
        want = int(min(SPIN_CAP_US, 1.5 * self._enqueue_us + SPIN_PAD_US) * self.mhz)
        grown = min(int(SPIN_CAP_US * self.mhz), max(want, int(cycles * 1.5)))
        entry = self._spin.get(id(fn))
        if entry is not None and entry[0] is fn:
            self._spin[id(fn)] = (fn, grown, entry[2])
        return grown

    def run(self, fn, n):
        import torch

        with torch.cuda.device(self.index):
            call = self._target(fn)
            cycles = self._spin_cycles(fn, call)
            counts = self._guard.setdefault(id(fn), {"retaken": 0, "exposed_kept": 0})
            good: list[Sample] = []
            for attempt in range(RETAKES + 1):
                batch = self._timed(call, n - len(good), cycles)
                flags = self._exposed if cycles > 0 else [False] * len(batch)
                if attempt == RETAKES:  # the spin is capped: keep what remains, and say so
                    counts["exposed_kept"] += sum(flags)
                    return good + batch
                good += [s for s, bad in zip(batch, flags) if not bad]
                if len(good) >= n:
                    return good
                counts["retaken"] += n - len(good)
                cycles = self._grow_spin(fn, cycles)
            return good

    def _timed(self, call: Callable, n: int, cycles: int, read_clock: bool = True) -> list[Sample]:
        import torch

        if n <= 0:
            return []
        if self._batch_end is not None:  # the host's gap since the last batch sizes the next keep-alive
            gap_us = (time.perf_counter() - self._batch_end) * 1e6
            self._keepalive_us = min(KEEPALIVE_US[1], max(KEEPALIVE_US[0], 1.5 * gap_us))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        host = [0.0] * n
        enqueue = [0.0] * n  # us from the spin's enqueue to the end event's
        mhz = None
        gc_on = gc.isenabled()
        gc.disable()
        try:
            for i in range(n):
                if i >= LAG:
                    ends[i - LAG].synchronize()
                self._flush()
                t_spin = time.perf_counter()  # before the spin's enqueue: the spin cannot start earlier
                if cycles > 0:
                    torch.cuda._sleep(cycles)
                starts[i].record()
                t0 = time.perf_counter()
                call()
                t1 = time.perf_counter()
                ends[i].record()
                enqueue[i] = (time.perf_counter() - t_spin) * 1e6
                host[i] = (t1 - t0) * 1e3
                if read_clock and i == n // 2 and self.clock is not None:
                    mhz = self.clock.sm_mhz()
            torch.cuda._sleep(int(self._keepalive_us * self.mhz))  # after the last end event: not timed
            ends[-1].synchronize()
        finally:
            if gc_on:
                gc.enable()
        self._batch_end = time.perf_counter()
        spin_us = cycles / self.mhz  # the shortest the spin can last (at the maximum clock)
        self._exposed = [e > spin_us for e in enqueue]  # not covered for sure: the window may hold host time
        self._enqueue_us = max(enqueue)
        return [Sample(device_ms=s.elapsed_time(e), host_ms=h, clock_mhz=mhz) for s, e, h in zip(starts, ends, host)]

    def info(self, fn: Callable) -> dict[str, Any]:
        out: dict[str, Any] = {"flush_mb": round(self._flush_buf.numel() * 4 / 2**20, 1) if self.cold else 0}
        entry = self._spin.get(id(fn))
        if entry is not None and entry[0] is fn:
            out.update(spin_us=round(entry[1] / self.mhz, 1), call_host_us=round(entry[2], 1))
        counts = self._guard.get(id(fn))
        if counts and any(counts.values()):
            out.update(counts)
        return out

    def conditions(self) -> dict[str, Any]:
        return self.clock.conditions() if self.clock is not None else {}

    def release(self, fn: Callable) -> None:
        self._spin.pop(id(fn), None)
        self._guard.pop(id(fn), None)


def _reset_rng_capture(torch: Any) -> None:
    """Leave the default CUDA generator out of capture mode after a capture that failed.

    capture_begin puts the generator into capture mode and only a successful capture_end takes it out;
    when capture_end raises, later random ops on the device fail ("Offset increment outside graph
    capture encountered unexpectedly"). A clone of the generator state carries its seed and offset but
    not the capture flag; installing it (graph-safe state swap) restores ordinary use."""
    try:
        gen = torch.cuda.default_generators[torch.cuda.current_device()]
        gen.graphsafe_set_state(gen.clone_state())
    except Exception:  # older torch without these methods: nothing to reset there
        pass


def _recover() -> None:
    """After a failed capture: wait for the device, clear a stale error and the RNG's capture mode."""
    import torch

    _reset_rng_capture(torch)
    for _ in range(2):
        try:
            torch.cuda.synchronize()
            torch.zeros(1, device="cuda").add_(1)
            torch.cuda.synchronize()
            return
        except Exception:
            continue


def _new_graph() -> tuple[Any, bool]:
    import torch

    try:
        return torch.cuda.CUDAGraph(keep_graph=True), True
    except TypeError:  # older torch: no keep_graph, so no node listing
        return torch.cuda.CUDAGraph(), False


def graph_nodes(dot: str) -> dict[str, int]:
    """Node counts from cudaGraphDebugDotPrint text: {'graph_nodes': n, 'kernel_nodes': k}; {} if unknown."""
    nodes = set(re.findall(r"graph_\d+_node_\d+", dot))
    if not nodes:
        return {}
    kernels = len(re.findall(r"\bKERNEL\b", dot))
    if kernels == 0 and "kernel" in dot.lower():
        kernels = -1  # a kernel is named but the node type format is unknown: do not claim none
    return {"graph_nodes": len(nodes), "kernel_nodes": kernels}


def _dump_nodes(graph: Any) -> dict[str, int]:
    try:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "graph.dot")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph.debug_dump(path)
            with open(path, errors="replace") as f:
                return graph_nodes(f.read())
    except Exception:
        return {}


def graph_calls(eager_us: float | None, copy_bytes: int | None, window_us: float = GRAPH_WINDOW_US,
                cap: int = MAX_GRAPH_CALLS, budget: int = GRAPH_COPY_BUDGET) -> int:
    """Calls per graph replay: enough to fill window_us, at most cap, and their copies within budget."""
    if not eager_us or eager_us <= 0:
        return 1
    k = min(cap, max(1, math.ceil(window_us / eager_us)))
    if copy_bytes:
        k = min(k, 1 + budget // copy_bytes)
    return k


class CudaGraphTimer(CudaEventTimer):
    """Device time of CUDA-graph replays of the call; cold L2 (`graph`) or warm (`graph-warm`)."""

    def __init__(self, device: str = "cuda", cold: bool = True, clock: Any = None, flush_factor: float = 2.0):
        super().__init__(device, cold, clock, flush_factor)
        self.mode = "graph" if cold else "graph-warm"
        # id(fn) -> (fn, graph, facts, calls per replay, the calls: their input copies must outlive the graph)
        self._graphs: dict[int, tuple[Callable, Any, dict[str, Any], int, list[Callable]]] = {}

    def _target(self, fn: Callable) -> Callable:
        entry = self._graphs.get(id(fn))
        if entry is None or entry[0] is not fn:
            entry = (fn, *self._capture(fn))
            self._graphs[id(fn)] = entry
        return entry[1].replay

    def run(self, fn, n):
        samples = super().run(fn, n)
        k = self._graphs[id(fn)][3]
        if k == 1:
            return samples
        return [Sample(device_ms=s.device_ms / k, host_ms=None if s.host_ms is None else s.host_ms / k,
                       clock_mhz=s.clock_mhz) for s in samples]

    def _capture(self, fn: Callable) -> tuple[Any, dict[str, Any], int, list[Callable]]:
        import torch

        # Warm-up on a side stream, as torch requires before capture (lazy handles, workspaces).
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        current.wait_stream(side)
        torch.cuda.synchronize()
        cycles = int(SPIN_CAP_US / 4 * self.mhz)  # a generous fixed spin for the probes
        eager_ms = statistics.median(s.device_ms for s in self._timed(fn, PROBE_SAMPLES, cycles, False))
        on_copy = getattr(fn, "on_copy", None)
        k = graph_calls(eager_ms * 1e3, getattr(fn, "copy_bytes", None)) if on_copy or not self.cold else 1
        calls = [fn] + [on_copy() if self.cold else fn for _ in range(k - 1)]
        with torch.cuda.stream(side):
            for c in calls[1:]:
                c()
        current.wait_stream(side)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        graph, kept = _new_graph()
        # capture_begin/end by hand rather than torch.cuda.graph: when capture_end raises, that context
        # manager leaves the capture stream current; here `torch.cuda.stream` restores it in any case.
        failed: list[BaseException] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.cuda.stream(torch.cuda.Stream()):
                try:
                    graph.capture_begin()
                except Exception as exc:
                    failed.append(exc)
                if not failed:
                    try:
                        for c in calls:
                            c()
                    except Exception as exc:
                        failed.append(exc)
                    try:
                        graph.capture_end()
                    except Exception as exc:
                        failed.append(exc)
        if failed:
            why = _short(failed[0]) + "".join(f" (then {_short(e)})" for e in failed[1:])
            del graph
            _recover()
            raise GraphCaptureError(
                f"cannot capture the call in a CUDA graph: {why}. The call may synchronize with the host "
                "(.item(), .cpu(), data-dependent shapes) or use an op that capture forbids; time it with "
                "--timer cold instead") from failed[0]
        facts: dict[str, Any] = _dump_nodes(graph) if kept else {}
        if any("graph is empty" in str(w.message).lower() for w in caught) or facts.get("graph_nodes") == 0:
            raise GraphCaptureError("the captured CUDA graph is empty: the call's work ran on the host or on a "
                                    "stream outside the capture")
        if kept:
            graph.instantiate()
        if facts.get("kernel_nodes") == 0:
            raise GraphCaptureError(f"the captured CUDA graph holds no kernel ({facts['graph_nodes']} nodes, "
                                    "memory operations only)")
        replay_ms = statistics.median(s.device_ms for s in self._timed(graph.replay, PROBE_SAMPLES, cycles, False))
        facts.update(graph_calls=k, replay_probe_ms=round(replay_ms, 5), eager_probe_ms=round(eager_ms, 5))
        if replay_ms < GRAPH_MIN_RATIO * k * eager_ms:
            raise GraphCaptureError(
                f"the CUDA graph replay of {k} call(s) takes {replay_ms * 1e3:.1f} us on the device but one "
                f"eager call {eager_ms * 1e3:.1f} us: the capture misses work that ran on another stream or on "
                "the host")
        return graph, facts, k, calls

    def info(self, fn: Callable) -> dict[str, Any]:
        out = super().info(fn)
        entry = self._graphs.get(id(fn))
        if entry is not None and entry[0] is fn:
            out.update(entry[2])
        return out

    def release(self, fn: Callable) -> None:
        super().release(fn)
        self._graphs.pop(id(fn), None)
