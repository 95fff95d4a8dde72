"""Is A faster than B: per-workload verdicts with CIs and tests, the suite's geometric mean, and their output."""
