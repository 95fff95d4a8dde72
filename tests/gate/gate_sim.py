"""Simulated gate checks of unchanged and slowed suites: the figures docs/gate.md gives for false failures.

Run `PYTHONPATH=src:. python -m tests.gate.gate_sim --sigma 0.02 --suites 100` to reproduce them (a few
minutes per 100 suites of 50 cells on one core); tests/gate/test_gate.py checks small cases.
"""

from __future__ import annotations

import argparse

import numpy as np

from attnbench.gate import decision as g
from attnbench.gate.baseline import Baseline, BaselineCell
from attnbench.spec import Workload
from attnbench.store import Measurement


def offset_meas(rng, w: Workload, median: float, sigma: float, ratio: float = 1.0) -> Measurement:
    """One measurement of 10 batches of 10: its own offset exp(N(0, sigma)) (what moves between
    measurements: clocks, placement), 20% of batches hit by a burst, 1% noise within."""
    off = float(np.exp(rng.normal(0.0, sigma)))
    xs = []
    for _ in range(10):
        burst = float(np.exp(abs(rng.normal(0.0, 0.03)))) if rng.random() < 0.2 else 1.0
        xs += list(median * ratio * off * burst * np.exp(rng.normal(0.0, 0.01, 10)))
    return Measurement(workload=w, impl="sdpa-auto", status="ok", samples_ms=tuple(float(x) for x in xs),
                       timer="fake", batch_sizes=(10,) * 10)


def gate_sim(seed: int, sigma: float, cells: int, ratio: float = 1.0, floor: bool = True) -> list[str]:
    """Verdicts of one gate check (5-measurement baseline, one confirmation) of `cells` cells, the first
    `ratio` x slower now."""
    rng = np.random.default_rng(seed)
    ws = [Workload(1 + i // 10, 8, 8, 128 * (i % 10 + 1), 128 * (i % 10 + 1), 64) for i in range(cells)]
    base = Baseline.empty({}, "env0", "fake", {}, date="2026-01-01")
    base.cells = {}
    for i, w in enumerate(ws):
        c = BaselineCell.from_measurements([offset_meas(rng, w, 0.05 * (i + 1), sigma) for _ in range(5)],
                                           date="2026-01-01")
        if not floor:
            c.repeat_medians = [c.median_ms]
        base.cells[c.key] = c
    index = {w.key: i for i, w in enumerate(ws)}

    def now(w: Workload) -> Measurement:
        i = index[w.key]
        return offset_meas(rng, w, 0.05 * (i + 1), sigma, ratio if i == 0 else 1.0)

    res = g.check(base, [now(w) for w in ws], remeasure=lambda cs: [now(c.workload) for c in cs])
    return [c.verdict for c in res.cells]


def _ci(k: int, n: int) -> str:
    from scipy.stats import binomtest

    lo, hi = binomtest(k, n).proportion_ci(0.95, method="exact")
    return f"{k}/{n} = {k / n:.2%} [{lo:.2%}, {hi:.2%}]"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sigma", type=float, default=0.02, help="sd of the offset between measurements")
    ap.add_argument("--suites", type=int, default=100)
    ap.add_argument("--cells", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1000, help="suite i uses seed + i")
    args = ap.parse_args(argv)
    regressed = failing = 0
    for s in range(args.suites):
        r = gate_sim(args.seed + s, args.sigma, args.cells).count(g.REGRESSION)
        regressed, failing = regressed + r, failing + (r > 0)
    print(f"sigma {args.sigma}, {args.suites} unchanged suites of {args.cells} cells (seeds {args.seed}.."
          f"{args.seed + args.suites - 1}): cells failed {_ci(regressed, args.suites * args.cells)}; "
          f"suites failed {_ci(failing, args.suites)}")


if __name__ == "__main__":
    main()
