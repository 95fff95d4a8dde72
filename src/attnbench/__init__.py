"""attnbench: measure, compare, autotune and guard the speed of attention kernels."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it. Loaded on first use, so `import attnbench` (and `--help`)
# stays fast and imports no torch.
_LAZY = {
    "Workload": "spec",
    "Sweep": "spec",
    "load_preset": "spec",
    "load_sweep": "spec",
    "Measurement": "store",
    "Store": "store",
    "RunConfig": "measure.runner",
    "run": "measure.runner",
    "TimingPolicy": "measure.timing",
    "UserError": "errors",
    "compare_runs": "compare.comparison",
    "compare_impls": "compare.comparison",
    "TuneConfig": "tune.model",
    "autotune": "tune.tuner",  # tune.tuner.tune, named apart from the subpackage `attnbench.tune`
    "attention": "tune.dispatch",
    "explain": "tune.dispatch",
}

_RENAMED = {"autotune": "tune"}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'attnbench' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), _RENAMED.get(name, name))
    globals()[name] = value
    return value
