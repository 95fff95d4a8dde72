"""The hardware: environment fingerprint and id, datasheet table, measured ceilings, roofline and
plausibility.

Four layers, from cheap to costly:

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
import math
import os
import platform
import re
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

# Fingerprint keys that change performance; the environment id hashes only these. Clocks, power limit,
# Python, attnbench version and git commit are recorded but deliberately left out.
PERF_KEYS = ("device_kind", "gpu_name", "sm_count", "driver", "cuda", "cudnn", "torch", "triton", "cpu_model",
             "tf32_matmul", "tf32_cudnn", "deterministic")

# Keys present only in a CUDA fingerprint.
GPU_KEYS = ("gpu_name", "compute_capability", "sm_count", "l2_mb", "memory_gib", "sm_clock_mhz",
            "sm_clock_max_mhz", "power_limit_w", "driver", "nvml")

DTYPE_ALIASES = {
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16",
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "torch.float32": "fp32",
    "tf32": "tf32",
    "fp64": "fp64", "float64": "fp64", "double": "fp64", "torch.float64": "fp64",
}


def _dtype_key(dtype: Any) -> str:
    key = DTYPE_ALIASES.get(str(dtype).lower())
    if key is None:
        raise ValueError(f"unknown dtype {dtype!r}; use one of fp16, bf16, fp32, tf32, fp64")
    return key


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

    from . import __version__

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
# Datasheet table
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceSpec:
    """Vendor datasheet figures. Tensor figures are dense (half the "with sparsity" number) and, for
    fp16, with FP32 accumulate (what torch's matmuls and attention kernels use). None = not published."""

    name: str
    fp16_tflops: float | None        # dense FP16 tensor core
    bf16_tflops: float | None        # dense BF16 tensor core
    fp32_tflops: float | None        # FP32 non-tensor (CUDA cores)
    fp64_tflops: float | None        # FP64 non-tensor
    mem_gbps: float | None           # memory bandwidth, GB/s (1e9)
    l2_mb: float | None
    sm_count: int | None
    memory_gb: float | None
    source: str
    tf32_tflops: float | None = None  # dense TF32 tensor core
    fp64_tensor_tflops: float | None = None  # FP64 tensor core (A100, H100, H200): what cuBLAS DGEMM uses
    note: str = ""

    def tflops(self, dtype: str, tf32: bool = False) -> float | None:
        """Matmul peak for a dtype ('fp16', 'bf16', 'fp32', 'tf32', 'fp64'); 'fp32' with tf32=True gives the
        TF32 tensor peak where there is one; 'fp64' the FP64 tensor peak where there is one."""
        d = _dtype_key(dtype)
        if d == "fp32" and tf32 and self.tf32_tflops is not None:
            return self.tf32_tflops
        if d == "fp64" and self.fp64_tensor_tflops is not None:
            return self.fp64_tensor_tflops
        return {"fp16": self.fp16_tflops, "bf16": self.bf16_tflops, "fp32": self.fp32_tflops,
                "tf32": self.tf32_tflops, "fp64": self.fp64_tflops}[d]


SPECS: dict[str, DeviceSpec] = {s.name: s for s in (
    DeviceSpec("L4", 121.0, 121.0, 30.3, None, 300.0, 48.0, 58, 24.0, tf32_tflops=60.0,
               source="NVIDIA L4 Tensor Core GPU datasheet (242 FP16/BF16 and 120 TF32 are with sparsity); "
                      "SMs and L2 from the Ada Lovelace architecture whitepaper (AD104)"),
    DeviceSpec("A10G", 70.0, 70.0, 35.0, None, 600.0, 6.0, 80, 24.0,
               source="AWS EC2 G5 instance specifications (no NVIDIA datasheet for the A10G); "
                      "tensor rate about half the A10's",
               note="AWS-only variant of the A10 (GA102, 80 SMs)"),
    DeviceSpec("A10", 125.0, 125.0, 31.2, None, 600.0, 6.0, 72, 24.0, tf32_tflops=62.5,
               source="NVIDIA A10 Tensor Core GPU datasheet (250 FP16 and 125 TF32 are with sparsity)"),
    DeviceSpec("A100 40GB SXM", 312.0, 312.0, 19.5, 9.7, 1555.0, 40.0, 108, 40.0, tf32_tflops=156.0, fp64_tensor_tflops=19.5,
               source="NVIDIA A100 Tensor Core GPU datasheet (SXM4 40GB; 624 FP16 is with sparsity; "
                      "FP64 tensor 19.5)"),
    DeviceSpec("A100 80GB SXM", 312.0, 312.0, 19.5, 9.7, 2039.0, 40.0, 108, 80.0, tf32_tflops=156.0, fp64_tensor_tflops=19.5,
               source="NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB HBM2e)"),
    DeviceSpec("A100 40GB PCIe", 312.0, 312.0, 19.5, 9.7, 1555.0, 40.0, 108, 40.0, tf32_tflops=156.0, fp64_tensor_tflops=19.5,
               source="NVIDIA A100 Tensor Core GPU datasheet (PCIe 40GB)"),
    DeviceSpec("A100 80GB PCIe", 312.0, 312.0, 19.5, 9.7, 1935.0, 40.0, 108, 80.0, tf32_tflops=156.0, fp64_tensor_tflops=19.5,
               source="NVIDIA A100 Tensor Core GPU datasheet (PCIe 80GB HBM2e)"),
    DeviceSpec("H100 SXM", 989.0, 989.0, 67.0, 34.0, 3350.0, 50.0, 132, 80.0, tf32_tflops=494.0, fp64_tensor_tflops=67.0,
               source="NVIDIA H100 Tensor Core GPU datasheet (SXM5; 1979 FP16/BF16 and 989 TF32 are with "
                      "sparsity; FP64 tensor 67); SMs and L2 from the Hopper architecture whitepaper"),
    DeviceSpec("H100 PCIe", 756.0, 756.0, 51.0, 26.0, 2000.0, 50.0, 114, 80.0, tf32_tflops=378.0, fp64_tensor_tflops=51.0,
               source="NVIDIA H100 Tensor Core GPU datasheet (PCIe; 1513 FP16/BF16 is with sparsity); "
                      "SMs from the Hopper architecture whitepaper"),
    DeviceSpec("H100 NVL", 835.0, 835.0, 60.0, 30.0, 3900.0, 50.0, 132, 94.0, tf32_tflops=417.0, fp64_tensor_tflops=60.0,
               source="NVIDIA H100 Tensor Core GPU datasheet (H100 NVL, per GPU; 1671 FP16/BF16 is with "
                      "sparsity)"),
    DeviceSpec("H200", 989.0, 989.0, 67.0, 34.0, 4800.0, 60.0, 132, 141.0, tf32_tflops=494.0, fp64_tensor_tflops=67.0,
               source="NVIDIA H200 Tensor Core GPU datasheet (H200 SXM; 1979 FP16/BF16 is with sparsity); "
                      "132 SMs and 60 MB L2 as torch reports them on an H200 (not in the datasheet)"),
    DeviceSpec("H200 NVL", 835.0, 835.0, 60.0, 30.0, 4800.0, None, 132, 141.0, tf32_tflops=417.0, fp64_tensor_tflops=60.0,
               source="NVIDIA H200 Tensor Core GPU datasheet (H200 NVL; 1671 FP16/BF16 is with sparsity)"),
    DeviceSpec("B200", 2250.0, 2250.0, 80.0, 40.0, 8000.0, None, 148, 180.0, tf32_tflops=1100.0, fp64_tensor_tflops=40.0,
               source="NVIDIA HGX B200 datasheet / Blackwell architecture technical brief (HGX B200 at "
                      "1000 W, per GPU; 4.5 PFLOP/s FP16/BF16 is with sparsity); SM count as torch reports it",
               note="L2 size not in the datasheet; the fingerprint reads it from the device"),
    DeviceSpec("L40S", 362.0, 362.0, 91.6, None, 864.0, 96.0, 142, 48.0, tf32_tflops=183.0,
               source="NVIDIA L40S GPU datasheet (733 FP16/BF16 and 366 TF32 are with sparsity)"),
    DeviceSpec("RTX 4090", 165.2, 165.2, 82.6, None, 1008.0, 72.0, 128, 24.0, tf32_tflops=82.6,
               source="NVIDIA Ada Lovelace GPU architecture whitepaper, GeForce RTX 4090 (FP16/BF16 tensor "
                      "with FP32 accumulate; 330 TFLOP/s is FP16 accumulate, 661 with sparsity)",
               note="GeForce: FP32-accumulate tensor math runs at half the FP16-accumulate rate"),
    DeviceSpec("T4", 65.0, None, 8.1, None, 320.0, 4.0, 40, 16.0,
               source="NVIDIA T4 Tensor Core GPU datasheet (FP16 mixed precision); no BF16 or TF32 on Turing"),
    DeviceSpec("CPU", None, None, None, None, None, None, None, None,
               source="generic CPU: no datasheet figures; measure with measure_ceilings('cpu')",
               note="CPU peaks depend on the model, cores and vector units; only measured ceilings apply"),
)}

# torch's device names -> SPECS keys; the first matching pattern wins (order matters: 'a100' before 'a10',
# 'h100 nvl' before 'h100'). Boundaries keep GH200/GB200 (different power and memory) from matching
# H200/B200.
_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"(?<![a-z0-9])h200\b.*\bnvl\b", "H200 NVL"),
    (r"(?<![a-z0-9])h200\b", "H200"),
    (r"(?<![a-z0-9])h100\b.*\bnvl\b", "H100 NVL"),
    (r"(?<![a-z0-9])h100\b.*\bpcie\b", "H100 PCIe"),
    (r"(?<![a-z0-9])h100\b", "H100 SXM"),
    (r"(?<![a-z0-9])b200\b", "B200"),
    (r"(?<![a-z0-9])a100\b(?=.*\bpcie\b)(?=.*80\s*gb)", "A100 80GB PCIe"),
    (r"(?<![a-z0-9])a100\b.*\bpcie\b", "A100 40GB PCIe"),
    (r"(?<![a-z0-9])a100\b.*80\s*gb", "A100 80GB SXM"),
    (r"(?<![a-z0-9])a100\b", "A100 40GB SXM"),
    (r"(?<![a-z0-9])a10g\b", "A10G"),
    (r"(?<![a-z0-9])a10\b", "A10"),
    (r"(?<![a-z0-9])l40s\b", "L40S"),
    (r"(?<![a-z0-9])l4\b", "L4"),
    (r"\brtx\s*4090\b(?!\s*d\b)", "RTX 4090"),
    (r"(?<![a-z0-9])t4\b", "T4"),
)


def lookup_spec(gpu_name: str | None) -> DeviceSpec | None:
    """The datasheet entry for a torch device name ("NVIDIA H100 80GB HBM3" -> H100 SXM,
    "NVIDIA A100-SXM4-80GB" -> A100 80GB SXM, "cpu" -> the generic CPU entry); None when unknown."""
    if not gpu_name:
        return None
    name = str(gpu_name).lower().replace("_", " ").replace("-", " ")
    if name.strip() == "cpu":
        return SPECS["CPU"]
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, name):
            return SPECS[key]
    return None


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
            del a, b, c
        free, _total = torch.cuda.mem_get_info(index)
        nbytes = int(min(copy_gib * 2**30, free // 4)) // 16 * 16
        src = torch.empty(nbytes // 4, device=dev, dtype=torch.float32).uniform_(generator=gen)
        dst = torch.empty_like(src)
        ms = statistics.median(_time_cuda(torch, lambda: dst.copy_(src), reps, warmup))
        out["ms"]["copy"] = ms
        out["gbps"] = copy_gbps(src.numel() * 4, ms)
        del src, dst
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
# Roofline and plausibility (pure)
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ceilings:
    """Compute ceilings per dtype (TFLOP/s) and the memory ceiling (GB/s), each with its source:
    'measured', 'datasheet', 'datasheet (TF32)', 'measured (TF32)' or 'unknown'."""

    tflops: dict[str, float | None] = field(default_factory=dict)
    gbps: float | None = None
    tflops_source: dict[str, str] = field(default_factory=dict)
    gbps_source: str = "unknown"
    spec_name: str | None = None
    notes: tuple[str, ...] = ()

    def peak(self, dtype: str) -> float | None:
        d = _dtype_key(dtype)
        return self.tflops.get(d)

    def source(self, dtype: str) -> str:
        return self.tflops_source.get(_dtype_key(dtype), "unknown")

    def ridge(self, dtype: str) -> float | None:
        """Ridge point in FLOP/byte: below it a kernel is memory-bound, above it compute-bound."""
        p = self.peak(dtype)
        return ridge_point(p, self.gbps) if p and self.gbps else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d


def ceilings_for(fp: Mapping[str, Any], measured: Mapping[str, Any] | None = None) -> Ceilings:
    """Ceilings for an environment: measured values (a measure_ceilings result) where present, else the
    datasheet entry for fp's GPU (or the generic CPU entry), else None with source 'unknown'.

    A measured result taken on another GPU model than fp's is ignored (with a note). When fp says TF32
    matmuls are on, the fp32 ceiling is the TF32 one (measured 'tf32', else the datasheet's)."""
    notes: list[str] = []
    is_cpu = fp.get("device_kind") == "cpu"
    spec = SPECS["CPU"] if is_cpu else lookup_spec(fp.get("gpu_name"))
    if spec is None:
        notes.append(f"no datasheet entry for {fp.get('gpu_name')!r}")
    m = dict(measured or {})
    if m and m.get("gpu_name") and fp.get("gpu_name") and m["gpu_name"] != fp["gpu_name"]:
        notes.append(f"measured ceilings are for {m['gpu_name']}, not {fp['gpu_name']}: ignored")
        m = {}
    if m and m.get("device"):
        m_is_cpu = not str(m["device"]).startswith("cuda") or (m.get("gpu_name") is None and "gpu_name" in m)
        if m_is_cpu != is_cpu:
            notes.append(f"measured ceilings are for {m['device']}, not a {fp.get('device_kind')} device: ignored")
            m = {}
    m_tflops = {k: v for k, v in (m.get("tflops") or {}).items() if v}
    tf32_on = bool(fp.get("tf32_matmul")) and not is_cpu
    tflops: dict[str, float | None] = {}
    source: dict[str, str] = {}
    for d in ("fp16", "bf16", "fp32", "tf32", "fp64"):
        value, src = None, "unknown"
        if d == "fp32" and tf32_on:
            if m_tflops.get("tf32"):
                value, src = m_tflops["tf32"], "measured (TF32)"
            elif spec is not None and spec.tf32_tflops:
                value, src = spec.tf32_tflops, "datasheet (TF32)"
        if value is None and m_tflops.get(d):
            value, src = m_tflops[d], "measured"
        if value is None and spec is not None and spec.tflops(d):
            value, src = spec.tflops(d), "datasheet"
        tflops[d], source[d] = value, src
    if m.get("gbps"):
        gbps, gsrc = float(m["gbps"]), "measured"
    elif spec is not None and spec.mem_gbps:
        gbps, gsrc = spec.mem_gbps, "datasheet"
    else:
        gbps, gsrc = None, "unknown"
    return Ceilings(tflops=tflops, gbps=gbps, tflops_source=source, gbps_source=gsrc,
                    spec_name=spec.name if spec else None, notes=tuple(notes))


def ridge_point(peak_tflops: float, peak_gbps: float) -> float:
    """FLOP/byte where the memory roof meets the compute roof: peak_tflops*1e12 / (peak_gbps*1e9)."""
    if peak_tflops <= 0 or peak_gbps <= 0:
        raise ValueError("peaks must be positive")
    return peak_tflops * 1e3 / peak_gbps


def roofline_bound_tflops(intensity_flop_per_byte: float, peak_tflops: float, peak_gbps: float) -> float:
    """Attainable TFLOP/s at an arithmetic intensity: min(peak, intensity * bandwidth).
    E.g. 100 FLOP/B at 3000 GB/s under an 800 TFLOP/s peak -> min(800, 300) = 300."""
    if intensity_flop_per_byte < 0 or peak_tflops < 0 or peak_gbps < 0:
        raise ValueError("intensity and peaks must be non-negative")
    if math.isinf(intensity_flop_per_byte):
        return float(peak_tflops)
    return min(float(peak_tflops), intensity_flop_per_byte * peak_gbps / 1e3)


def regime(flops: float, bytes: float, device_ms: float | None, host_ms: float | None,  # noqa: A002
           ceilings: Ceilings, dtype: str) -> str:
    """'host-bound' when the median host time per call exceeds the device time (the GPU waits for the
    host), else 'memory-bound' or 'compute-bound' by the intensity against the ridge point; 'unknown'
    when the ceilings are."""
    if host_ms is not None and device_ms is not None and host_ms > device_ms:
        return "host-bound"
    ridge = ceilings.ridge(dtype)
    if ridge is None:
        return "unknown"
    intensity = math.inf if bytes <= 0 else flops / bytes
    return "memory-bound" if intensity < ridge else "compute-bound"


def plausibility(achieved_tflops: float | None, achieved_gbps: float | None, ceilings: Ceilings,
                 dtype: str, *, tolerance: float = 0.0) -> tuple[str, str]:
    """('ok', '') or ('implausible', reason) when a figure is above 100% (+ tolerance) of the compute or the
    memory ceiling; the reason names the likely cause."""
    reasons: list[str] = []
    peak = ceilings.peak(dtype)
    if achieved_tflops is not None and peak and achieved_tflops > peak * (1 + tolerance):
        reasons.append(f"{achieved_tflops:.4g} TFLOP/s is {100 * achieved_tflops / peak:.0f}% of the "
                       f"{ceilings.source(dtype)} {_dtype_key(dtype)} peak ({peak:.4g} TFLOP/s): above the "
                       f"matmul ceiling: timer error or miscounted FLOPs")
    if achieved_gbps is not None and ceilings.gbps and achieved_gbps > ceilings.gbps * (1 + tolerance):
        reasons.append(f"{achieved_gbps:.4g} GB/s is {100 * achieved_gbps / ceilings.gbps:.0f}% of the "
                       f"{ceilings.gbps_source} memory bandwidth ({ceilings.gbps:.4g} GB/s): above the copy "
                       f"ceiling: data was probably cache-resident (warm L2) or the bytes are miscounted")
    return ("implausible", "; ".join(reasons)) if reasons else ("ok", "")


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
    "git_commit", "sm_clock_mhz", "format_cudnn_version", "DeviceSpec", "SPECS", "lookup_spec",
    "measure_ceilings", "matmul_tflops", "copy_gbps", "peak_memory_mb", "Ceilings", "ceilings_for",
    "ridge_point", "roofline_bound_tflops", "regime", "plausibility", "format_env", "format_ceilings",
]
