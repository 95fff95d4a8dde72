"""The hardware: environment fingerprint and id, and the ceilings measured on it.

Four layers, from cheap to costly (the datasheet lives in `datasheet`, the roofline in `roofline`):

* `fingerprint(device)` describes the environment (GPU model, clocks, software stack, TF32 flags, git
  commit); `env_id` hashes the performance-relevant part of it (`PERF_KEYS`), so clocks or a new commit
  never split results; `env_mismatch` says in words why two environments differ.
* `SPECS` / `lookup_spec` hold vendor datasheet figures (dense, not sparse) for common GPUs.
* `measure_ceilings` measures what this card really reaches: a large matmul per dtype and a large
  device-to-device copy. Clocks are never changed.
* `ceilings_for`, `roofline_bound_tflops`, `ridge_point`, `regime`, `plausibility` are pure functions
  (no torch) that turn measured or datasheet ceilings into a roofline bound, a regime label and a flag for
  figures that cannot be right.

torch and pynvml are imported inside functions only; pynvml (package nvidia-ml-py) is optional.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from .datasheet import (SPECS, _dtype_key, lookup_spec)

# Fingerprint keys that change performance; the environment id hashes only these. Clocks, power limit,
# Python, attnbench version and git commit are recorded but deliberately left out.
PERF_KEYS = ("device_kind", "gpu_name", "sm_count", "driver", "cuda", "cudnn", "torch", "triton", "cpu_model",
             "tf32_matmul", "tf32_cudnn", "deterministic")

# Keys present only in a CUDA fingerprint.
GPU_KEYS = ("gpu_name", "compute_capability", "sm_count", "l2_mb", "memory_gib", "sm_clock_mhz",
            "sm_clock_max_mhz", "power_limit_w", "driver", "nvml")

# ---------------------------------------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------------------------------------

def detect_device() -> str:
    """'cuda' when torch sees a GPU, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo ("model name"), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    if name:
                        return " ".join(name.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_commit() -> str | None:
    """Short commit of the checkout this package runs from; None outside a git checkout (e.g. installed
    into site-packages) or when git is missing. Never raises."""
    here = Path(__file__).resolve().parent
    if "site-packages" in here.parts or "dist-packages" in here.parts:
        return None   # an installed copy: a surrounding repository's commit would be someone else's
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{4,40}", commit) else None


def _triton_version() -> str | None:
    from importlib import metadata

    for dist in ("triton", "pytorch-triton"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        except Exception:  # noqa: BLE001 - a broken install is "not available", not a crash
            return None
    return None


def _cudnn_version(torch: Any) -> str | None:
    try:
        v = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001
        return None
    return format_cudnn_version(v)


def format_cudnn_version(v: int | None) -> str | None:
    """cuDNN's integer version as text: 91900 -> '9.19.0' (cuDNN 9 encoding), 8902 -> '8.9.2'."""
    if v is None:
        return None
    v = int(v)
    if v >= 90000:
        return f"{v // 10000}.{(v % 10000) // 100}.{v % 100}"
    return f"{v // 1000}.{(v % 1000) // 100}.{v % 100}"


def _tf32_flags(torch: Any) -> dict[str, Any]:
    """TF32 and determinism switches as torch reports them. Since torch 2.9 reading the legacy
    `allow_tf32` raises when the legacy and the new (`fp32_precision`) APIs were mixed, so fall back."""
    out: dict[str, Any] = {}
    try:
        prec = torch.get_float32_matmul_precision()
    except Exception:  # noqa: BLE001
        prec = None
    out["float32_matmul_precision"] = prec
    try:
        out["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    except Exception:  # noqa: BLE001
        new = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
        out["tf32_matmul"] = True if new == "tf32" else False if new == "ieee" else (
            prec is not None and prec != "highest")
    try:
        out["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
    except Exception:  # noqa: BLE001
        new = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
        out["tf32_cudnn"] = new == "tf32"
    try:
        out["deterministic"] = bool(torch.are_deterministic_algorithms_enabled())
    except Exception:  # noqa: BLE001
        out["deterministic"] = None
    out["cudnn_benchmark"] = bool(getattr(torch.backends.cudnn, "benchmark", False))
    return out


def _driver_from_proc() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s", text)
    return m.group(1) if m else None


def _as_str(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


_NVML_HANDLES: dict[int, Any] = {}


def _device_index(torch: Any, device: str) -> int:
    d = torch.device(device)
    return d.index if d.index is not None else torch.cuda.current_device()


def _nvml_handle(torch: Any, index: int) -> tuple[Any, Any]:
    """(pynvml module, handle) for torch's CUDA device `index`, matched by UUID, then PCI bus id, then by
    index when CUDA_VISIBLE_DEVICES is unset (NVML numbers all GPUs, torch only the visible ones).
    Raises ImportError / RuntimeError when it cannot."""
    import pynvml

    if index in _NVML_HANDLES:
        return pynvml, _NVML_HANDLES[index]
    pynvml.nvmlInit()
    props = torch.cuda.get_device_properties(index)
    handle = None
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        u = str(uuid)
        if not u.startswith(("GPU-", "MIG-")):
            u = "GPU-" + u
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(u)
        except Exception:  # noqa: BLE001
            handle = None
    if handle is None and getattr(props, "pci_bus_id", None) is not None:
        bus = f"{getattr(props, 'pci_domain_id', 0):08x}:{props.pci_bus_id:02x}:{getattr(props, 'pci_device_id', 0):02x}.0"
        try:
            handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus)
        except Exception:  # noqa: BLE001
            handle = None
    if handle is None and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    if handle is None:
        raise RuntimeError("could not match the torch device to an NVML device")
    _NVML_HANDLES[index] = handle
    return pynvml, handle


def _nvml_fields(torch: Any, index: int) -> dict[str, Any]:
    out: dict[str, Any] = {"sm_clock_mhz": None, "sm_clock_max_mhz": None, "power_limit_w": None, "driver": None}
    try:
        nv, h = _nvml_handle(torch, index)
    except ImportError:
        out["nvml"] = "unavailable: pynvml not installed (pip install nvidia-ml-py)"
        return out
    except Exception as e:  # noqa: BLE001
        out["nvml"] = f"unavailable: {type(e).__name__}: {e}"[:200]
        return out
    out["nvml"] = "ok"
    for key, fn in (("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                    ("sm_clock_max_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)),
                    ("power_limit_w", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0),
                    ("driver", lambda: _as_str(nv.nvmlSystemGetDriverVersion()))):
        try:
            out[key] = fn()
        except Exception:  # noqa: BLE001 - one unsupported query must not lose the others
            out[key] = None
    return out


def sm_clock_mhz(device: str = "cuda") -> float | None:
    """The current SM clock of a CUDA device by NVML (cheap after the first call); None on a CPU, without
    pynvml, or when NVML cannot tell. For recording the clock beside timing samples."""
    if not str(device).startswith("cuda"):
        return None
    try:
        import torch

        nv, h = _nvml_handle(torch, _device_index(torch, device))
        return float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
    except Exception:  # noqa: BLE001
        return None


def _gpu_fields(torch: Any, device: str) -> dict[str, Any]:
    index = _device_index(torch, device)
    props = torch.cuda.get_device_properties(index)
    l2 = getattr(props, "L2_cache_size", None)
    fp: dict[str, Any] = {
        "gpu_name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "l2_mb": round(l2 / 2**20, 1) if l2 else None,
        "memory_gib": round(props.total_memory / 2**30, 1),
    }
    fp.update(_nvml_fields(torch, index))
    if fp.get("driver") is None:
        fp["driver"] = _driver_from_proc()
    return fp


def fingerprint(device: str) -> dict[str, Any]:
    """Describe the environment as a flat JSON-able dict.

    Always: device_kind ('cuda'|'cpu'), cuda_available, torch, cuda, cudnn, triton, python, os, cpu_model,
    attnbench, git_commit, float32_matmul_precision, tf32_matmul, tf32_cudnn, deterministic,
    cudnn_benchmark. For CUDA devices also (GPU_KEYS): gpu_name (model, no UUID), compute_capability,
    sm_count, l2_mb, memory_gib, sm_clock_mhz, sm_clock_max_mhz, power_limit_w, driver and nvml ('ok' or
    why not); NVML-only values are None without pynvml.
    """
    import torch

    from .. import __version__

    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    fp: dict[str, Any] = {
        "device_kind": kind,
        "cuda_available": bool(torch.cuda.is_available()),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": _cudnn_version(torch),
        "triton": _triton_version(),
        "python": platform.python_version(),
        "os": platform.platform(terse=True),
        "cpu_model": cpu_model(),
        "attnbench": __version__,
        "git_commit": git_commit(),
    }
    fp.update(_tf32_flags(torch))
    if kind == "cuda":
        fp.update(_gpu_fields(torch, str(device)))
    return fp


def env_id(fp: dict[str, Any]) -> str:
    """A short stable hash of the performance-relevant parts of a fingerprint (PERF_KEYS only)."""
    part = {k: fp.get(k) for k in PERF_KEYS}
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _show(x: Any) -> str:
    return "none" if x is None else str(x)


def env_mismatch(fp_a: dict[str, Any] | None, fp_b: dict[str, Any] | None) -> list[str]:
    """Differences in PERF_KEYS as 'key: a -> b' lines (e.g. 'torch: 2.11.0 -> 2.12.0'); [] when the
    two environments are comparable (same env_id)."""
    a, b = fp_a or {}, fp_b or {}
    return [f"{k}: {_show(a.get(k))} -> {_show(b.get(k))}" for k in PERF_KEYS if a.get(k) != b.get(k)]


# ---------------------------------------------------------------------------------------------------------
# Measured ceilings
# ---------------------------------------------------------------------------------------------------------

_TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "tf32": "float32", "fp64": "float64"}
_GPU_MATMUL_N = {"fp16": 8192, "bf16": 8192, "fp32": 4096, "tf32": 8192, "fp64": 2048}
_CPU_MATMUL_N = {"fp16": 256, "bf16": 256, "fp32": 512, "tf32": 512, "fp64": 384}


def matmul_tflops(n: int, ms: float) -> float:
    """TFLOP/s of an n x n x n matmul (2 n^3 FLOPs) taking ms milliseconds."""
    return 2.0 * n**3 / (ms * 1e-3) / 1e12


def copy_gbps(nbytes: int, ms: float) -> float:
    """GB/s of copying nbytes in ms milliseconds, counting bytes read plus bytes written (2 x nbytes)."""
    return 2.0 * nbytes / (ms * 1e-3) / 1e9


class _matmul_precision:
    """Set torch's float32 matmul precision for a block and restore it ('highest' = TF32 off). Uses
    set_float32_matmul_precision, which keeps the legacy and the new TF32 switches consistent."""

    def __init__(self, torch: Any, precision: str):
        self.torch, self.precision, self.old = torch, precision, None

    def __enter__(self):
        self.old = self.torch.get_float32_matmul_precision()
        self.torch.set_float32_matmul_precision(self.precision)
        return self

    def __exit__(self, *exc):
        self.torch.set_float32_matmul_precision(self.old)
        return False


def _time_cuda(torch: Any, fn: Callable[[], object], reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def _time_host(fn: Callable[[], object], reps: int, warmup: int, budget_s: float) -> list[float]:
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    out: list[float] = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
        if time.perf_counter() - t0 > budget_s and len(out) >= 3:
            break
    return out


def measure_ceilings(device: str = "cuda", dtypes: tuple[str, ...] = ("fp16", "bf16", "fp32"), *,
                     reps: int = 10, warmup: int = 3, copy_gib: float = 1.0) -> dict[str, Any]:
    """Measure what this device reaches: an n^3 matmul per dtype (8192 for fp16/bf16/tf32, 4096 for fp32
    with TF32 off, 2048 for fp64) on random data, and a device-to-device copy of `copy_gib` GiB (bytes
    read + written). CUDA: CUDA-event timing, median of `reps` after `warmup` calls; clocks are read
    (NVML), never set. CPU (or no GPU): small host-timed runs, about a second in all, rough.

    Returns {"device", "gpu_name" (None on CPU), "tflops": {dtype: float}, "gbps": float,
    "ms": {dtype or "copy": median ms}, "method": {"matmul": str, "copy": str},
    "sm_clock_mhz": {"before", "after"}, "note": str ('' on a GPU, else why it is rough)}.
    """
    import torch

    keys = [_dtype_key(d) for d in dtypes]
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        out = _measure_cpu(torch, keys)
        out["note"] = f"no CUDA GPU is present (asked for {device}); " + out["note"]
        return out
    if not device.startswith("cuda"):
        return _measure_cpu(torch, keys)
    return _measure_cuda(torch, device, keys, reps=reps, warmup=warmup, copy_gib=copy_gib)


def _measure_cuda(torch: Any, device: str, keys: list[str], *, reps: int, warmup: int,
                  copy_gib: float) -> dict[str, Any]:
    dev = torch.device(device)
    index = _device_index(torch, device)
    out: dict[str, Any] = {"device": device, "gpu_name": torch.cuda.get_device_properties(index).name,
                           "tflops": {}, "gbps": None, "ms": {}, "method": {}, "note": ""}
    out["sm_clock_mhz"] = {"before": sm_clock_mhz(device), "after": None}
    gen = torch.Generator(device=dev).manual_seed(0)
    with torch.cuda.device(index):
        for d in keys:
            n = _GPU_MATMUL_N[d]
            dt = getattr(torch, _TORCH_DTYPES[d])
            a = torch.randn(n, n, device=dev, dtype=dt, generator=gen)
            b = torch.randn(n, n, device=dev, dtype=dt, generator=gen)
            c = torch.empty(n, n, device=dev, dtype=dt)
            with _matmul_precision(torch, "high" if d == "tf32" else "highest"):
                ms = statistics.median(_time_cuda(torch, lambda: torch.matmul(a, b, out=c), reps, warmup))
            out["ms"][d] = ms
            out["tflops"][d] = matmul_tflops(n, ms)
            a = b = c = None  # free before the next dtype's (rebinding: the closure above reads these names)
        free, _total = torch.cuda.mem_get_info(index)
        nbytes = int(min(copy_gib * 2**30, free // 4)) // 16 * 16
        src = torch.empty(nbytes // 4, device=dev, dtype=torch.float32).uniform_(generator=gen)
        dst = torch.empty_like(src)
        ms = statistics.median(_time_cuda(torch, lambda: dst.copy_(src), reps, warmup))
        out["ms"]["copy"] = ms
        out["gbps"] = copy_gbps(src.numel() * 4, ms)
        src = dst = None  # free before empty_cache
        torch.cuda.empty_cache()
    out["sm_clock_mhz"]["after"] = sm_clock_mhz(device)
    sizes = ", ".join(f"{d} n={_GPU_MATMUL_N[d]}" for d in keys)
    out["method"] = {
        "matmul": f"torch.matmul of random n x n matrices ({sizes}; fp32 with TF32 off), 2n^3 FLOPs, "
                  f"CUDA events, median of {reps} after {warmup} warm-up calls",
        "copy": f"device-to-device copy_ of {nbytes / 2**30:.2f} GiB, bytes read + written, CUDA events, "
                f"median of {reps} after {warmup} warm-up calls",
    }
    return out


def _measure_cpu(torch: Any, keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"device": "cpu", "gpu_name": None, "tflops": {}, "gbps": None, "ms": {},
                           "sm_clock_mhz": {"before": None, "after": None},
                           "note": "CPU figures from small host-timed runs: rough, not a GPU roofline"}
    gen = torch.Generator().manual_seed(0)
    for d in keys:
        n = _CPU_MATMUL_N[d]
        dt = getattr(torch, _TORCH_DTYPES[d])
        a = torch.randn(n, n, dtype=dt, generator=gen)
        b = torch.randn(n, n, dtype=dt, generator=gen)
        c = torch.empty(n, n, dtype=dt)
        ms = statistics.median(_time_host(lambda: torch.matmul(a, b, out=c), reps=7, warmup=1, budget_s=0.25))
        out["ms"][d] = ms
        out["tflops"][d] = matmul_tflops(n, ms)
    nbytes = 64 * 2**20
    src = torch.rand(nbytes // 4, generator=gen)
    dst = torch.empty_like(src)
    ms = statistics.median(_time_host(lambda: dst.copy_(src), reps=7, warmup=1, budget_s=0.25))
    out["ms"]["copy"] = ms
    out["gbps"] = copy_gbps(nbytes, ms)
    sizes = ", ".join(f"{d} n={_CPU_MATMUL_N[d]}" for d in keys)
    out["method"] = {"matmul": f"torch.matmul of random matrices ({sizes}), perf_counter, median of <= 7",
                     "copy": "copy_ of 64 MiB, bytes read + written, perf_counter, median of <= 7"}
    return out


def peak_memory_mb(fn: Callable[[], object], device: str, *, above_baseline: bool = False) -> float | None:
    """Peak memory allocated by torch's caching allocator (MiB) while fn() runs once: reset the peak
    statistics, call, synchronize, read max_memory_allocated. The peak includes tensors that were already
    allocated (inputs); above_baseline=True subtracts what was allocated before the call. None on a CPU."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    dev = torch.device(device)
    torch.cuda.synchronize(dev)
    before = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev)
    return (peak - before if above_baseline else peak) / 2**20


# ---------------------------------------------------------------------------------------------------------
# Text for `attnbench env`
# ---------------------------------------------------------------------------------------------------------

_ENV_ORDER = ("env_id", "device_kind", "gpu_name", "compute_capability", "sm_count", "l2_mb", "memory_gib",
              "sm_clock_mhz", "sm_clock_max_mhz", "power_limit_w", "driver", "cuda", "cudnn", "torch",
              "triton", "python", "os", "cpu_model", "attnbench", "git_commit", "float32_matmul_precision",
              "tf32_matmul", "tf32_cudnn", "deterministic", "cudnn_benchmark", "cuda_available", "nvml")


def _fmt_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def format_env(fp: Mapping[str, Any]) -> str:
    """The fingerprint as aligned 'key: value' lines (env_id first, then a datasheet line when known);
    a CPU fingerprint gets a line saying whether a CUDA GPU is present."""
    rows: list[tuple[str, str]] = [("env_id", env_id(dict(fp)))]
    keys = [k for k in _ENV_ORDER[1:] if k in fp] + sorted(k for k in fp if k not in _ENV_ORDER)
    rows += [(k, _fmt_value(fp[k])) for k in keys]
    if fp.get("device_kind") == "cpu":
        if fp.get("cuda_available"):
            rows.append(("note", "device is the CPU (a CUDA GPU is present but not selected)"))
        else:
            rows.append(("note", "no CUDA GPU is present: CPU only (host timer; no GPU fields)"))
    else:
        spec = lookup_spec(fp.get("gpu_name"))
        if spec is not None:
            rows.append(("datasheet", f"{spec.name}: {_fmt_value(spec.bf16_tflops)} TFLOP/s dense bf16, "
                                      f"{_fmt_value(spec.mem_gbps)} GB/s ({spec.source.split(' (')[0]})"))
        else:
            rows.append(("datasheet", "no entry for this GPU"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in rows)


def format_ceilings(measured: Mapping[str, Any], fp: Mapping[str, Any] | None = None) -> str:
    """A measure_ceilings result as lines, each with its % of the datasheet figure when one is known."""
    spec = SPECS["CPU"] if measured.get("gpu_name") is None else lookup_spec(measured.get("gpu_name"))
    if fp is not None and fp.get("gpu_name"):
        spec = lookup_spec(fp.get("gpu_name")) or spec
    lines = [f"device: {measured.get('device')}" + (f" ({measured['gpu_name']})" if measured.get("gpu_name") else "")]
    if measured.get("note"):
        lines.append(f"note: {measured['note']}")

    def vs(value: float, ref: float | None, unit: str) -> str:
        return f" ({100 * value / ref:.0f}% of datasheet {ref:g} {unit})" if ref else ""

    for d, v in (measured.get("tflops") or {}).items():
        ref = spec.tflops(d) if spec else None
        lines.append(f"matmul {d}: {v:.4g} TFLOP/s{vs(v, ref, 'TFLOP/s')}")
    if measured.get("gbps"):
        g = measured["gbps"]
        lines.append(f"copy: {g:.4g} GB/s (read + written){vs(g, spec.mem_gbps if spec else None, 'GB/s')}")
    clk = measured.get("sm_clock_mhz") or {}
    if clk.get("before") is not None or clk.get("after") is not None:
        lines.append(f"SM clock: {_fmt_value(clk.get('before'))} -> {_fmt_value(clk.get('after'))} MHz")
    for k, v in (measured.get("method") or {}).items():
        lines.append(f"method ({k}): {v}")
    return "\n".join(lines)


__all__ = [
    "PERF_KEYS", "GPU_KEYS", "detect_device", "fingerprint", "env_id", "env_mismatch", "cpu_model",
    "git_commit", "sm_clock_mhz", "format_cudnn_version", "measure_ceilings", "matmul_tflops", "copy_gbps",
    "peak_memory_mb", "format_env", "format_ceilings",
]
