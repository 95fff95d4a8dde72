"""Capacity planning: per shape, the batch with the most tokens/s whose latency is confidently in budget."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UserError
from ..report.text import fmt_ms as _ms
from ..report.text import md_cell as _cell
from ..spec import Workload
from .tuner import TuneConfig, tune


@dataclass(frozen=True)
class CapacityRow:
    batch: int
    impl: str                 # label of what was timed
    status: str               # ok, not-measured, or the chosen candidate's absence ("none correct", oom ...)
    median_ms: float | None = None
    ci_ms: tuple[float, float] | None = None
    tokens_per_s: float | None = None
    within_budget: bool = False
    note: str = ""


@dataclass(frozen=True)
class CapacityPlan:
    shape: str                # the workload label without its batch
    latency_budget_ms: float
    rows: tuple[CapacityRow, ...]
    best_batch: int | None
    criterion: str = "95% CI upper bound of the median latency <= budget"

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "latency_budget_ms": self.latency_budget_ms, "criterion": self.criterion,
                "best_batch": self.best_batch,
                "rows": [{**dataclasses.asdict(r), "ci_ms": list(r.ci_ms) if r.ci_ms else None} for r in self.rows]}


def plan_capacity(config: TuneConfig, store, latency_budget_ms: float, impl: str = "best", *, timer=None,
                  fingerprint: dict[str, Any] | None = None, ceilings=None,
                  progress: Callable[[str], None] | None = None) -> list[CapacityPlan]:
    """Per shape (the workloads grouped by everything but batch): time each batch, and pick the batch
    with the most query tokens/s whose latency is within the budget (the CI upper bound of the median,
    so a batch is in only when it is confidently in). impl='best' tunes each batch (racing, cached) and
    times its winner; a name times that impl alone with the fixed policy. Batches are taken in
    increasing order, and once one is confidently over the budget (CI lower bound above it) the larger
    ones are not measured: latency is taken as non-decreasing in batch."""
    if latency_budget_ms <= 0:
        raise UserError("--latency-budget must be positive")
    groups: dict[Workload, list[Workload]] = {}
    for w in config.workloads:
        groups.setdefault(w.replace(batch=1), []).append(w)
    plans = []
    for shape, ws in groups.items():
        rows: list[CapacityRow] = []
        over = None
        for w in sorted(set(ws), key=lambda w: w.batch):
            if over is not None:
                rows.append(CapacityRow(w.batch, "", "not-measured",
                                        note=f"batch {over} was already over the budget"))
                continue
            if impl == "best":
                cfg = dataclasses.replace(config, workloads=[w])
            else:
                cfg = dataclasses.replace(config, workloads=[w], impls=[impl], baseline="", exhaustive=True)
            r = tune(cfg, store, timer=timer, fingerprint=fingerprint, ceilings=ceilings, progress=progress).workloads[0]
            win = r.winner
            if win is None:
                failed = [c for c in r.candidates if not c.timed]
                why = "; ".join(f"{c.label}: {c.status} ({c.reason})" for c in failed[:3]) or "nothing to time"
                rows.append(CapacityRow(w.batch, "" if impl == "best" else impl, "failed", note=why))
                if failed and all(c.status == "oom" for c in failed):
                    over = w.batch
                continue
            from ..analysis import metrics

            lo, hi = win.ci_ms
            within = hi <= latency_budget_ms
            rows.append(CapacityRow(w.batch, win.label, "ok", win.median_ms, (lo, hi),
                                    metrics.tokens_per_s(w, win.median_ms), within))
            if lo > latency_budget_ms:
                over = w.batch
        inside = [r for r in rows if r.within_budget]
        best = max(inside, key=lambda r: r.tokens_per_s).batch if inside else None
        plans.append(CapacityPlan(shape=_shape_label(shape), latency_budget_ms=latency_budget_ms, rows=tuple(rows),
                                  best_batch=best))
    return plans


def _shape_label(w: Workload) -> str:
    return w.label.split(" ", 1)[1]  # drop 'B1'


def capacity_markdown(plans: list[CapacityPlan]) -> str:
    out = ["# attnbench tune --objective throughput", ""]
    for p in plans:
        best = f"batch {p.best_batch}" if p.best_batch is not None else "no batch within the budget"
        out += [f"## {p.shape}: {best} (budget {_ms(p.latency_budget_ms)} ms; {p.criterion})", "",
                "| batch | impl | median ms | 95% CI | tokens/s | within budget |", "|---|---|---|---|---|---|"]
        for r in p.rows:
            ci = f"[{_ms(r.ci_ms[0])}, {_ms(r.ci_ms[1])}]" if r.ci_ms else ""
            tps = f"{r.tokens_per_s:.4g}" if r.tokens_per_s else ""
            inside = ("**yes (best)**" if r.batch == p.best_batch else "yes") if r.within_budget else \
                ("no" if r.status == "ok" else f"{r.status}: {r.note}")
            out.append("| " + " | ".join(_cell(x) for x in (r.batch, r.impl, _ms(r.median_ms), ci, tps, inside)) + " |")
        out.append("")
    out.append("tokens/s counts query tokens (batch x q_len) per second at the median latency.")
    return "\n".join(out)


def capacity_json(plans: list[CapacityPlan]) -> dict[str, Any]:
    return {"format": "attnbench-capacity", "version": 1, "plans": [p.to_dict() for p in plans]}
