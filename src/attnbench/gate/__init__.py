"""The CI ratchet: the baseline file, the check of a run against it, and the orchestration of a gate run."""
