"""Where measuring runs: in this process, one worker process per local GPU, or a Dask cluster."""

from .cluster import DaskExecutor, InProcess, open_executor, parse_executor
from .sweep import run_sweep

__all__ = ["DaskExecutor", "InProcess", "open_executor", "parse_executor", "run_sweep"]
