"""Autotuning: the fastest correct impl and params per workload, cached (the search itself: tune_search)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import UserError
from .spec import Workload
from .timing import TimingPolicy

FORMAT = "attnbench-tune"
VERSION = 1  # of the report JSON and the cached values. 1: first version.
CACHE_NAMESPACE = "tune"
REJECTED = ("unsupported", "incorrect", "oom", "error", "implausible")

# The exhaustive reference: 100 samples each after 25 ms of warm-up (the runner's defaults, fixed count).
EXHAUSTIVE_POLICY = TimingPolicy(warmup_ms=25.0, min_samples=100, max_samples=100)


@dataclass(frozen=True)
class RacingPolicy:
    first_samples: int = 10
    growth: float = 2.0
    max_samples: int = 100       # as many as the exhaustive search takes per candidate, never more
    warmup_ms: float = 5.0       # before round 1 (rounds run back to back, so clocks stay up)
    confidence: float = 0.99     # of the order-statistic median CIs that drop candidates
    margin: float = 0.01         # drop when lo(candidate) > hi(leader) * (1 + margin)
    equivalence: float = 0.01    # stop when all survivors lie within this of each other

    def __post_init__(self) -> None:
        if self.first_samples < 1 or self.max_samples < self.first_samples or self.growth <= 1:
            raise ValueError("need 1 <= first_samples <= max_samples and growth > 1")


@dataclass
class TuneConfig:
    workloads: list[Workload]
    impls: list[str] | None = None       # None: every registered impl
    device: str | None = None
    timer: str = "auto"
    params: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # impl -> params (else param_space)
    budget_s: float | None = 60.0        # per workload (racing only)
    budget_total_s: float | None = None  # for the whole sweep, shared out as it goes
    exhaustive: bool = False
    policy: TimingPolicy = EXHAUSTIVE_POLICY
    racing: RacingPolicy = field(default_factory=RacingPolicy)
    baseline: str = "sdpa-auto"
    force: bool = False
    seed: int = 0

    @property
    def mode(self) -> str:
        return "exhaustive" if self.exhaustive else "racing"


def candidate_names(impls: list[str] | None, baseline: str = "sdpa-auto") -> list[str]:
    """The impls to search: the given names (None: every registered impl), plus the baseline (its
    speedup needs it)."""
    from .impls import registry

    names = list(impls) if impls else list(registry())
    if baseline and baseline not in names:
        names.append(baseline)
    return list(dict.fromkeys(names))


def cli_impls(given: list[str] | None) -> list[str] | None:
    """The CLI's rule: no --impl, or only plugins ('module:function'), means every registered impl
    plus those plugins; any registered name given means exactly the names given."""
    from .impls import registry

    if not given:
        return None
    if all(":" in n for n in given):
        return list(dict.fromkeys(list(registry()) + list(given)))
    return list(dict.fromkeys(given))


def _space(impl, w: Workload, device: str, cfg: "TuneConfig") -> list[dict[str, Any]]:
    """The params to try: the config's for this impl, else its param_space (a failing one: defaults)."""
    if impl.name in cfg.params:
        return [dict(p) for p in cfg.params[impl.name]] or [{}]
    try:
        return [dict(p) for p in (impl.param_space(w, device) or [{}])]
    except Exception:
        return [{}]


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

def _label(impl: str, params: dict[str, Any]) -> str:
    if not params:
        return impl
    return f"{impl}[" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + "]"


@dataclass(frozen=True)
class Candidate:
    impl: str
    params: dict[str, Any]
    status: str = "ok"                  # ok or one of REJECTED
    reason: str = ""
    samples_ms: tuple[float, ...] = ()
    host_ms: tuple[float, ...] = ()
    median_ms: float | None = None
    ci_ms: tuple[float, float] | None = None   # 95% bootstrap CI of the median (stats.median_ci)
    dropped_round: int | None = None    # racing: the round after which it was dropped
    note: str = ""
    rel_err: float | None = None
    backend: str = ""
    compile_ms: float | None = None

    @property
    def label(self) -> str:
        return _label(self.impl, self.params)

    @property
    def timed(self) -> bool:
        return self.status == "ok" and bool(self.samples_ms)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["label"] = self.label
        d["ci_ms"] = list(self.ci_ms) if self.ci_ms else None
        d["samples_ms"], d["host_ms"] = list(self.samples_ms), list(self.host_ms)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Candidate":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["samples_ms"], d["host_ms"] = tuple(d.get("samples_ms", ())), tuple(d.get("host_ms", ()))
        d["ci_ms"] = tuple(d["ci_ms"]) if d.get("ci_ms") else None
        return cls(**d)


@dataclass(frozen=True)
class WorkloadResult:
    workload: Workload
    mode: str                           # racing or exhaustive
    candidates: tuple[Candidate, ...]   # ranked: timed by median, then rejected
    chosen: str | None                  # label of the chosen candidate (None: nothing passed)
    stop_reason: str                    # one-left, equivalent, sample-limit, budget, exhaustive, none-correct
    rounds: int
    cost: dict[str, float]
    speedup: dict[str, Any] | None      # {baseline, value, lo, hi}: median(baseline) / median(chosen)
    env_id: str
    notes: tuple[str, ...] = ()
    cached: bool = False

    def get(self, label: str | None) -> Candidate | None:
        return next((c for c in self.candidates if c.label == label), None)

    @property
    def winner(self) -> Candidate | None:
        return self.get(self.chosen)

    @property
    def runner_up(self) -> Candidate | None:
        return next((c for c in self.candidates if c.timed and c.label != self.chosen), None)

    def to_dict(self) -> dict[str, Any]:
        return {"workload": self.workload.to_dict(), "workload_key": self.workload.key,
                "label": self.workload.label, "mode": self.mode, "chosen": self.chosen,
                "stop_reason": self.stop_reason, "rounds": self.rounds, "cost": dict(self.cost),
                "speedup": self.speedup, "env_id": self.env_id, "notes": list(self.notes),
                "candidates": [c.to_dict() for c in self.candidates]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], cached: bool = False) -> "WorkloadResult":
        return cls(workload=Workload.from_dict(d["workload"]), mode=d["mode"],
                   candidates=tuple(Candidate.from_dict(c) for c in d["candidates"]), chosen=d.get("chosen"),
                   stop_reason=d.get("stop_reason", ""), rounds=int(d.get("rounds", 0)),
                   cost=dict(d.get("cost", {})), speedup=d.get("speedup"), env_id=d.get("env_id", ""),
                   notes=tuple(d.get("notes", ())), cached=cached)


@dataclass(frozen=True)
class TuneResult:
    env_id: str
    fingerprint: dict[str, Any]
    mode: str
    timer: str
    baseline: str
    workloads: tuple[WorkloadResult, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "env_id": self.env_id,
                "environment": _env_summary(self.fingerprint, self.env_id), "mode": self.mode,
                "timer": self.timer, "baseline": self.baseline, "settings": self.settings,
                "workloads": [w.to_dict() for w in self.workloads]}


def _env_summary(fp: dict[str, Any], eid: str) -> dict[str, Any]:
    keys = ("device_kind", "gpu_name", "sm_count", "driver", "cuda", "cudnn", "torch", "triton", "cpu_model")
    return {"env_id": eid, **{k: fp.get(k) for k in keys if k in fp}}


def cache_key(eid: str, w: Workload, labels: list[str], cfg: TuneConfig, timer_mode: str) -> str:
    """env id | workload key | hash of the candidate list and the search settings that change the answer."""
    settings = {"candidates": sorted(labels), "mode": cfg.mode, "timer": timer_mode, "baseline": cfg.baseline,
                "policy": dataclasses.asdict(cfg.policy) if cfg.exhaustive else dataclasses.asdict(cfg.racing)}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{eid}|{w.key}|{digest}"


def _ceilings(fp: dict[str, Any], store, eid: str):
    from .roofline import ceilings_for

    return ceilings_for(fp, store.get("ceilings", eid))


def tune(config: TuneConfig, store, *, timer=None, fingerprint: dict[str, Any] | None = None, ceilings=None,
         progress: Callable[[str], None] | None = None) -> TuneResult:
    """Search every workload (cached per environment, workload and candidate list unless force)."""
    from . import device as devmod
    from .impls import resolve_many
    from .runner import resolve_device
    from .timing import make_timer
    from .tune_search import search_workload  # here, not at the top: tune_search imports this module

    if not config.workloads:
        raise UserError("nothing to tune: no workloads")
    device = resolve_device(config.device)
    timer = timer or make_timer(config.timer, device)
    fp = fingerprint if fingerprint is not None else devmod.fingerprint(device)
    eid = devmod.env_id(fp)
    store.add_environment(eid, fp)
    impls = resolve_many(candidate_names(config.impls, config.baseline))
    ceil = ceilings if ceilings is not None else _ceilings(fp, store, eid)
    t_start = timer.now_ms()
    out = []
    for i, w in enumerate(config.workloads):
        labels = [_label(impl.name, p) for impl in impls for p in _space(impl, w, device, config)]
        key = cache_key(eid, w, labels, config, timer.mode)
        hit = None if config.force else store.get(CACHE_NAMESPACE, key)
        if hit is not None:
            result = WorkloadResult.from_dict(hit, cached=True)
        else:
            budget = config.budget_s
            if config.budget_total_s is not None:
                left = config.budget_total_s * 1e3 - (timer.now_ms() - t_start)
                share = max(0.0, left / 1e3 / (len(config.workloads) - i))
                budget = share if budget is None else min(budget, share)
            result = search_workload(w, impls, device, timer, config, eid, budget, ceil)
            store.put(CACHE_NAMESPACE, key, result.to_dict())
        if progress:
            progress(_progress_line(result))
        out.append(result)
    settings = {"budget_s": config.budget_s, "budget_total_s": config.budget_total_s,
                "racing": dataclasses.asdict(config.racing), "policy": dataclasses.asdict(config.policy),
                "impls": [i.name for i in impls], "device": device}
    return TuneResult(env_id=eid, fingerprint=fp, mode=config.mode, timer=timer.mode, baseline=config.baseline,
                      workloads=tuple(out), settings=settings)


def _progress_line(r: WorkloadResult) -> str:
    win = r.winner
    what = f"{win.label} {win.median_ms:.4g} ms" if win else "no correct candidate"
    src = "cached" if r.cached else f"{r.stop_reason}, {r.cost.get('wall_s', 0):.1f} s"
    return f"{r.workload.label}: {what} ({src})"


# ---------------------------------------------------------------------------------------------
# Small parsers for the CLI
# ---------------------------------------------------------------------------------------------

def parse_duration(text: str | None, what: str = "--budget") -> float | None:
    """'60s', '2m', '500ms', '1h' or a plain number of seconds -> seconds."""
    if text is None:
        return None
    t = str(text).strip().lower()
    for suffix, factor in (("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if t.endswith(suffix):
            t, scale = t[: -len(suffix)], factor
            break
    else:
        scale = 1.0
    try:
        value = float(t) * scale
    except ValueError:
        raise UserError(f"{what}: expected a duration like 60s, 2m or 500ms, got {text!r}") from None
    if value < 0 or not math.isfinite(value):
        raise UserError(f"{what} must be a non-negative duration, got {text!r}")
    return value


def parse_ms(text: str, what: str = "--latency-budget") -> float:
    """'2ms', '0.5ms', '1s' or a plain number of milliseconds -> milliseconds."""
    t = str(text).strip().lower()
    if t.endswith("ms"):
        return _positive(t[:-2], text, what)
    if t.endswith("us"):
        return _positive(t[:-2], text, what) / 1e3
    if t.endswith("s"):
        return _positive(t[:-1], text, what) * 1e3
    return _positive(t, text, what)


def _positive(t: str, text: str, what: str) -> float:
    try:
        v = float(t)
    except ValueError:
        raise UserError(f"{what}: expected a time like 2ms, got {text!r}") from None
    if not v > 0:
        raise UserError(f"{what} must be positive, got {text!r}")
    return v


def expand_ellipsis(text: str | None) -> str | None:
    """'1,2,4,...,256' -> '1,2,4,8,16,32,64,128,256' (geometric when the two values before '...' have a
    ratio, else arithmetic); lists without '...' pass through."""
    if text is None or "..." not in text:
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    i = parts.index("...")
    if i < 2 or i != len(parts) - 2:
        raise UserError(f"{text!r}: write '...' after at least two values and before the last one")
    try:
        a, b, end = int(parts[i - 2]), int(parts[i - 1]), int(parts[-1])
    except ValueError:
        raise UserError(f"{text!r}: '...' needs integers around it") from None
    seq = [int(p) for p in parts[:i]]
    if b <= a:
        raise UserError(f"{text!r}: the values before '...' must increase")
    if len(seq) >= 3 and seq[-3] > 0 and seq[-1] * seq[-3] == seq[-2] ** 2 and b % a == 0:
        geometric = True
    elif len(seq) >= 3:
        geometric = False
        if seq[-1] - seq[-2] != seq[-2] - seq[-3]:
            raise UserError(f"{text!r}: the values before '...' are neither a geometric nor an arithmetic sequence")
    else:  # two values: a whole ratio reads as geometric (1,2,...,256), else arithmetic
        geometric = a > 0 and b % a == 0
    while True:
        nxt = seq[-1] * (b // a) if geometric else seq[-1] + (b - a)
        if nxt > end:
            break
        seq.append(nxt)
    if seq[-1] != end:
        seq.append(end)
    return ",".join(str(x) for x in seq)
