"""The tuner's data model: what to search (TuneConfig, RacingPolicy), what was found (Candidate,
WorkloadResult, TuneResult), and the cache key of a search."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..measure.timing import TimingPolicy
from ..spec import Workload

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
    from ..impls import registry

    names = list(impls) if impls else list(registry())
    if baseline and baseline not in names:
        names.append(baseline)
    return list(dict.fromkeys(names))


def cli_impls(given: list[str] | None) -> list[str] | None:
    """The CLI's rule: no --impl, or only plugins ('module:function'), means every registered impl
    plus those plugins; any registered name given means exactly the names given (candidate_names then adds
    the baseline)."""
    from ..impls import registry

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
