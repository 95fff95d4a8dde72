"""The gate's baseline file: versioned, diffable JSON of per-cell samples, thresholds and accepted changes.

Format history (bump FORMAT_VERSION for every change, and keep reading the old versions):
  1: format, format_version, created, updated, fingerprint, env_id, timer, policy, ceilings (or null),
     thresholds ({"impl:NAME" | "workload:KEY" | "cell:KEY": fraction}), history (list of
     {date, cell, old_median, new_median, reason, kind, commit}), cells ({KEY: {workload, impl, params,
     summary: {median_ms, ci_ms, n, timer, clock_mhz, backend, repeat_medians}, samples_ms, updated}}).
  2: cells gain batch_sizes: how many of the kept samples came from each batch of each pooled
     measurement, in order; ci_ms is a bootstrap over batches. A version-1 cell reads with no batch
     sizes (its samples are then split into contiguous blocks, analysis.rounds).

A cell's KEY is "workload_key|impl_label", e.g. "b32_hq8_hkv8_sq512_sk512_d64_fp16_full_fwd|sdpa-auto".
A cell's baseline pools R independent measurements (fresh build and inputs each, in rounds over all
cells; `repeats`, 5 by default): on a GPU the same kernel can land 5-10% apart from one measurement to the
next (clocks, placement, bimodal kernels) while each measurement's samples agree within 1%. The spread of
the R medians (max/min - 1) is the cell's noise floor, and the gate never uses a threshold below it.
Samples are rounded to 4 significant digits and at most SAMPLE_CAP are kept (evenly spaced in time
order, an equal share per measurement), each with the batch it came from (`batch_sizes`: the gate's
tests resample batches); the summary is computed from all samples before that.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import UserError
from ..spec import Workload
from ..store import Measurement

FORMAT = "attnbench-baseline"
FORMAT_VERSION = 2
SAMPLE_CAP = 200
KINDS = ("improvement", "accepted-regression", "new-cell")
THRESHOLD_SCOPES = ("cell", "workload", "impl")


def round4(x: float | None) -> float | None:
    """4 significant digits: enough for tests at a 1% resolution, short enough to diff."""
    return None if x is None else float(f"{x:.4g}")


def impl_label(impl: str, params: Mapping[str, Any] | None) -> str:
    if not params:
        return impl
    return f"{impl}[{','.join(f'{k}={v}' for k, v in sorted(params.items()))}]"


def cell_key(workload: Workload, impl: str, params: Mapping[str, Any] | None = None) -> str:
    return f"{workload.key}|{impl_label(impl, params)}"


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


@dataclass(frozen=True)
class Cell:
    """What the gate measures: one workload x impl x params."""

    workload: Workload
    impl: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return cell_key(self.workload, self.impl, self.params)

    @property
    def label(self) -> str:
        return f"{self.workload.label} · {impl_label(self.impl, self.params)}"

    @classmethod
    def of(cls, m: Measurement) -> "Cell":
        return cls(m.workload, m.impl, dict(m.params))


def subsample(samples: Iterable[float], cap: int = SAMPLE_CAP) -> list[float]:
    """At most cap samples, evenly spaced over the run (time order kept), each rounded to 4 digits."""
    xs = list(samples)
    if len(xs) > cap:
        step = (len(xs) - 1) / (cap - 1)
        xs = [xs[round(i * step)] for i in range(cap)]
    return [round4(x) for x in xs]


def subsample_batches(samples: Sequence[float], sizes: Sequence[int] | None,
                      cap: int = SAMPLE_CAP) -> tuple[list[float], list[int]]:
    """(kept samples rounded to 4 digits, their batch sizes): `subsample`'s evenly spaced samples, with the
    batch each came from, so every batch keeps its share (batches left with none are dropped). `sizes`
    None or empty: contiguous blocks (analysis.rounds.block_sizes)."""
    from ..analysis.rounds import block_sizes

    xs = list(samples)
    ends = list(itertools.accumulate(block_sizes(len(xs), sizes)))
    idx = range(len(xs))
    if len(xs) > cap:
        step = (len(xs) - 1) / (cap - 1)
        idx = [round(i * step) for i in range(cap)]
    counts = [0] * len(ends)
    for i in idx:
        counts[bisect.bisect_right(ends, i)] += 1
    return [round4(xs[i]) for i in idx], [c for c in counts if c]


@dataclass
class BaselineCell:
    cell: Cell
    samples_ms: list[float]
    median_ms: float
    ci_ms: tuple[float, float]
    n: int
    timer: str
    clock_mhz: float | None = None
    backend: str = ""
    updated: str = ""
    repeat_medians: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)   # of samples_ms; [] = unknown (a version-1 file)

    @property
    def key(self) -> str:
        return self.cell.key

    @property
    def noise(self) -> float:
        """Spread of the independent measurements' medians, max/min - 1 (0 with fewer than two)."""
        r = self.repeat_medians
        return max(r) / min(r) - 1.0 if len(r) > 1 else 0.0

    @classmethod
    def from_measurements(cls, ms: Iterable[Measurement], scale: float = 1.0,
                          date: str | None = None) -> "BaselineCell":
        """Pool the ok measurements of one cell; scale multiplies every time (normalization to the
        baseline's machine)."""
        from ..analysis.rounds import block_median_ci, block_sizes
        from ..analysis.stats import median

        ms = list(ms)
        if not ms or not all(m.ok for m in ms) or len({Cell.of(m).key for m in ms}) != 1:
            raise ValueError("a baseline cell pools ok measurements of one cell")
        runs = [[x * scale for x in m.samples_ms] for m in ms]
        sizes = [list(block_sizes(len(r), m.batch_sizes or None)) for r, m in zip(runs, ms)]
        xs = [x for r in runs for x in r]
        kept, kept_sizes = [], []
        for r, sz in zip(runs, sizes):
            k, ks = subsample_batches(r, sz, max(2, SAMPLE_CAP // len(runs)))
            kept += k
            kept_sizes += ks
        lo, hi = block_median_ci(xs, [b for sz in sizes for b in sz])
        clocks = [c for m in ms for c in m.clocks_mhz]
        return cls(Cell.of(ms[0]), kept, round4(median(xs)), (round4(lo), round4(hi)), len(xs), ms[0].timer,
                   round4(median(clocks)) if clocks else None, ms[0].backend, date or today(),
                   [round4(median(r)) for r in runs], kept_sizes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.cell.workload.to_dict(), "impl": self.cell.impl, "params": self.cell.params,
            "summary": {"median_ms": self.median_ms, "ci_ms": list(self.ci_ms), "n": self.n, "timer": self.timer,
                        "clock_mhz": self.clock_mhz, "backend": self.backend,
                        "repeat_medians": list(self.repeat_medians)},
            "samples_ms": list(self.samples_ms), "batch_sizes": list(self.batch_sizes), "updated": self.updated,
        }

    @classmethod
    def from_dict(cls, key: str, d: Mapping[str, Any]) -> "BaselineCell":
        try:
            s = d["summary"]
            unknown = sorted(set(d["workload"]) - {f.name for f in dataclasses.fields(Workload)})
            if unknown:  # Workload.from_dict would drop them: another workload would be compared under this key
                raise UserError(f"baseline cell {key!r}: workload field(s) {', '.join(unknown)} unknown to this "
                                "attnbench (a newer one wrote the file?); upgrade attnbench")
            cell = Cell(Workload.from_dict(d["workload"]), d["impl"], dict(d.get("params") or {}))
            out = cls(cell, [float(x) for x in d["samples_ms"]], float(s["median_ms"]),
                      tuple(float(x) for x in s["ci_ms"]), int(s["n"]), str(s["timer"]), s.get("clock_mhz"),
                      s.get("backend", ""), d.get("updated", ""),
                      [float(x) for x in s.get("repeat_medians") or [s["median_ms"]]],
                      [int(x) for x in d.get("batch_sizes") or []])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"baseline cell {key!r} is malformed: {type(exc).__name__}: {exc}") from None
        if out.key != key:
            raise UserError(f"baseline cell {key!r} describes {out.key!r}: the key and its fields disagree")
        if not out.samples_ms or min(out.samples_ms) <= 0:
            raise UserError(f"baseline cell {key!r} has no positive samples")
        if out.batch_sizes and (sum(out.batch_sizes) != len(out.samples_ms) or min(out.batch_sizes) < 1):
            raise UserError(f"baseline cell {key!r}: batch_sizes must be positive and sum to the "
                            f"{len(out.samples_ms)} samples")
        return out


@dataclass
class Baseline:
    fingerprint: dict[str, Any]
    env_id: str
    timer: str
    policy: dict[str, Any] = field(default_factory=dict)
    ceilings: dict[str, Any] | None = None
    cells: dict[str, BaselineCell] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""
    updated: str = ""

    # -- thresholds ------------------------------------------------------------------------------
    def threshold_for(self, cell: Cell, default: float) -> float:
        """Most specific override wins: cell:KEY, then workload:KEY, then impl:NAME (or impl:LABEL)."""
        for k in (f"cell:{cell.key}", f"workload:{cell.workload.key}", f"impl:{impl_label(cell.impl, cell.params)}",
                  f"impl:{cell.impl}"):
            if k in self.thresholds:
                return float(self.thresholds[k])
        return default

    def timing_policy(self):
        from ..measure.timing import TimingPolicy

        known = {f.name for f in dataclasses.fields(TimingPolicy)}
        return TimingPolicy(**{k: v for k, v in self.policy.items() if k in known})

    # -- changes (each returns a new Baseline; the ratchet never edits in place) ------------------
    def with_cell(self, new: BaselineCell, *, kind: str, reason: str, commit: str | None = None,
                  date: str | None = None) -> "Baseline":
        """A copy with `new` set (added or replaced) and the change recorded in the history."""
        if kind not in KINDS:
            raise ValueError(f"unknown history kind {kind!r}")
        out = copy.deepcopy(self)
        old = out.cells.get(new.key)
        out.cells[new.key] = new
        out.history.append({"date": date or today(), "cell": new.key, "kind": kind, "reason": reason,
                            "old_median": old.median_ms if old else None, "new_median": new.median_ms,
                            "commit": commit})
        out.updated = date or today()
        return out

    def without_cell(self, key: str, *, reason: str, commit: str | None = None,
                     date: str | None = None) -> "Baseline":
        """A copy without the cell (an accepted breakage: the kernel no longer runs there)."""
        out = copy.deepcopy(self)
        old = out.cells.pop(key)
        out.history.append({"date": date or today(), "cell": key, "kind": "accepted-regression",
                            "reason": reason, "old_median": old.median_ms, "new_median": None, "commit": commit})
        out.updated = date or today()
        return out

    # -- files -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "created": self.created, "updated": self.updated,
            "fingerprint": self.fingerprint, "env_id": self.env_id, "timer": self.timer, "policy": self.policy,
            "ceilings": self.ceilings, "thresholds": self.thresholds, "history": self.history,
            "cells": {k: c.to_dict() for k, c in sorted(self.cells.items())},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, default=str) + "\n"

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(p)  # never leave a half-written baseline behind

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "baseline") -> "Baseline":
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise UserError(f"{where} is not an attnbench baseline (expected \"format\": \"{FORMAT}\")")
        version = d.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise UserError(f"{where}: format_version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise UserError(f"{where} has baseline format_version {version}, newer than this attnbench reads "
                            f"({FORMAT_VERSION}); upgrade attnbench")
        thresholds = dict(d.get("thresholds") or {})
        for k, v in thresholds.items():
            scope = k.partition(":")[0]
            if scope not in THRESHOLD_SCOPES or ":" not in k:
                raise UserError(f"{where}: threshold key {k!r} must start with cell:, workload: or impl:")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 10:
                raise UserError(f"{where}: threshold {k!r} must be a fraction such as 0.05, got {v!r}")
        try:
            out = cls(fingerprint=dict(d.get("fingerprint") or {}), env_id=str(d.get("env_id", "")),
                      timer=str(d["timer"]), policy=dict(d.get("policy") or {}), ceilings=d.get("ceilings"),
                      cells={k: BaselineCell.from_dict(k, c) for k, c in (d.get("cells") or {}).items()},
                      thresholds=thresholds, history=list(d.get("history") or []),
                      created=str(d.get("created", "")), updated=str(d.get("updated", "")))
        except KeyError as exc:
            raise UserError(f"{where}: missing field {exc}") from None
        odd = next((c for c in out.cells.values() if c.timer != out.timer), None)
        if odd is not None:  # the gate measures every cell with the file's timer: this one would change quantity
            raise UserError(f"{where}: cell {odd.key!r} was timed with the {odd.timer!r} timer, the file's timer is "
                            f"{out.timer!r}; delete the file and create a new baseline with one --timer")
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Baseline":
        p = Path(path)
        if not p.is_file():
            raise UserError(f"no baseline at {p}; create one with --update")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read baseline {p}: {exc}") from None
        return cls.from_dict(data, str(p))

    @classmethod
    def empty(cls, fingerprint: Mapping[str, Any], env_id: str, timer: str, policy: Mapping[str, Any],
              ceilings: Mapping[str, Any] | None = None, date: str | None = None) -> "Baseline":
        return cls(dict(fingerprint), env_id, timer, dict(policy), dict(ceilings) if ceilings else None,
                   created=date or today(), updated=date or today())


# -------------------------------------------------------------------------------------------------
# The ratchet. `results` are gate.CellResult objects (key, verdict, ratio, ci, p_holm, norm_factor,
# norm_basis, accepted); `current` the run's measurements.
# -------------------------------------------------------------------------------------------------

def _by_key(measurements: Iterable[Measurement]) -> dict[str, list[Measurement]]:
    """Measurements per cell key, in order (a cell measured in several rounds has several)."""
    out: dict[str, list[Measurement]] = {}
    for m in measurements:
        out.setdefault(Cell.of(m).key, []).append(m)
    return out


def ratchet(baseline: Baseline, results: Iterable[Any], current: Iterable[Measurement], *, creating: bool = False,
            commit: str | None = None, date: str | None = None) -> tuple[Baseline, list[str]]:
    """The bar only goes up: new ok cells are added; a cell moves only on a (confirmed) improvement.
    Regressions, broken and unchanged cells keep their baseline. `current` may hold several rounds of a
    cell (pooled). Returns the new baseline and notes."""
    now = _by_key(current)
    out, added, moved = baseline, [], []
    for r in results:
        ms = now.get(r.key, [])
        if not ms or not all(m.ok for m in ms):
            continue
        if r.verdict == "new":
            new = BaselineCell.from_measurements(ms, date=date)
            if creating:  # the file's `created` date is the record; no per-cell history
                out = dataclasses.replace(out, cells={**out.cells, r.key: new})
            else:
                out = out.with_cell(new, kind="new-cell", reason="new cell", commit=commit, date=date)
            added.append(r.key)
        elif r.verdict == "improvement":
            new = BaselineCell.from_measurements(ms, scale=r.norm_factor, date=date)
            why = (f"confirmed improvement: ratio {r.ratio:.4f} [{r.ci[0]:.4f}, {r.ci[1]:.4f}], "
                   f"p (Holm) {r.p_holm:.2g}" + (f", normalized by {r.norm_basis}" if r.norm_basis else ""))
            out = out.with_cell(new, kind="improvement", reason=why, commit=commit, date=date)
            moved.append(r.key)
    notes = []
    if added:
        notes.append(f"baseline: {len(added)} cell(s) {'written' if creating else 'added'}")
    if moved:
        notes.append(f"baseline: {len(moved)} improved cell(s) moved up: " + ", ".join(f"`{k}`" for k in moved))
    return out, notes


def resolve_cell(key: str, known: list[str]) -> str:
    """An exact key, else the one key containing `key`; UserError otherwise."""
    if key in known:
        return key
    hits = [k for k in known if key in k]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise UserError(f"--accept {key!r}: no such cell" + (f" (keys look like {known[0]!r})" if known else ""))
    raise UserError(f"--accept {key!r} matches {len(hits)} cells ({', '.join(hits[:3])}, ...); give the full key")


def accept(baseline: Baseline, results: Iterable[Any], current: Iterable[Measurement], keys: Iterable[str],
           reason: str | None, *, commit: str | None = None, date: str | None = None) -> tuple[Baseline, list[str]]:
    """Replace each named cell's baseline with this run's measurement (or drop it when it is broken now),
    recorded in the history as an accepted regression with the reason; marks the results accepted."""
    why = (reason or "").strip()
    if not why:
        raise UserError("--accept needs --reason TEXT (it is recorded in the baseline's history)")
    now = _by_key(current)
    by_result = {r.key: r for r in results}
    out, notes = baseline, []
    for raw in keys:
        key = resolve_cell(raw, sorted(set(baseline.cells) | set(now)))
        ms, r = now.get(key, []), by_result.get(key)
        if not ms:
            raise UserError(f"--accept {key!r}: the cell was not measured in this run; nothing to accept")
        m = next((x for x in ms if not x.ok), ms[0])
        if m.ok:
            new = BaselineCell.from_measurements(ms, scale=r.norm_factor if r else 1.0, date=date)
            out = out.with_cell(new, kind="accepted-regression", reason=why, commit=commit, date=date)
        elif key in out.cells:
            out = out.without_cell(key, reason=f"{m.status}: {why}", commit=commit, date=date)
        else:
            raise UserError(f"--accept {key!r}: {m.status} now and not in the baseline; nothing to accept")
        if r is not None:
            r.accepted = True
        notes.append(f"baseline: accepted `{key}` ({why})")
    return out, notes
