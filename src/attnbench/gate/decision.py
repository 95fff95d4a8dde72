"""CI ratchet: compare a run with a committed baseline; a regression is significant (Holm) AND large.

A compared cell (ok in the baseline and now) gets the ratio of medians now/baseline with a CI by a
bootstrap over batches and a Mann-Whitney p-value on the batch medians (analysis.rounds.unpaired_ratio:
the unit of evidence is the batch, since noise moves whole batches; the baseline's blocks are the
batches of each of its pooled measurements); the p-values of all compared cells are Holm-adjusted
together. It is a REGRESSION when p_holm < alpha, the CI's lower bound > 1 and the ratio > 1 +
threshold; an IMPROVEMENT symmetrically; otherwise unchanged (also when a side has fewer than
rounds.MIN_ROUNDS batches: too few for a verdict; a note lists such cells). A kernel that now errors, is
incorrect or runs out of memory is BROKEN: a failure like a regression, and so is one its impl now declines
(unsupported: in the same environment only the code changed, and a kernel that stopped taking a shape sends it to
a slower path). Cells on one side only are NEW or MISSING (reported, never failures), as are the cells of an impl
no longer registered (renamed or removed: IMPL_GONE).

The threshold of a cell is the baseline file's override for the cell, workload or impl (the most
specific one), else --threshold, and never below the cell's noise floor: the spread of the baseline's
independent measurements (see gate/baseline.py), so a cell whose medians move 6% between measurements is
not failed for 4%.

Confirmation ("test each"): every flagged cell is re-measured `confirm` times; each re-measurement is
tested on its own against the baseline (Holm over the re-measured cells) and must flag the cell in
the same direction, or the flag is dropped. Testing each run, rather than pooling its samples with the
first run's, is what removes one-off events (a throttled minute, a noisy neighbour): a pooled test
would still be dominated by the first run's shifted samples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..analysis import metrics, rounds, stats
from ..errors import UserError
from ..store import Measurement
from .baseline import Baseline, Cell

REGRESSION, IMPROVEMENT, UNCHANGED = "regression", "improvement", "unchanged"
BROKEN, NEW, MISSING = "broken", "new", "missing"
FAILING = (REGRESSION, BROKEN)
BROKEN_STATUSES = ("error", "incorrect", "oom", "unsupported")
IMPL_GONE = "no impl is registered as {name!r} now (renamed or removed)"   # an unsupported cell that is missing

Remeasure = Callable[[list[Cell]], list[Measurement]]


@dataclass
class CellResult:
    key: str
    label: str
    verdict: str
    status: str = "ok"                       # the current measurement's status ('' when not measured)
    reason: str = ""
    baseline_ms: float | None = None
    current_ms: float | None = None          # normalized when the gate normalizes
    ratio: float | None = None               # current / baseline medians
    ci: tuple[float, float] | None = None
    p: float | None = None
    p_holm: float | None = None
    threshold: float | None = None          # the one applied: max(configured, noise)
    noise: float = 0.0                       # the baseline's spread between independent measurements
    stat_verdict: str = ""                   # stats.verdict_from: faster / slower / same / inconclusive
    norm_factor: float = 1.0
    norm_basis: str = ""
    clock_mhz: float | None = None           # median SM clock now
    baseline_clock_mhz: float | None = None
    n: tuple[int, int] | None = None         # (baseline, current) sample counts
    batches: int | None = None               # the fewer of the two sides' batches (the test's units)
    confirmations: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    accepted: bool = False


@dataclass
class GateResult:
    cells: list[CellResult]
    threshold: float
    alpha: float
    confirm: int
    timer: str = ""
    normalized: bool = False
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    geomean: tuple[float, float, float] | None = None
    baseline_path: str = ""
    created: bool = False                    # this run wrote a new baseline

    def having(self, *verdicts: str) -> list[CellResult]:
        return [c for c in self.cells if c.verdict in verdicts]

    @property
    def failures(self) -> list[CellResult]:
        return [c for c in self.having(*FAILING) if not c.accepted]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(passed=self.passed, exit_code=self.exit_code,
                 counts={v: len(self.having(v)) for v in (REGRESSION, BROKEN, IMPROVEMENT, UNCHANGED, NEW, MISSING)})
        return d

    def markdown(self) -> str:
        return markdown(self)


# -------------------------------------------------------------------------------------------------
# Normalization by device ceilings
# -------------------------------------------------------------------------------------------------

def _matmul(ceil: Mapping[str, Any], dtype: str) -> tuple[str, float] | None:
    tf = {k: v for k, v in (ceil.get("tflops") or {}).items() if v}
    for d in (dtype, "fp16", "bf16", *sorted(tf)):
        if d in tf:
            return d, float(tf[d])
    return None


def normalization(cell: Cell, base: Mapping[str, Any] | None, now: Mapping[str, Any] | None) -> tuple[float, str]:
    """(factor, basis): current times are multiplied by factor = now/baseline throughput of the ceiling
    that bounds the cell, so a machine that copies 5% slower reads 5% faster work as unchanged.

    The bound is chosen per cell by the roofline: arithmetic intensity (metrics.intensity) below the
    baseline's ridge point (matmul TFLOP/s / copy GB/s) -> memory-bound -> copy GB/s; else the matmul
    TFLOP/s of the cell's dtype. (1.0, '') when either side lacks the ceilings."""
    if not base or not now:
        return 1.0, ""
    mb, mn = _matmul(base, cell.workload.dtype), _matmul(now, cell.workload.dtype)
    gb, gn = base.get("gbps"), now.get("gbps")
    if not (mb and mn and gb and gn):
        return 1.0, ""
    ridge = mb[1] * 1e3 / float(gb)
    if metrics.intensity(cell.workload) < ridge:
        return float(gn) / float(gb), "copy"
    return mn[1] / mb[1], f"matmul {mb[0]}"


# -------------------------------------------------------------------------------------------------
# The check
# -------------------------------------------------------------------------------------------------

def _by_key(measurements: Sequence[Measurement]) -> dict[str, Measurement]:
    return {Cell.of(m).key: m for m in measurements}


def _classify(verdict: str) -> str:
    return {stats.Verdict.SLOWER: REGRESSION, stats.Verdict.FASTER: IMPROVEMENT}.get(verdict, UNCHANGED)


def _compare(baseline: Baseline, current: Mapping[str, Measurement], keys: Sequence[str], threshold: float,
             alpha: float, now_ceilings: Mapping[str, Any] | None, confidence: float, seed: int
             ) -> tuple[dict[str, CellResult], list[rounds.Blocked]]:
    out: dict[str, CellResult] = {}
    tested: list[tuple[CellResult, rounds.RatioTest]] = []
    pairs: list[rounds.Blocked] = []
    for key in keys:
        b, m = baseline.cells.get(key), current.get(key)
        cell = b.cell if b is not None else Cell.of(m)
        r = CellResult(key, cell.label, UNCHANGED, status=m.status if m else "",
                       baseline_ms=b.median_ms if b else None, baseline_clock_mhz=b.clock_mhz if b else None)
        out[key] = r
        if m is not None and m.clocks_mhz:
            r.clock_mhz = stats.median(m.clocks_mhz)
        if b is None:
            r.verdict, r.current_ms = NEW, m.median_ms
            r.reason = m.reason if m.ok else f"{m.status}: {m.reason}".rstrip(": ")  # not ok: say how
        elif m is None:
            r.verdict, r.reason = MISSING, "not measured in this run"
        elif not m.ok:
            gone = m.status == "unsupported" and m.reason.startswith(IMPL_GONE.split("{")[0])
            r.verdict = BROKEN if m.status in BROKEN_STATUSES and not gone else MISSING
            r.reason = f"{m.status} now (ok in the baseline): {m.reason}".rstrip(": ")
        else:
            r.norm_factor, r.norm_basis = normalization(cell, baseline.ceilings, now_ceilings)
            xs = [x * r.norm_factor for x in m.samples_ms]
            sizes_now, sizes_base = m.batch_sizes or None, b.batch_sizes or None
            test = rounds.unpaired_ratio(xs, sizes_now, b.samples_ms, sizes_base, confidence=confidence, seed=seed)
            r.ratio, r.ci, r.p, r.batches = test.ratio, (test.lo, test.hi), test.p, test.rounds
            r.current_ms, r.n = stats.median(xs), (len(b.samples_ms), len(xs))
            r.noise = b.noise
            r.threshold = max(baseline.threshold_for(cell, threshold), r.noise)
            tested.append((r, test))
            pairs.append(rounds.Blocked(xs, sizes_now, b.samples_ms, sizes_base, paired=False))
    for (r, test), p_holm in zip(tested, stats.holm([r.p for r, _ in tested])):
        r.p_holm = p_holm
        r.stat_verdict = rounds.round_verdict(test, p_holm, threshold=r.threshold, alpha=alpha)
        r.verdict = _classify(r.stat_verdict)
    return out, pairs


def check(baseline: Baseline, current: Sequence[Measurement], threshold: float = 0.03, alpha: float = 0.05,
          normalize: Mapping[str, Any] | None = None, *, confirm: int = 1, remeasure: Remeasure | None = None,
          confidence: float = 0.95, seed: int = 0, warnings: Sequence[str] = ()) -> GateResult:
    """Compare current measurements with the baseline (see the module docstring for the rules).

    normalize: the device ceilings measured in this run (device.measure_ceilings), or None to compare
    raw times. remeasure(cells) -> measurements drives the confirmation runs; without it (or with
    confirm=0) flags are final after one run.
    """
    if not 0 <= threshold < 1:
        raise UserError(f"threshold must be a fraction in [0, 1), e.g. 0.03, got {threshold!r}")
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be in (0, 1), got {alpha!r}")
    if confirm < 0:
        raise UserError(f"confirm must be >= 0, got {confirm!r}")
    now = _by_key(current)
    keys = list(baseline.cells) + [k for k in now if k not in baseline.cells]
    results, pairs = _compare(baseline, now, keys, threshold, alpha, normalize, confidence, seed)
    confirms = confirm if remeasure is not None else 0
    flagged = {k: r for k, r in results.items() if r.verdict in (REGRESSION, IMPROVEMENT)}
    for i in range(confirms):
        if not flagged:
            break
        again = _by_key(remeasure([baseline.cells[k].cell for k in flagged]))
        recheck, _ = _compare(baseline, again, [k for k in flagged if k in again], threshold, alpha, normalize,
                              confidence, seed + i + 1)
        for k, r in list(flagged.items()):
            c = recheck.get(k)
            r.confirmations.append({"verdict": c.verdict, "ratio": c.ratio, "ci": c.ci, "p_holm": c.p_holm,
                                    "clock_mhz": c.clock_mhz} if c else {"verdict": MISSING})
            if c is not None and c.verdict == BROKEN:
                r.verdict, r.reason = BROKEN, f"{c.reason} (re-measurement {i + 1})"
            elif c is None or c.verdict != r.verdict:
                r.note = (f"flagged as {r.verdict} (ratio {r.ratio:.4f}) but not confirmed by re-measurement "
                          f"{i + 1}" + (f" (ratio {c.ratio:.4f})" if c and c.ratio else ""))
                r.verdict = UNCHANGED
            else:
                continue
            del flagged[k]
    geo = rounds.geomean_ratio(pairs, confidence=confidence, seed=seed) if pairs else None
    few = [r for r in results.values() if r.batches is not None and r.batches < rounds.MIN_ROUNDS]
    notes = [f"{len(few)} cell(s) with fewer than {rounds.MIN_ROUNDS} batches on a side, too few for a verdict "
             f"(left unchanged): " + ", ".join(f"`{r.key}` ({r.batches})" for r in few[:12])
             + (f", and {len(few) - 12} more" if len(few) > 12 else "")] if few else []
    return GateResult(list(results.values()), threshold, alpha, confirms, timer=baseline.timer,
                      normalized=normalize is not None, warnings=list(warnings), notes=notes, geomean=geo)


# -------------------------------------------------------------------------------------------------
# Environment
# -------------------------------------------------------------------------------------------------

def environment_mismatch(baseline_fp: Mapping[str, Any] | None, fp: Mapping[str, Any] | None) -> list[str]:
    """Performance-relevant differences as 'key: baseline -> now' (device.env_mismatch)."""
    from ..analysis.device import env_mismatch

    return list(env_mismatch(dict(baseline_fp or {}), dict(fp or {})))


# -------------------------------------------------------------------------------------------------
# Output
# -------------------------------------------------------------------------------------------------

def _ms(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def _mhz(r: CellResult) -> str:
    if r.clock_mhz is None and r.baseline_clock_mhz is None:
        return ""
    return " / ".join("?" if x is None else f"{x:.0f}" for x in (r.clock_mhz, r.baseline_clock_mhz))


def _table(rows: list[CellResult]) -> list[str]:
    out = ["| cell | baseline ms | now ms | ratio [95% CI] | p (Holm) | threshold | SM MHz now / base | note |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = "; ".join(x for x in ("accepted" if r.accepted else "", f"normalized by {r.norm_basis} "
                                     f"({r.norm_factor:.3f})" if r.norm_basis else "", r.note) if x)
        conf = f" ({len(r.confirmations)}/{len(r.confirmations)} confirmed)" if r.confirmations else ""
        thr = f"{r.threshold:.1%}" + (" (noise floor)" if r.noise and r.noise >= r.threshold else "")
        out.append(f"| `{r.key}` | {_ms(r.baseline_ms)} | {_ms(r.current_ms)} | {r.ratio:.4f} [{r.ci[0]:.4f}, "
                   f"{r.ci[1]:.4f}]{conf} | {r.p_holm:.2g} | {thr} | {_mhz(r)} | {note} |")
    return out


def _keys(rows: list[CellResult], limit: int = 12) -> str:
    shown = ", ".join(f"`{r.key}`" + (f" ({r.reason})" if r.reason else "") for r in rows[:limit])
    return shown + (f", and {len(rows) - limit} more" if len(rows) > limit else "")


def markdown(result: GateResult) -> str:
    """Title with PASS/FAIL, environment warnings, regressions and broken cells, improvements, then one
    line for the unchanged cells with the suite geometric mean; new/missing cells and notes last."""
    regs, broken, imps = result.having(REGRESSION), result.having(BROKEN), result.having(IMPROVEMENT)
    same, new, missing = result.having(UNCHANGED), result.having(NEW), result.having(MISSING)
    new_bad = sum(r.status != "ok" for r in new)
    counts = [f"{len(x)} {name}" for x, name in ((regs, "regressed"), (broken, "broken"), (imps, "improved"),
                                                  (same, "unchanged"), (new, "new"), (missing, "missing")) if x]
    counts = [c + (f" ({new_bad} not ok)" if c.endswith(" new") and new_bad else "") for c in counts]
    lines = [f"## attnbench gate: {'PASS' if result.passed else 'FAIL'} ({', '.join(counts) or 'no cells'})", ""]
    lines += [f"> **Warning:** {w}" for w in result.warnings] + ([""] if result.warnings else [])
    where = f"`{result.baseline_path}`" if result.baseline_path else "(in memory)"
    lines.append(f"Baseline {where}, timer `{result.timer}`. A regression is a slowdown with "
                 f"Holm-adjusted p < {result.alpha:g} (Mann-Whitney on batch medians), ratio CI above 1 "
                 f"(bootstrap over batches) and ratio above 1 + threshold (default {result.threshold:.1%}; never "
                 "below the cell's noise floor, the spread of the baseline's measurements), confirmed by "
                 f"{result.confirm} re-measurement(s)" + ("; times normalized by device ceilings." if result.normalized
                                                         else "."))
    if regs:
        lines += ["", "### Regressions", "", *_table(regs)]
    if broken:
        lines += ["", "### Broken (ok in the baseline)", "", "| cell | status | reason |", "|---|---|---|"]
        lines += [f"| `{r.key}` | {r.status}{' (accepted)' if r.accepted else ''} | {r.reason} |" for r in broken]
    if imps:
        lines += ["", "### Improvements", "", *_table(imps)]
    lines.append("")
    geo = result.geomean
    tail = (f"; suite geometric mean ratio now/baseline over {len(regs) + len(imps) + len(same)} compared cells: "
            f"{geo[0]:.4f} [{geo[1]:.4f}, {geo[2]:.4f}]" if geo else "")
    lines.append(f"{len(same)} unchanged cell(s){tail}.")
    unconfirmed = [r for r in same if r.note]
    if unconfirmed:
        lines.append("Flagged but not confirmed: " + "; ".join(f"`{r.key}` {r.note}" for r in unconfirmed) + ".")
    if result.created:
        bad = [r for r in new if r.status != "ok"]
        lines.append(f"New baseline: {len(new) - len(bad)} ok cell(s) written"
                     + (f"; not ok, so left out: {_keys(bad)}." if bad else "."))
    elif new:
        lines.append(f"New cells (not in the baseline; `--update` adds the ok ones): {_keys(new)}.")
    if missing:
        lines.append(f"Missing cells (in the baseline, not measured ok now): {_keys(missing)}.")
    lines += [f"- {n}" for n in result.notes]
    if result.failures:
        lines += ["", "To accept a change on purpose: `attnbench gate --baseline "
                  f"{result.baseline_path or 'FILE'} --accept 'CELL' --reason 'why'`."]
    return "\n".join(lines) + "\n"
