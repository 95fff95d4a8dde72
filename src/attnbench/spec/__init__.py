"""What is measured: the Workload, sweeps of workloads, sweep files and the built-in presets."""

from .sweep import AXES, Sweep, dedupe, expand, load_preset, load_sweep, parse_list, preset_names, sweep_from_data
from .workload import DTYPE_ALIASES, DTYPE_BYTES, DTYPES, LAYOUTS, PASSES, Workload

__all__ = ["AXES", "DTYPES", "DTYPE_ALIASES", "DTYPE_BYTES", "LAYOUTS", "PASSES", "Sweep", "Workload", "dedupe",
           "expand", "load_preset", "load_sweep", "parse_list", "preset_names", "sweep_from_data"]
