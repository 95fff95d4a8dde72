"""A seeded generator of benchmark timings with noise that arrives in bursts and drifts, for the round-level tests.

Time runs through slots: one slot per batch. In an interleaved A/B measurement each round holds one
slot of A and one of B, in an order a fair coin picks (as measure_interleaved shuffles). A sample's time
is base x ratio (B: 1) x the round's level x the slot's burst x exp(e_t):

- the round's level: a slow random walk (drift: clocks, heat), shared by the two slots of a round;
- the slot's burst: with probability `p_burst`, a neighbour steals time for the whole batch:
  exp(|N(0, burst)|) >= 1 (interference only slows things down);
- e_t: AR(1) noise within a batch, e_t = phi e_{t-1} + N(0, sd), each batch starting from the
  stationary distribution (autocorrelated samples within a batch).
"""

from __future__ import annotations

import numpy as np


def interleaved(rng: np.random.Generator, rounds: int = 10, per_batch: int = 5, ratio: float = 1.0,
                base: float = 1.0, drift: float = 0.01, p_burst: float = 0.3, burst: float = 0.08,
                phi: float = 0.7, sd: float = 0.01):
    """(a samples, a batch sizes, b samples, b batch sizes) of one interleaved A/B measurement; A's true time
    is `ratio` x B's."""
    level = 0.0
    out = {"a": [], "b": []}
    for _ in range(rounds):
        level += rng.normal(0.0, drift)
        order = ("a", "b") if rng.random() < 0.5 else ("b", "a")
        for side in order:
            slot = float(np.exp(abs(rng.normal(0.0, burst)))) if rng.random() < p_burst else 1.0
            e = rng.normal(0.0, sd / np.sqrt(1.0 - phi ** 2))
            for _ in range(per_batch):
                e = phi * e + rng.normal(0.0, sd)
                out[side].append(base * (ratio if side == "a" else 1.0) * np.exp(level) * slot * np.exp(e))
    sizes = [per_batch] * rounds
    return np.array(out["a"]), sizes, np.array(out["b"]), sizes


def apart(rng: np.random.Generator, batches: int = 10, per_batch: int = 5, base: float = 1.0,
          p_burst: float = 0.3, burst: float = 0.08, phi: float = 0.7, sd: float = 0.01):
    """(samples, batch sizes) of one measurement on its own (no partner), with the same kind of noise and no
    drift (two such measurements of one kernel have the same distribution)."""
    xs = []
    for _ in range(batches):
        slot = float(np.exp(abs(rng.normal(0.0, burst)))) if rng.random() < p_burst else 1.0
        e = rng.normal(0.0, sd / np.sqrt(1.0 - phi ** 2))
        for _ in range(per_batch):
            e = phi * e + rng.normal(0.0, sd)
            xs.append(base * slot * np.exp(e))
    return np.array(xs), [per_batch] * batches
