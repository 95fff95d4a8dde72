"""attnbench: measure, compare, autotune and guard the speed of attention kernels."""

__version__ = "0.1.0"
