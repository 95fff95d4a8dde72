"""A vs B (impls measured now, or two stored runs): per-workload speedups with CIs, tests and Holm-corrected
verdicts, and the suite's geometric-mean speedup.

A is the candidate, B the baseline. Speedup = median time of B / median time of A, so above 1 means A is
faster. Only like is compared with like: cells pair by workload (and by impl and params when a side holds
several impls per workload); a workload on one side only is listed as unmatched, never compared. Different
shapes can be compared only per token (throughput), and the output says so.

The unit of evidence is the round, not the sample (analysis.rounds): A and B measured together in one
interleaved session are paired round by round (batch k of each is round k); A and B measured apart (two
stored runs) have their batches as independent blocks; samples stored without their batches are split
into contiguous blocks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..analysis import cost as costmod
from ..analysis import metrics, rounds, stats
from ..errors import UserError
from ..spec import Workload
from ..store import Measurement, params_key

CONFIDENCE = 0.95
CLOCK_TOLERANCE = 0.02  # median SM clocks further apart than this get a flag on the row
VERDICTS = stats.Verdict.ALL
MIN_ROUNDS = rounds.MIN_ROUNDS
PAIRED, BATCHES, BLOCKS = "rounds", "batches", "blocks"  # Row.pairing: how the row's evidence is structured


@dataclass(frozen=True)
class Row:
    """One compared pair. Times in ms; in per-token mode `time_ratio` is of time per token (ms / query token)."""

    label: str
    key: str
    impl_a: str
    impl_b: str
    workload_a: Workload
    workload_b: Workload
    n_a: int
    n_b: int
    a_median_ms: float
    b_median_ms: float
    a_ci_ms: tuple[float, float]
    b_ci_ms: tuple[float, float]
    a_tokens_per_s: float
    b_tokens_per_s: float
    a_tflops: float
    b_tflops: float
    time_ratio: float                   # A / B (per token in per-token mode): below 1 means A is faster
    time_ratio_ci: tuple[float, float]
    speedup: float                      # 1 / time_ratio: above 1 means A is faster (or has more tokens/s)
    speedup_ci: tuple[float, float]
    tflops_ratio: float                 # TFLOP/s of A / TFLOP/s of B (equals the speedup on equal workloads)
    tflops_ratio_ci: tuple[float, float]
    cliffs_delta: float                 # P(A faster) - P(A slower) over all sample pairs (descriptive)
    magnitude: str
    p_value: float                      # raw two-sided: signed-rank on per-round log ratios, or Mann-Whitney
                                        # on batch medians (see `pairing`)
    p_holm: float                       # Holm-adjusted over the compared rows
    verdict: str                        # one of VERDICTS
    rounds: int = 0                     # paired rounds, or the fewer of the two sides' batches / blocks
    pairing: str = PAIRED               # PAIRED (one interleaved session), BATCHES (apart), BLOCKS (not recorded)
    verdict_label: str = ""             # as shown: 'inconclusive: 4 rounds' when too few rounds decided it
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Excluded:
    """A matched pair where a side has no usable timing (unsupported, oom, error, incorrect, ...)."""

    label: str
    key: str
    impl_a: str
    impl_b: str
    status_a: str
    status_b: str
    reason: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unmatched:
    """A cell present on one side only: listed, never compared."""

    side: str  # "A" or "B"
    label: str
    key: str
    impl: str
    status: str


@dataclass(frozen=True)
class Comparison:
    a_name: str
    b_name: str
    mode: str  # "time" or "per-token"
    threshold: float
    alpha: float
    rows: tuple[Row, ...]
    excluded: tuple[Excluded, ...] = ()
    unmatched: tuple[Unmatched, ...] = ()
    geomean_speedup: float | None = None
    geomean_ci: tuple[float, float] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    different_workloads: bool = False
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    run_ids: tuple[int, ...] = ()
    cost: dict[str, Any] | None = None

    @property
    def per_token(self) -> bool:
        return self.mode == "per-token"


# ---------------------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------------------

def implausible_reason(m: Measurement) -> str | None:
    """Why `m` was flagged implausible (runner.annotate writes extra['plausibility'] and its reason);
    None when it was not flagged."""
    if (m.extra or {}).get("plausibility") != "implausible":
        return None
    return str(m.extra.get("plausibility_reason") or "")


def _side_flags(side: str, m: Measurement) -> list[str]:
    why = implausible_reason(m)
    if why is None:
        return []
    return [f"{side} implausible" + (f": {why}" if why else "")]


def _pair_flags(a: Measurement, b: Measurement) -> list[str]:
    flags = _side_flags("A", a) + _side_flags("B", b)
    if a.clocks_mhz and b.clocks_mhz:
        ca, cb = float(np.median(a.clocks_mhz)), float(np.median(b.clocks_mhz))
        if ca > 0 and cb > 0 and abs(ca / cb - 1.0) > CLOCK_TOLERANCE:
            flags.append(f"SM clock differs: A {ca:.0f} MHz, B {cb:.0f} MHz")
    return flags


def _levels(m: Measurement) -> tuple[tuple, ...]:
    """Matching keys from coarse to fine: workload; workload x impl x params; plus the timer mode."""
    cell = (m.workload.key, m.impl, params_key(m.params))
    return ((m.workload.key,), cell, cell + (m.timer,))


def _unique_level(a: Sequence[Measurement], b: Sequence[Measurement]) -> int:
    for level in range(3):
        if all(len({_levels(m)[level] for m in side}) == len(side) for side in (a, b)):
            return level
    raise UserError("a side holds the same cell (workload, impl, params, timer) twice; compare one run at a time")


def _label(m: Measurement, with_impl: bool) -> str:
    return f"{m.workload.label} · {m.impl_label}" if with_impl else m.workload.label


def _few(items: Sequence[str], k: int = 3) -> str:
    items = list(dict.fromkeys(items))
    text = ", ".join(items[:k])
    return text + (f" and {len(items) - k} more" if len(items) > k else "")


def _match_workloads(a: Sequence[Measurement], b: Sequence[Measurement]):
    level = _unique_level(a, b)
    with_impl = level > 0
    index_b = {_levels(m)[level]: m for m in b}
    keys_a = {_levels(m)[level] for m in a}
    pairs = [(m, index_b[_levels(m)[level]]) for m in a if _levels(m)[level] in index_b]
    unmatched = [Unmatched("A", _label(m, with_impl), m.workload.key, m.impl_label, m.status)
                 for m in a if _levels(m)[level] not in index_b]
    unmatched += [Unmatched("B", _label(m, with_impl), m.workload.key, m.impl_label, m.status)
                  for m in b if _levels(m)[level] not in keys_a]
    if not pairs:
        wa, wb = {m.workload.key for m in a}, {m.workload.key for m in b}
        if wa & wb:
            raise UserError(
                f"no (workload, impl) cell in common: A has impls {_few([m.impl_label for m in a])}, "
                f"B has {_few([m.impl_label for m in b])}; compare one impl per side")
        raise UserError(
            f"no workload in common: A has {_few([m.workload.label for m in a])}; B has "
            f"{_few([m.workload.label for m in b])}. A change of shape is a different workload, not a speedup; "
            "compare throughput across shapes with --per-token (per_token=True)")
    return pairs, unmatched, with_impl


def _match_per_token(a: Sequence[Measurement], b: Sequence[Measurement]):
    """Pair by impl (label with params): first the cells whose workload both sides hold, then the others by
    position within each impl, in the order given (a run's measurement order); when the sides share no impl, the
    same over the whole lists. Extras are unmatched."""
    impls_b = {m.impl_label for m in b}
    common = [i for i in dict.fromkeys(m.impl_label for m in a) if i in impls_b]
    groups = [([m for m in a if m.impl_label == i], [m for m in b if m.impl_label == i]) for i in common]
    if not common:
        groups = [(list(a), list(b))]
    pairs, paired = [], set()
    for ga, gb in groups:
        # like with like first: a workload both sides hold is never paired with another shape
        same = {m.workload: m for m in reversed(gb)}
        for ma in ga:
            mb = same.pop(ma.workload, None)
            if mb is not None and id(mb) not in paired:
                pairs.append((ma, mb))
                paired.update((id(ma), id(mb)))
        rest_a = [m for m in ga if id(m) not in paired]
        rest_b = [m for m in gb if id(m) not in paired]
        for ma, mb in zip(rest_a, rest_b):
            pairs.append((ma, mb))
            paired.update((id(ma), id(mb)))
    unmatched = [Unmatched(side, _label(m, True), m.workload.key, m.impl_label, m.status)
                 for side, ms in (("A", a), ("B", b)) for m in ms if id(m) not in paired]
    return pairs, unmatched


# ---------------------------------------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------------------------------------

def _tokens(w: Workload) -> int:
    return w.batch * w.q_len


def _single_name(ms: Sequence[Measurement], default: str) -> str:
    names = {m.impl_label for m in ms}
    return names.pop() if len(names) == 1 else default


def compare_measurements(a: Sequence[Measurement], b: Sequence[Measurement], threshold: float = 0.02,
                         alpha: float = 0.05, per_token: bool = False, seed: int = 0, *,
                         a_name: str | None = None, b_name: str | None = None) -> Comparison:
    """Compare candidate measurements `a` with baseline measurements `b`, row by row.

    Time mode (default): cells pair by workload (by workload x impl x params when a side holds several
    impls per workload, and by timer mode when it holds several of those); a cell on one side only is
    listed as unmatched; when nothing pairs, UserError names the workloads (a change of shape is not a
    speedup). Per-token mode pairs by impl, then by position within each impl (see `_match_per_token`), and
    compares time per query token, i.e. throughput; the TFLOP/s ratio is given beside it.

    Each compared row: the ratio of medians with a 95% CI by a bootstrap over rounds and a p-value on
    per-round summaries (`rounds.paired_ratio` for A and B from one interleaved session, paired by round;
    `rounds.unpaired_ratio` otherwise, each side's batches independent blocks), its Holm adjustment over
    all compared rows, Cliff's delta over the samples (descriptive), and `rounds.round_verdict` on the time
    ratio (A's point of view): inconclusive with fewer than MIN_ROUNDS rounds. The suite's geometric mean
    is bootstrapped over each row's rounds (`rounds.geomean_ratio`). Pairs where a side is not ok, or
    whose timer modes differ, are excluded from the family and listed with the reason.
    """
    if not 0 <= threshold < 1:
        raise UserError(f"threshold must be in [0, 1), got {threshold!r}")
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be in (0, 1), got {alpha!r}")
    a, b = list(a), list(b)
    for side, ms in (("A", a), ("B", b)):
        if not ms:
            raise UserError(f"side {side} has no measurements to compare")
    if per_token:
        pairs, unmatched = _match_per_token(a, b)
        with_impl = True
    else:
        pairs, unmatched, with_impl = _match_workloads(a, b)

    pending: list[dict[str, Any]] = []
    excluded: list[Excluded] = []
    for ma, mb in pairs:
        wa, wb = ma.workload, mb.workload
        if per_token:
            label = wa.label if wa == wb else f"{wa.label} vs {wb.label}"
            key = wa.key if wa == wb else f"{wa.key}|{wb.key}"
        else:
            label, key = _label(ma, with_impl), wa.key
        flags = _pair_flags(ma, mb)
        common = dict(label=label, key=key, impl_a=ma.impl_label, impl_b=mb.impl_label)
        if not (ma.ok and mb.ok):
            parts = [f"{s} {m.status}" + (f": {m.reason}" if m.reason else "")
                     for s, m in (("A", ma), ("B", mb)) if not m.ok]
            excluded.append(Excluded(status_a=ma.status, status_b=mb.status, reason="; ".join(parts),
                                     flags=tuple(flags), **common))
            continue
        if ma.timer != mb.timer:
            excluded.append(Excluded(status_a=ma.status, status_b=mb.status, flags=tuple(flags),
                                     reason=f"timer modes differ ({ma.timer} vs {mb.timer}): not comparable",
                                     **common))
            continue
        xa, xb = np.asarray(ma.samples_ms, float), np.asarray(mb.samples_ms, float)
        if per_token:
            xa, xb = xa / _tokens(wa), xb / _tokens(wb)
        pairing = _pairing(ma, mb)
        sa, sb = ma.batch_sizes or None, mb.batch_sizes or None
        how = rounds.paired_ratio if pairing == PAIRED else rounds.unpaired_ratio
        test = how(xa, sa, xb, sb, confidence=CONFIDENCE, seed=seed)
        r, lo, hi = test.ratio, test.lo, test.hi
        # TFLOP/s ratio = tokens/s ratio x (FLOP per token of A / FLOP per token of B): a constant factor.
        k = (metrics.flops(wa) / _tokens(wa)) / (metrics.flops(wb) / _tokens(wb)) if per_token else 1.0
        a_med, b_med = stats.median(ma.samples_ms), stats.median(mb.samples_ms)
        delta = stats.cliffs_delta(xb, xa)  # on times, B vs A: positive when A's times tend to be shorter
        pending.append(dict(
            common, workload_a=wa, workload_b=wb, n_a=len(xa), n_b=len(xb), a_median_ms=a_med, b_median_ms=b_med,
            a_ci_ms=rounds.block_median_ci(ma.samples_ms, sa, seed=seed),
            b_ci_ms=rounds.block_median_ci(mb.samples_ms, sb, seed=seed),
            a_tokens_per_s=metrics.tokens_per_s(wa, a_med), b_tokens_per_s=metrics.tokens_per_s(wb, b_med),
            a_tflops=metrics.tflops_per_s(wa, a_med), b_tflops=metrics.tflops_per_s(wb, b_med),
            time_ratio=r, time_ratio_ci=(lo, hi), speedup=1.0 / r, speedup_ci=(1.0 / hi, 1.0 / lo),
            tflops_ratio=k / r, tflops_ratio_ci=(k / hi, k / lo), cliffs_delta=delta,
            magnitude=stats.cliffs_magnitude(delta), p_value=test.p, rounds=test.rounds, pairing=pairing,
            flags=tuple(flags), test=test,
            blocked=rounds.Blocked(xa, sa, xb, sb, paired=pairing == PAIRED)))

    adjusted = stats.holm([p["p_value"] for p in pending])
    rows = []
    for p, p_adj in zip(pending, adjusted):
        verdict = rounds.round_verdict(p["test"], p_adj, threshold=threshold, alpha=alpha)
        label = rounds.verdict_label(verdict, p["rounds"], "rounds" if p["pairing"] == PAIRED else p["pairing"])
        rows.append(Row(p_holm=p_adj, verdict=verdict, verdict_label=label,
                        **{k: v for k, v in p.items() if k not in ("test", "blocked")}))

    g = g_ci = None
    if pending:
        gr, glo, ghi = rounds.geomean_ratio([p["blocked"] for p in pending], confidence=CONFIDENCE, seed=seed)
        g, g_ci = 1.0 / gr, (1.0 / ghi, 1.0 / glo)
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    different = per_token and any(r.workload_a != r.workload_b for r in rows)
    modes = dict.fromkeys(ma.timer for ma, mb in pairs if ma.ok and mb.ok and ma.timer == mb.timer)
    return Comparison(
        a_name=a_name or _single_name(a, "A"), b_name=b_name or _single_name(b, "B"),
        mode="per-token" if per_token else "time", threshold=threshold, alpha=alpha, rows=tuple(rows),
        excluded=tuple(excluded), unmatched=tuple(unmatched), geomean_speedup=g, geomean_ci=g_ci, counts=counts,
        different_workloads=different, notes=tuple(_timer_note(t) for t in modes) + _pairing_notes(rows, alpha))


def _session(m: Measurement) -> str | None:
    return ((m.extra or {}).get("timing") or {}).get("interleaved", {}).get("session")


def _pairing(a: Measurement, b: Measurement) -> str:
    """PAIRED when A and B were timed in one interleaved session with their batches recorded (batch k of each
    is round k), and neither pools several repeats (each repeat is a session of its own); BATCHES when both
    have batches but were measured apart; BLOCKS when a side's batches were not recorded."""
    if not (a.batch_sizes and b.batch_sizes):
        return BLOCKS
    single = all(len((m.extra or {}).get("repeats") or ()) <= 1 for m in (a, b))
    if single and _session(a) is not None and _session(a) == _session(b):
        return PAIRED
    return BATCHES


def _pairing_notes(rows: Sequence[Row], alpha: float | None = None) -> tuple[str, ...]:
    notes = []
    n = {kind: sum(r.pairing == kind for r in rows) for kind in (PAIRED, BATCHES, BLOCKS)}
    if n[BATCHES]:
        notes.append(f"{_rows(n[BATCHES])} measured apart (not in one interleaved session): rounds cannot be "
                     "paired, so each side's batches are independent blocks (unpaired bootstrap over batches, "
                     "Mann-Whitney U on the batch medians). What moved between the two measurements as a whole "
                     "(another process, another day) is not in the CI: compare impls measured now, interleaved, "
                     "for a paired comparison")
    if n[BLOCKS]:
        notes.append(f"{_rows(n[BLOCKS])} without recorded batch sizes (stored before schema 2): each side's "
                     f"samples split into {rounds.DEFAULT_BLOCKS} contiguous blocks in time order and compared "
                     "unpaired; the CI may understate between-batch noise")
    few = [r for r in rows if r.rounds < MIN_ROUNDS]
    if few:
        notes.append(f"{_rows(len(few))} with fewer than {MIN_ROUNDS} rounds: no verdict (inconclusive), whatever "
                     "the interval says; measure more rounds (compare --rounds)")
    paired = [r for r in rows if r.pairing == PAIRED and r.rounds >= MIN_ROUNDS]
    if paired and alpha is not None:
        k = min(r.rounds for r in paired)
        if 2.0 ** (1 - k) * len(rows) >= alpha:
            need = math.floor(1 + math.log2(len(rows) / alpha)) + 1
            notes.append(f"with {k} rounds the signed-rank test cannot go below p = {2.0 ** (1 - k):.2g}, which Holm "
                         f"over {_rows(len(rows))} lifts to alpha or more: no row can be faster or slower; measure at "
                         f"least {need} rounds (compare --rounds {need})")
    return tuple(notes)


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _timer_note(mode: str) -> str:
    from ..measure.timers import TIMER_TEXT

    text = TIMER_TEXT.get(mode)
    return f"timer `{mode}`" + (f": {text}" if text else "")


def _env_mismatches(store, env_ids: list[str]) -> str:
    """How the environments of one run's measurements differ ('' when they are one environment)."""
    from ..analysis.device import env_mismatch

    ids = list(dict.fromkeys(e for e in env_ids if e))
    diffs = [d for e in ids[1:] for d in env_mismatch(store.environment(ids[0]), store.environment(e))]
    return "; ".join(dict.fromkeys(diffs))


def compare_runs(store, run_a, run_b, allow_env_mismatch: bool = False, impl: str | None = None, *,
                 threshold: float = 0.02, alpha: float = 0.05, per_token: bool = False, seed: int = 0) -> Comparison:
    """Compare two stored runs cell by cell (workload x impl), A = run_a (candidate), B = run_b (baseline).

    Refuses (UserError) when the runs' environments differ in a performance-relevant key
    (`device.PERF_KEYS`), unless allow_env_mismatch: then the comparison carries a warning naming the
    differences. `impl` keeps only that impl's measurements on both sides.
    """
    from ..analysis.device import env_mismatch

    ia, ib = store.run(run_a), store.run(run_b)
    warnings: list[str] = []
    ma = store.measurements(ia.run_id, impl=impl)
    mb = store.measurements(ib.run_id, impl=impl)
    for info, ms in ((ia, ma), (ib, mb)):  # a run measured on several workers may hold several environments
        mixed = _env_mismatches(store, [info.env_id] + [m.env_id for m in ms])
        if mixed:
            raise UserError(f"run {info.run_id} holds measurements from different environments ({mixed}); they "
                            "are never pooled: compare runs of one environment")
    if ia.env_id != ib.env_id:
        diff = env_mismatch(store.environment(ia.env_id), store.environment(ib.env_id))
        if diff:
            text = "; ".join(diff)
            if not allow_env_mismatch:
                raise UserError(f"runs {ia.run_id} and {ib.run_id} ran in different environments ({text}); "
                                "pass --allow-env-mismatch to compare anyway")
            warnings.append(f"environments differ ({text}): part of any difference may come from the "
                            "environment, not the code")
    for info, ms in ((ia, ma), (ib, mb)):
        if not ms:
            raise UserError(f"run {info.run_id} has no measurements" + (f" of impl {impl!r}" if impl else ""))
        if info.status != "complete":  # an interrupted or unfinished run: its missing cells are not a change
            warnings.append(f"run {info.run_id} is {info.status}, not complete: cells it never measured are listed as "
                            "unmatched; `attnbench run ... --resume` finishes it")

    def name(info, ms):
        single = _single_name(ms, "")
        return f"run {info.run_id}" + (f" ({single})" if single else "")

    c = compare_measurements(ma, mb, threshold=threshold, alpha=alpha, per_token=per_token, seed=seed,
                             a_name=name(ia, ma), b_name=name(ib, mb))
    where = _environment_note(store, ia.env_id, ib.env_id)
    return dataclasses.replace(c, warnings=tuple(warnings) + c.warnings, run_ids=(ia.run_id, ib.run_id),
                               notes=(where,) + c.notes)


def _environment_note(store, env_a: str, env_b: str | None = None) -> str:
    """Where the numbers were measured: 'measured on NVIDIA H100 ..., torch ...' (both sides' when they differ)."""
    from ..report.tables import _env_line

    line_a = _env_line(store.environment(env_a))
    if env_b is None or env_b == env_a:
        return f"measured on {line_a}"
    line_b = _env_line(store.environment(env_b))
    return f"measured on {line_a}" if line_a == line_b else f"A measured on {line_a}; B measured on {line_b}"


def compare_impls(impl_a: str, impl_b: str, workloads, store, device: str | None = None, timer=None,
                  policy=None, interleave: bool = True, *, threshold: float = 0.02, alpha: float = 0.05,
                  per_token: bool = False, seed: int = 0, progress: bool = False,
                  name: str = "") -> tuple[Comparison, int]:
    """Measure impl_a (candidate) and impl_b (baseline) now on the same workloads, in one run, then compare.

    `timer` is a Timer object (tests pass a FakeTimer) or a mode name ('auto', 'cold', 'warm', 'host').
    With `interleave` (the default) each workload's A and B cells are timed round by round on the same
    input tensors, so slow drift (clocks, heat) hits both sides alike; without it, A's cell and then B's.
    Comparing an impl with itself (an A/A check) is measured the same way: B is stored under an alias
    (f"{name} (B)", since the store keys cells by impl) and shown under the name given.
    """
    from ..impls import Alias, resolve_many
    from ..measure.runner import RunConfig
    from ..measure.runner import run as run_sweep

    impls = resolve_many([impl_a, impl_b])
    same = impls[0].name == impls[1].name
    if same:
        impls[1] = Alias(impls[1], f"{impls[1].name} (B)")
    base: dict[str, Any] = dict(workloads=list(workloads), device=device, interleave=interleave)
    if policy is not None:
        base["policy"] = policy
    timer_obj = None
    if isinstance(timer, str):
        base["timer"] = timer
    else:
        timer_obj = timer
    rid = run_sweep(RunConfig(impls=impls, name=name or f"compare {impl_a} vs {impl_b}", **base), store,
                    timer=timer_obj, progress=progress)
    ms = store.measurements(rid)
    ma = [m for m in ms if m.impl == impls[0].name]
    mb = [dataclasses.replace(m, impl=impls[0].name) if same else m for m in ms if m.impl == impls[1].name]
    how = ("A and B interleaved, on the same input tensors" if interleave
           else "each workload's A cell, then its B cell (not interleaved sample by sample)")
    note = f"A/A comparison: one run (run {rid}), {how}" if same else f"measured in run {rid}, {how}"
    c = compare_measurements(ma, mb, threshold=threshold, alpha=alpha, per_token=per_token, seed=seed,
                             a_name=impl_a, b_name=impl_b)
    return dataclasses.replace(c, notes=(_environment_note(store, store.run(rid).env_id),) + c.notes + (note,),
                               run_ids=(rid,)), rid


def with_cost(c: Comparison, calls_per_day: float, usd_per_hour: float) -> Comparison:
    """Add a cost section: for each row, `cost.cost` of A and of B at that volume, and `cost.saving`."""
    if c.per_token and c.different_workloads:
        raise UserError("a cost per call needs the same workload on both sides; a per-token comparison of "
                        "different shapes does different work per call")
    if not (calls_per_day > 0 and usd_per_hour >= 0):
        raise UserError("--calls-per-day must be > 0 and --cost-per-hour >= 0")
    rows = []
    for r in c.rows:
        ca = costmod.cost(r.a_median_ms, r.a_ci_ms, calls_per_day, usd_per_hour)
        cb = costmod.cost(r.b_median_ms, r.b_ci_ms, calls_per_day, usd_per_hour)
        rows.append({"label": r.label, "key": r.key, "a": ca, "b": cb, "saving": costmod.saving(ca, cb)})
    section = {"calls_per_day": calls_per_day, "usd_per_hour": usd_per_hour, "days_per_month": costmod.DAYS_PER_MONTH,
               "assumption": costmod.ASSUMPTION, "saving_note": costmod.SAVING_NOTE, "rows": rows}
    return dataclasses.replace(c, cost=section)
