"""The hardware: environment fingerprint and its id (first version; datasheet, ceilings and roofline to come)."""

from __future__ import annotations

import hashlib
import json
import platform
from typing import Any

# Fingerprint keys that change performance; the environment id hashes only these.
PERF_KEYS = ("device_kind", "gpu_name", "sm_count", "driver", "cuda", "cudnn", "torch", "triton", "cpu_model")


def detect_device() -> str:
    """'cuda' when torch sees a GPU, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def fingerprint(device: str) -> dict[str, Any]:
    import torch

    from . import __version__

    fp: dict[str, Any] = {
        "device_kind": "cuda" if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_model": platform.processor() or platform.machine(),
        "attnbench": __version__,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        fp.update(gpu_name=props.name, sm_count=props.multi_processor_count,
                  cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return fp


def env_id(fp: dict[str, Any]) -> str:
    """A short stable hash of the performance-relevant parts of a fingerprint."""
    part = {k: fp.get(k) for k in PERF_KEYS}
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:12]
