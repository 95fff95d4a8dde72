"""The fastest correct impl per workload: the search, its cache and report, capacity plans, and the runtime dispatch."""
