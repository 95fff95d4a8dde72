"""What changed over time: each cell's median and CI across stored runs, with gate verdicts where stored."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..spec import Workload
from ..store import Measurement, RunInfo, Store, params_key

REGRESSION, IMPROVEMENT = "regression", "improvement"


@dataclass
class Point:
    """One cell in one run."""

    run_id: int
    status: str
    median_ms: float | None = None
    ci: tuple[float, float] | None = None
    n: int = 0
    reason: str = ""
    verdict: str = ""      # '' when no gate verdict is stored


@dataclass
class Cell:
    """A (workload, impl[params], timer, environment) cell followed across runs, in run order: runs on another
    GPU or software are another cell, never one line."""

    workload: Workload
    impl_label: str
    timer: str
    points: list[Point] = field(default_factory=list)
    env_id: str = ""
    device: str = ""       # 'NVIDIA H200 · 3f2a1c' when the history holds several environments, else ''

    @property
    def series(self) -> str:
        """impl[params] (timer) · device: what a plot line or a table row is called."""
        return (self.impl_label + (f" ({self.timer})" if self.timer else "")
                + (f" · {self.device}" if self.device else ""))

    @property
    def label(self) -> str:
        return f"{self.workload.label} · {self.series}"


@dataclass
class History:
    runs: list[RunInfo]
    cells: list[Cell]
    filters: dict[str, str | None]

    def run_position(self) -> dict[int, int]:
        return {r.run_id: i for i, r in enumerate(self.runs)}


def normalize_verdict(value: Any) -> str:
    """A stored verdict (a string, or a dict with 'verdict'/'status') as 'regression', 'improvement',
    another short word, or '' when there is none."""
    if isinstance(value, dict):
        value = value.get("verdict") or value.get("status") or value.get("result") or ""
    text = str(value or "").strip().lower()
    if not text:
        return ""
    if "regress" in text or "slower" in text:
        return REGRESSION
    if "improv" in text or "faster" in text:
        return IMPROVEMENT
    return text


class GateVerdicts:
    """The tolerant hook for gate verdicts, read in this order:

    1. `measurement.extra["gate_verdict"]` (a string, or a dict with a 'verdict' key);
    2. `store.get("gate", str(run_id))`: a dict, optionally under 'cells', mapping a cell key to a verdict;
       keys may be 'workload_key|impl|params' (params as canonical JSON, '' when none) or
       'workload_key|impl_label'.
    Anything else is ignored: a missing or unknown format yields no verdict, never an error.
    """

    def __init__(self, store: Store):
        self.store = store
        self._by_run: dict[int, dict[str, Any]] = {}

    def _run_table(self, run_id: int) -> dict[str, Any]:
        if run_id not in self._by_run:
            try:
                value = self.store.get("gate", str(run_id))
            except Exception:  # a foreign or damaged kv entry must not break a report
                value = None
            if isinstance(value, dict) and isinstance(value.get("cells"), dict):
                value = value["cells"]
            self._by_run[run_id] = value if isinstance(value, dict) else {}
        return self._by_run[run_id]

    def __call__(self, m: Measurement) -> str:
        extra = m.extra if isinstance(m.extra, dict) else {}
        if extra.get("gate_verdict"):
            return normalize_verdict(extra["gate_verdict"])
        if m.run_id is None:
            return ""
        table = self._run_table(m.run_id)
        for key in (f"{m.workload.key}|{m.impl}|{params_key(m.params)}", f"{m.workload.key}|{m.impl_label}"):
            if key in table:
                return normalize_verdict(table[key])
        return ""


def _matches(m: Measurement, workload: str | None, impl: str | None) -> bool:
    if workload:
        needle = workload.lower()
        if needle not in m.workload.key.lower() and needle not in m.workload.label.lower():
            return False
    if impl and impl not in (m.impl, m.impl_label):
        return False
    return True


def gather(store: Store, workload: str | None = None, impl: str | None = None) -> History:
    """Every matching cell across stored runs. `workload` matches a substring of the workload key or label
    (case-insensitive); `impl` matches an impl name or impl label exactly. The CI of each median is the run
    report's (a bootstrap over the measurement's batches, tables.summarize), so both pages give one interval."""
    from ..analysis.rounds import block_median_ci
    from ..analysis.stats import median

    verdicts = GateVerdicts(store)
    cells: dict[tuple[str, str, str, str], Cell] = {}
    run_ids: set[int] = set()
    for info in store.runs():
        for m in store.measurements(info.run_id):
            if not _matches(m, workload, impl):
                continue
            run_ids.add(info.run_id)
            env_id = m.env_id or info.env_id
            key = (m.workload.key, m.impl_label, m.timer, env_id)
            cell = cells.setdefault(key, Cell(m.workload, m.impl_label, m.timer, env_id=env_id))
            p = Point(run_id=info.run_id, status=m.status, n=len(m.samples_ms), reason=m.reason,
                      verdict=verdicts(m))
            if m.ok:
                p.median_ms = median(m.samples_ms)
                p.ci = block_median_ci(m.samples_ms, m.batch_sizes or None, seed=0)
            cell.points.append(p)
    env_ids = list(dict.fromkeys(c.env_id for c in cells.values()))
    if len(env_ids) > 1:
        for c in cells.values():
            env = store.environment(c.env_id) or {}
            c.device = f"{env.get('gpu_name') or 'CPU ' + str(env.get('cpu_model', '?'))} · {c.env_id[:6]}"
    runs = [r for r in store.runs() if r.run_id in run_ids]
    return History(runs=runs, cells=list(cells.values()), filters={"workload": workload, "impl": impl})


def run_date(r: RunInfo) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))


def run_title(r: RunInfo) -> str:
    return f"#{r.run_id} {run_date(r)}"


def _fmt(x: float) -> str:
    return f"{x:.4g}" if x < 100 else f"{x:.1f}"


def point_text(p: Point | None) -> str:
    if p is None:
        return ""
    if p.median_ms is None:
        text = p.status
    else:
        text = _fmt(p.median_ms) + (f" [{_fmt(p.ci[0])}, {_fmt(p.ci[1])}]" if p.ci else "")
    mark = {REGRESSION: " ▲ regression", IMPROVEMENT: " ▼ improvement"}.get(p.verdict,
                                                                           f" ({p.verdict})" if p.verdict else "")
    return text + mark


def markdown(h: History) -> str:
    """A wide table: one row per cell, one column per run, median ms [95% CI] and any gate verdict."""
    from .text import md_cell as _cell  # the Markdown cell escaper, shared

    title = "# attnbench history"
    shown = {k: v for k, v in h.filters.items() if v}
    if shown:
        title += " (" + ", ".join(f"{k} {v}" for k, v in shown.items()) + ")"
    if not h.cells:
        return title + "\n\nNo stored measurement matches."
    out = [title, "", f"{len(h.runs)} runs, {len(h.cells)} cells. Median ms [95% CI of the median, "
                      "a bootstrap over each measurement's batches, as in the run report]; ▲/▼ mark gate verdicts (regression / improvement).", ""]
    out.append("| workload | impl | " + " | ".join(_cell(run_title(r)) for r in h.runs) + " |")
    out.append("|---|---|" + "---|" * len(h.runs))
    for c in h.cells:
        by_run = {p.run_id: p for p in c.points}
        impl = c.series
        out.append("| " + " | ".join(_cell(x) for x in [c.workload.label, impl]
                                      + [point_text(by_run.get(r.run_id)) for r in h.runs]) + " |")
    return "\n".join(out)
