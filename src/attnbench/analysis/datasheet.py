"""Vendor datasheet figures (dense, not sparse) for common GPUs, and the lookup from torch's device names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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
