"""The search on one workload: correctness gate, racing (successive halving on median CIs), exhaustive reference."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable

from ..spec import Workload
from .model import Candidate, TuneConfig, WorkloadResult, _label, _space


class _Live:
    """A candidate during the search (mutable; becomes a frozen Candidate at the end)."""

    def __init__(self, impl, params: dict[str, Any], timer=None):
        self.impl, self.params, self.timer = impl, dict(params), timer
        self.status, self.reason, self.note = "ok", "", ""
        self.samples: list[float] = []
        self.host: list[float] = []
        self.fn = self.call = None
        self.compile_ms: float | None = None
        self.rel_err: float | None = None
        self.backend = ""
        self.dropped: int | None = None

    @property
    def label(self) -> str:
        return _label(self.impl.name, self.params)

    @property
    def exclusive(self) -> bool:
        """Building it invalidates other builds of its family (FlexAttention resets torch.compile)."""
        return bool(getattr(self.impl, "exclusive_compile", self.impl.family == "flex"))

    def reject(self, status: str, reason: str) -> bool:
        self.status, self.reason = status, reason
        self.release()
        return False

    def release(self) -> None:
        """Drop the built callable (and any state the timer keeps for it, e.g. a captured CUDA graph)."""
        forget = getattr(self.timer, "release", None)
        if callable(forget) and self.call is not None:
            forget(self.call)
        self.fn = self.call = None


def _in_process_compile():
    """torch.compile without inductor's pool of compile processes, which starts on the first compile and
    loads the CPU while its workers start. Seen on an H100: in the first workload of a process, right
    after the first FlexAttention compile, cuDNN timed at 3-4x its later time (cuDNN's launch is
    host-heavy) and racing dropped it; compiling in-process, the next run did not show it. One run
    each: the pool is the likely cause, not a proven one."""
    try:
        import torch._inductor.config as inductor_config

        return inductor_config.patch(compile_threads=1)
    except Exception:  # no inductor, or no such option: compile as configured
        return contextlib.nullcontext()


def _order_ci(samples: list[float], confidence: float) -> tuple[float, float]:
    from ..analysis.stats import median_ci_order

    return median_ci_order(samples, confidence)


class _Search:
    def __init__(self, w: Workload, device: str, timer, cfg: TuneConfig, budget_ms: float | None,
                 ceilings, seed: int):
        self.w, self.device, self.timer, self.cfg, self.seed = w, device, timer, cfg, seed
        self.ceilings = ceilings
        self.start = timer.now_ms()
        self.deadline = None if budget_ms is None else self.start + budget_ms
        self.live_exclusive: dict[str, _Live] = {}
        self.stage = ""
        self.chunk = 5  # samples per turn when candidates are interleaved
        self.rewarm_ms = cfg.policy.warmup_ms if cfg.exhaustive else cfg.racing.warmup_ms
        self.cost = {"samples": 0, "sample_ms": 0.0, "measure_ms": 0.0, "compile_ms": 0.0}
        from ..impls import make_inputs

        self.inputs = make_inputs(w, device, seed)

    def over_budget(self) -> bool:
        return self.deadline is not None and self.timer.now_ms() >= self.deadline

    # -- building and the gate ----------------------------------------------------------------
    def _build(self, c: _Live) -> None:
        from ..impls import make_call
        from ..measure.runner import _sync

        t0 = time.perf_counter()
        c.release()
        with _in_process_compile() if c.exclusive else contextlib.nullcontext():
            self.stage = "build"
            c.fn = c.impl.build(self.w, self.device, c.params)
            c.call = make_call(c.fn, self.w, self.inputs)
            self.stage = "first call"
            c.call()
            _sync(self.device)
        ms = (time.perf_counter() - t0) * 1e3
        c.compile_ms = ms if c.compile_ms is None else c.compile_ms
        self.cost["compile_ms"] += ms
        if c.exclusive:
            self.live_exclusive[c.impl.family] = c

    def _ensure_built(self, c: _Live) -> bool:
        """Build c if it is not built (or another build of its family replaced it); True if it built."""
        if c.call is None or (c.exclusive and self.live_exclusive.get(c.impl.family) is not c):
            self._build(c)
            return True
        return False

    def _guard(self, c: _Live, stage: str, action: Callable[[], Any]) -> bool:
        """Run a stage; any failure becomes the candidate's status (never a crash of the search)."""
        from ..impls import Unsupported
        from ..measure.runner import _free, _is_oom, _one_line

        self.stage = stage
        try:
            action()
            return True
        except Unsupported as exc:
            return c.reject("unsupported", str(exc))
        except Exception as exc:
            _free(self.device)
            stage = self.stage
            if _is_oom(exc):
                return c.reject("oom", f"out of memory during {stage}")
            return c.reject("error", f"{stage}: {_one_line(exc)}")

    def gate(self, c: _Live) -> bool:
        try:
            why = c.impl.supports(self.w, self.device)
        except Exception as exc:  # a plugin's supports() may itself fail
            why = f"supports() raised {type(exc).__name__}: {exc}"
        if why:
            return c.reject("unsupported", why)
        if not self._guard(c, "build", lambda: self._build(c)):
            return False

        def check() -> None:
            from ..measure.correctness import check as check_fn

            with c.impl.context():
                result = check_fn(c.fn, self.w, self.device)
                c.rel_err = result.rel_err
                if not result.ok:
                    c.status, c.reason = "incorrect", result.reason
                    return
                c.backend, _ = c.impl.backend(c.fn, self.inputs, self.device)

        if not self._guard(c, "correctness check", check):
            return False
        if c.status != "ok":
            c.release()
            return False
        return self._check_bucket(c)

    def _check_bucket(self, c: _Live) -> bool:
        """The dispatch table gives the winner every shape of this workload's bucket, so the gate checks it on
        one more of them (_bucket_sibling: odd lengths, a partial last tile where the workload's lengths are
        multiples of a block). A kernel right only on whole tiles would otherwise win here and be called,
        unchecked, on every other length of the bucket."""
        w2 = _bucket_sibling(self.w)
        if w2 is None:
            return True
        try:
            if c.impl.supports(w2, self.device):
                return True  # refused there: dispatch falls back to SDPA for that shape, nothing wrong is run
        except Exception:
            return True

        def check() -> None:
            from ..measure.correctness import check as check_fn

            if c.exclusive:  # building another shape replaces its compiled function: rebuild c when next timed
                self.live_exclusive.pop(c.impl.family, None)
            from ..impls import make_call, make_inputs
            from ..measure.runner import _sync

            self.stage = f"build for {w2.label}"
            with _in_process_compile() if c.exclusive else contextlib.nullcontext():
                fn = c.impl.build(w2, self.device, c.params)
                # its first call (a compile) outside impl.context(), as _build's: flex's context makes any
                # compile after the first call an error
                make_call(fn, w2, make_inputs(w2, self.device, self.seed + 1))()
                _sync(self.device)
            self.stage = f"correctness check on {w2.label}"
            with c.impl.context():
                result = check_fn(fn, w2, self.device)
            if not result.ok:
                c.status = "incorrect"
                c.reason = (f"right on this shape but not on {w2.label}, which its dispatch bucket also sends "
                            f"to it: {result.reason}")

        if not self._guard(c, "bucket check", check):
            return False
        if c.status != "ok":
            c.release()
            return False
        return True

    # -- sampling -------------------------------------------------------------------------------
    def _select(self, c: _Live) -> None:
        select = getattr(self.timer, "select", None)
        if callable(select):
            select(c.impl.name, dict(c.params), self.w)

    def _record(self, c: _Live, times: list[float], hosts: list, spent_ms: float) -> None:
        bad = [x for x in times if not (x == x and x > 0)]
        if bad:
            raise RuntimeError(f"timer returned {len(bad)} invalid samples")
        c.samples += times
        c.host += [h for h in hosts if h is not None]
        self.cost["samples"] += len(times)
        self.cost["sample_ms"] += sum(times)
        self.cost["measure_ms"] += spent_ms

    def take(self, c: _Live, n: int, warmup_ms: float = 0.0) -> bool:
        """n more samples (n=0: warm-up only). Warm-up by time first when asked, or after a rebuild."""

        def run() -> None:
            warm = max(warmup_ms, self.rewarm_ms) if self._ensure_built(c) else warmup_ms
            self.stage = "timing"
            self._select(c)
            t = self.timer
            t0 = t.now_ms()
            with c.impl.context():
                calls = 0
                while warm > 0 and (calls == 0 or (t.now_ms() - t0 < warm and calls < 10_000)):
                    batch = max(1, min(2 ** calls.bit_length(), 64))
                    t.run(c.call, batch)
                    calls += batch
                samples = t.run(c.call, n) if n > 0 else []
            self._record(c, [s.device_ms for s in samples], [s.host_ms for s in samples], t.now_ms() - t0)

        return self._guard(c, "timing", run)

    def fill(self, cands: list[_Live], target: int) -> bool:
        """Bring every candidate to `target` samples; False when the budget ran out first.

        Candidates that can stay built side by side are sampled in round-robin chunks, so slow drift
        (clocks, heat) falls on all of them alike; an exclusive one (FlexAttention) takes its share in
        one piece, the currently built one first, so each is rebuilt at most once per call."""
        live = self.live_exclusive
        excl = sorted((c for c in cands if c.exclusive), key=lambda c: 0 if live.get(c.impl.family) is c else 1)
        for c in excl:
            if self.over_budget():
                return False
            self.take(c, target - len(c.samples))
        while True:
            pending = [c for c in cands if not c.exclusive and c.status == "ok" and len(c.samples) < target]
            if not pending:
                return True
            for c in pending:
                if self.over_budget():
                    return False
                self.take(c, min(self.chunk, target - len(c.samples)))

    def plausible(self, c: _Live) -> bool:
        if self.ceilings is None or not c.samples:
            return True
        from ..analysis import metrics
        from ..analysis.roofline import plausibility
        from ..analysis.stats import median

        med = median(c.samples)
        status, reason = plausibility(metrics.tflops_per_s(self.w, med), metrics.gb_per_s(self.w, med), self.ceilings,
                                      self.w.dtype, working_set_bytes=metrics.min_bytes(self.w))
        if status != "ok":
            return c.reject("implausible", reason)
        return True

    # -- the two searches -----------------------------------------------------------------------
    def _first_round(self, cands: list[_Live], samples: int, warmup_ms: float) -> list[_Live]:
        """Gate every candidate, warm each up, and give each `samples` samples: an exclusive one right
        after its gate (while it is built), the others interleaved. Returns the plausible survivors."""
        shared = []
        for c in cands:
            if not self.gate(c):
                continue
            if c.exclusive:
                self.take(c, samples, warmup_ms)
            elif self.take(c, 0, warmup_ms):
                shared.append(c)
        self.deadline, deadline = None, self.deadline  # round 1 always completes
        self.fill(shared, samples)
        self.deadline = deadline
        return [c for c in cands if c.status == "ok" and c.samples and self.plausible(c)]

    def exhaustive(self, cands: list[_Live]) -> tuple[str, int]:
        """The fixed policy for everyone: warm-up by time, then max_samples samples each."""
        p = self.cfg.policy
        self._first_round(cands, p.max_samples, p.warmup_ms)
        return ("exhaustive" if any(c.status == "ok" for c in cands) else "none-correct"), 1

    def race(self, cands: list[_Live]) -> tuple[str, int]:
        rp = self.cfg.racing
        alive = self._first_round(cands, rp.first_samples, rp.warmup_ms)
        rounds = 1
        while True:
            if not alive:
                return "none-correct", rounds
            alive = self._eliminate(alive, rounds)
            if len(alive) == 1:
                return "one-left", rounds
            if self._equivalent(alive):
                return "equivalent", rounds
            have = max(len(c.samples) for c in alive)
            if all(len(c.samples) >= rp.max_samples for c in alive):
                return "sample-limit", rounds
            if self.over_budget():
                return "budget", rounds
            rounds += 1
            target = min(rp.max_samples, max(have + 1, math.ceil(have * rp.growth)))
            finished = self.fill(alive, target)
            alive = [c for c in alive if c.status == "ok"]
            if not finished:
                return ("budget" if alive else "none-correct"), rounds

    def _eliminate(self, alive: list[_Live], rounds: int) -> list[_Live]:
        from ..analysis.stats import median

        rp = self.cfg.racing
        leader = min(alive, key=lambda c: median(c.samples))
        _, hi_leader = _order_ci(leader.samples, rp.confidence)
        keep = []
        for c in alive:
            lo, hi = _order_ci(c.samples, rp.confidence)
            if c is not leader and lo > hi_leader * (1 + rp.margin):
                c.dropped = rounds
                c.note = (f"dropped after round {rounds}: {rp.confidence:.0%} CI [{lo:.4g}, {hi:.4g}] ms above "
                          f"{leader.label}'s upper bound {hi_leader:.4g} ms by > {rp.margin:.0%}")
                c.release()
            else:
                keep.append(c)
        return keep

    def _equivalent(self, alive: list[_Live]) -> bool:
        rp = self.cfg.racing
        cis = [_order_ci(c.samples, rp.confidence) for c in alive]
        return max(hi for _, hi in cis) <= min(lo for lo, _ in cis) * (1 + rp.equivalence)


def _bucket_sibling(w: Workload) -> Workload | None:
    """The workload with each even length n made n - 1 where that is still in its power-of-two bucket (n in
    (2^(k-1), 2^k]): odd, so a partial last tile for any power-of-two block, and never larger than the
    workload. None when no length changes (odd already, or 2) or the mask cannot be stated at the new
    lengths."""
    def odd(n: int) -> int:
        top = 1 << (n - 1).bit_length()
        return n - 1 if n % 2 == 0 and n - 1 > top // 2 else n

    q_len, kv_len = odd(w.q_len), odd(w.kv_len)
    if (q_len, kv_len) == (w.q_len, w.kv_len):
        return None
    try:
        w2 = w.replace(q_len=q_len, kv_len=kv_len, mask=w.mask, causal=w.causal)
    except Exception:  # a mask tied to the lengths (documents of given sizes), or a layout that needs them
        return None
    return w2


def _finish(search: _Search, cands: list[_Live], stop: str, rounds: int, cfg: TuneConfig, eid: str,
            wall_s: float) -> WorkloadResult:
    from ..analysis.stats import median, median_ci, ratio_ci

    frozen: list[Candidate] = []
    for c in cands:
        timed = c.status == "ok" and bool(c.samples)
        frozen.append(Candidate(
            impl=c.impl.name, params=c.params, status=c.status, reason=c.reason,
            samples_ms=tuple(c.samples), host_ms=tuple(c.host),
            median_ms=median(c.samples) if timed else None,
            ci_ms=median_ci(c.samples, seed=cfg.seed) if timed else None,
            dropped_round=c.dropped, note=c.note, rel_err=c.rel_err, backend=c.backend, compile_ms=c.compile_ms))
    timed = sorted((c for c in frozen if c.timed), key=lambda c: c.median_ms)
    ranked = tuple(timed + [c for c in frozen if not c.timed])
    eligible = [c for c in timed if c.dropped_round is None]
    notes: list[str] = []
    chosen = eligible[0] if eligible else None
    base = next((c for c in timed if c.label == cfg.baseline), None)
    eq = cfg.racing.equivalence
    if chosen is not None and base is not None and base is not chosen and base.dropped_round is None \
            and base.median_ms <= chosen.median_ms * (1 + eq):
        notes.append(f"{cfg.baseline} is within {eq:.0%} of {chosen.label} ({base.median_ms:.4g} vs "
                     f"{chosen.median_ms:.4g} ms): ties go to the baseline")
        chosen = base
    if stop == "budget" and chosen is not None:
        notes.append(f"budget spent before racing finished: {chosen.label} has the best median among "
                     f"{len(eligible)} undecided candidates")
    speedup = None
    if chosen is not None and base is not None:
        r, lo, hi = (1.0, 1.0, 1.0) if base is chosen else ratio_ci(base.samples_ms, chosen.samples_ms,
                                                                   seed=cfg.seed)
        speedup = {"baseline": cfg.baseline, "value": r, "lo": lo, "hi": hi}
    elif chosen is not None:
        b = next((c for c in frozen if c.label == cfg.baseline), None)
        notes.append(f"no speedup over {cfg.baseline}: " + (f"it was {b.status} ({b.reason})" if b else "not measured"))
    cost = dict(search.cost, wall_s=wall_s)
    return WorkloadResult(workload=search.w, mode=cfg.mode, candidates=ranked,
                          chosen=chosen.label if chosen else None, stop_reason=stop, rounds=rounds, cost=cost,
                          speedup=speedup, env_id=eid, notes=tuple(notes))


def search_workload(w: Workload, impls: list, device: str, timer, cfg: TuneConfig, eid: str = "",
                    budget_s: float | None = None, ceilings=None) -> WorkloadResult:
    """Gate and race (or measure exhaustively) every (impl, params) candidate of one workload.

    Over every candidate (impl x its param_space, or the params given):

    1. Gate: supports(), build, first call (compilation, timed apart), correctness against float64
       attention, on the workload and on one more shape of its dispatch bucket (`_bucket_sibling`: even
       lengths made odd), since the table sends the whole bucket to the winner. Rejected with a status and
       reason: unsupported, incorrect, oom, error; after the first samples also implausible (above the
       device's compute or memory ceiling, `roofline.plausibility`).
       A rejected candidate is never a winner.
    2. Racing (default): every survivor gets `first_samples`; after each round the leader is the lowest
       median; a candidate is dropped when the lower bound of its median's CI (order statistics, 99%)
       lies above the upper bound of the leader's by more than `margin`. Survivors' sample counts then
       grow by `growth`, up to `max_samples`. It stops when one is left, when all survivors are within
       `equivalence` of each other (max upper bound / min lower bound), at the sample limit, or when the
       budget (timer clock, gate included; round 1 always completes) is spent: then the best median wins
       and its CI is stated. Within a round, candidates take turns in chunks of 5 samples, so slow drift
       (clocks, heat) falls on all of them alike (FlexAttention configs, which cannot stay compiled side
       by side, take their share in one piece, rebuilt once per round).
       Exhaustive (`exhaustive=True`), to validate racing: every candidate gets the fixed policy's warm-up
       and max_samples samples, taken the same interleaved way, with nothing dropped.
    3. The chosen one: the lowest median among the candidates not dropped; ties go to the baseline (a
       baseline within `equivalence` of the best is chosen, since it costs nothing to dispatch to).
       Its speedup over the baseline is median(baseline) / median(chosen) with a bootstrap CI.

    Cost per workload: samples taken, their summed time (sample_ms), the timer-clock time of warm-up and
    sampling (measure_ms: what the GPU was held for measuring) and the wall time including compilation
    and correctness checks (wall_s).

    The timer is injectable; a timer with a `select(impl, params, workload)` method is told which
    candidate the next samples belong to (tests fake per-candidate times that way).
    """
    t0 = time.perf_counter()
    cands = [_Live(impl, p, timer) for impl in impls for p in _space(impl, w, device, cfg)]
    budget_ms = None if (cfg.exhaustive or budget_s is None) else budget_s * 1e3
    search = _Search(w, device, timer, cfg, budget_ms, ceilings, cfg.seed)
    try:
        stop, rounds = search.exhaustive(cands) if cfg.exhaustive else search.race(cands)
    finally:
        for c in cands:
            c.release()
        search.inputs = None
        from ..measure.runner import _free

        _free(device)
    return _finish(search, cands, stop, rounds, cfg, eid, time.perf_counter() - t0)
