"""triton-fa on the GPU (issue 16): correct, tuned by attnbench's racing, and compared with torch's flash (FA2)
and cuDNN backends.

Usage: python benchmarks/triton_fa.py --out DIR [--quick] [--deadline 470] [--part fwd|bwd]
       TRITON_INTERPRET=1 python benchmarks/triton_fa.py --dry-run   (the plumbing on a CPU, tiny shapes)

In one process, each step printed with a timestamp (a timeout still shows where it was), results written to
DIR/triton_fa.json after every step:
 1. correctness on the GPU for each class of config (forward pointer and TMA kernels, split-KV decode, GQA,
    q_len != kv_len, bottom-right causal and window masks, backward with a separate dQ pass and with atomics),
    against float64 attention;
 2. forward racing with `attnbench tune` (library API; sdpa-flash is the baseline candidate) over the
    param space, capped at --configs per shape, on a representative subset: characterize's B32 H8 sequence
    sweep at S 128/512/2048, llm-prefill at S 1k/4k/16k, and the FA-paper grid (B*S = 16k tokens, hidden 2048,
    so H = 2048/D; bf16; D 64/128; causal and not) at S 512/2k/16k;
 3. one interleaved run of triton-fa (tuned: each shape takes the winner of the nearest tuned S of its class)
    with sdpa-flash and sdpa-cudnn on every shape of characterize, llm-prefill and the FA grid (S 512..16k),
    compared as `attnbench compare` does (ratio of medians with a bootstrap CI, Holm-adjusted verdicts);
 4. backward on a training-like set (fwd+bwd, bf16, D 64/128, causal, B*S = 16k, S 1k/4k/16k): racing of
    the backward params, then the same interleaved comparison.
Targets (H200): forward >= sdpa-flash on every shape; >= 80% of sdpa-cudnn at D 128, S >= 2k; fwd+bwd >=
sdpa-flash. A step past the deadline is skipped and says so.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

T0 = time.perf_counter()


DEVICE = "cuda"
DRY = False  # --dry-run: on the CPU, in Triton's interpreter, every shape shrunk (checks the script, not speed)


def shrink(w):
    """--dry-run: the same kind of problem (GQA ratio, causality, pass, q_len vs kv_len) at interpreter size."""
    if not DRY:
        return w
    group = w.q_heads // w.kv_heads
    sq = 1 if w.q_len == 1 else max(8, min(48, w.q_len // 64))
    sk = max(sq, min(80, w.kv_len // 64)) if w.kv_len != w.q_len else sq
    return w.replace(batch=1, q_heads=2 * group if group > 1 else 2, kv_heads=2 if group == 1 else 1,
                     q_len=sq, kv_len=sk if w.q_len != 1 else 300, head_dim=min(w.head_dim, 32))


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fa_grid(seqs, dims=(64, 128), causal=(False, True), direction="fwd"):
    from attnbench.spec import Workload

    return [Workload(16384 // s, 2048 // d, 2048 // d, s, s, d, "bf16", c, direction)
            for d in dims for c in causal for s in seqs]


def shapes(quick: bool):
    """(tune subset, compare set) of forward workloads, each tagged with its suite."""
    from attnbench.spec import load_preset

    char = list(load_preset("characterize").workloads)
    llm = list(load_preset("llm-prefill").workloads)
    grid = fa_grid((512, 1024, 2048, 4096, 8192, 16384))
    char_t = [w for w in char if w.batch == 32 and w.q_heads == 8 and w.q_len in (128, 512, 2048)]
    llm_t = [w for w in llm if w.q_len in (1024, 4096, 16384)]
    grid_t = [w for w in grid if w.q_len in (512, 2048, 16384)]
    if quick:
        char, llm, grid = char_t[1:2], llm_t[1:2], [w for w in grid if w.q_len == 4096]
        char_t, llm_t, grid_t = char, llm, grid
    tune = [("characterize", w) for w in char_t] + [("llm-prefill", w) for w in llm_t] + [("fa-grid", w) for w in grid_t]
    comp = [("characterize", w) for w in char] + [("llm-prefill", w) for w in llm] + [("fa-grid", w) for w in grid]
    return _unique(tune), _unique(comp)


def _unique(named):
    seen, out = set(), []
    for suite, w in named:
        w = shrink(w)
        if w.key not in seen:
            seen.add(w.key)
            out.append((suite, w))
    return out


def training(quick: bool):
    seqs = (4096,) if quick else (1024, 4096, 16384)
    return _unique([("training", w) for w in fa_grid(seqs, causal=(True,), direction="fwd+bwd")])


# -- 1. correctness ---------------------------------------------------------------------------------

def correctness(device: str) -> list[dict]:
    import torch

    from attnbench.impls.triton_fa import ops
    from attnbench.impls.triton_fa.config import default_config, mask_spec
    from attnbench.impls.triton_fa.impl import TritonFAImpl
    from attnbench.measure.correctness import check
    from attnbench.spec import Workload

    impl = TritonFAImpl()
    rows = []
    cases = [
        ("fwd d64 fp16 full", Workload(4, 8, 8, 1000, 1000, 64, "fp16"), {}),
        ("fwd d128 bf16 causal", Workload(2, 16, 16, 2048, 2048, 128, "bf16", True), {}),
        ("fwd d128 bf16 causal tma", Workload(2, 16, 16, 2048, 2048, 128, "bf16", True), {"tma": True}),
        ("fwd d64 fp16 full tma", Workload(4, 8, 8, 1000, 1000, 64, "fp16"), {"tma": True}),
        ("fwd gqa 32/8 causal q<kv", Workload(2, 32, 8, 1000, 1500, 128, "bf16", True), {}),
        ("fwd gqa 32/8 full q>kv", Workload(2, 32, 8, 1500, 700, 128, "bf16"), {}),
        ("fwd decode split-kv", Workload(16, 32, 8, 1, 4096, 128, "bf16", True), {}),
        ("fwd decode q16 split-kv", Workload(4, 32, 8, 16, 4096, 128, "bf16", True), {"split_kv": 8}),
        ("fwd decode row kernel", Workload(16, 32, 8, 1, 4096, 128, "bf16", True),
         {"split_kv": 0, "BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4}),
        ("fwd d256 bf16 full", Workload(2, 8, 8, 1024, 1024, 256, "bf16"), {}),
        ("fwd+bwd d64 causal", Workload(4, 8, 8, 1024, 1024, 64, "bf16", True, "fwd+bwd"), {}),
        ("fwd+bwd d128 causal", Workload(2, 16, 16, 2048, 2048, 128, "bf16", True, "fwd+bwd"), {}),
        ("fwd+bwd d128 atomic dq", Workload(2, 16, 16, 2048, 2048, 128, "bf16", True, "fwd+bwd"),
         {"dq_atomic": True}),
        ("fwd+bwd gqa 32/8 full", Workload(1, 32, 8, 1000, 1200, 128, "fp16", False, "fwd+bwd"), {}),
    ]
    for name, w, params in cases:
        w = shrink(w)
        t = time.perf_counter()
        try:
            res = check(impl.build(w, device, params), w, device, seed=7)
            row = {"case": name, "workload": w.label, "params": params, "ok": res.ok, "rel_err": res.rel_err,
                   "details": res.details, "reason": res.reason}
        except Exception as exc:
            row = {"case": name, "workload": w.label, "params": params, "ok": False, "reason": f"{type(exc).__name__}: {exc}"}
        row["seconds"] = time.perf_counter() - t
        rows.append(row)
        log(f"correct {name}: {'ok' if row['ok'] else 'FAIL'} {row.get('rel_err')} {row.get('reason', '')}")
    # Masks the Workload cannot name yet: against a float64 reference with an explicit mask, with gradients.
    for mask, sq, sk in (("causal-br", 700, 2000), ("causal-br", 2000, 700), ("window:256", 1500, 2000)):
        if DRY:
            mask, sq, sk = mask.replace("256", "12"), sq // 40, sk // 40
        t = time.perf_counter()
        spec = mask_spec(mask, sq, sk)
        gen = torch.Generator(device=device).manual_seed(11)
        d = 32 if DRY else 128
        q = torch.randn(2, 16, sq, d, device=device, generator=gen).to(torch.bfloat16)
        k, v = (torch.randn(2, 4, sk, d, device=device, generator=gen).to(torch.bfloat16) for _ in range(2))
        cfg = default_config(Workload(2, 16, 4, sq, sk, d, "bf16", True, "fwd+bwd"))
        if DRY:
            cfg = cfg.with_params({"BLOCK_M": 16, "BLOCK_N": 16, "BWD_BLOCK_M": 16, "BWD_BLOCK_N": 16,
                                   "DQ_BLOCK_M": 16, "DQ_BLOCK_N": 16})
        errs = {}
        try:
            qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
            out = ops.attention(qg, kg, vg, spec, cfg)
            g = torch.randn(out.shape, device=device, generator=gen).to(out.dtype)
            got = torch.autograd.grad(out, (qg, kg, vg), g)
            q6, k6, v6 = (x.double().requires_grad_() for x in (q[:1, :4], k[:1, :1], v[:1, :1]))
            ref = _masked_reference(q6, k6, v6, spec)
            want = torch.autograd.grad(ref, (q6, k6, v6), g[:1, :4].double())
            errs["out"] = _rel(out[:1, :4], ref)
            for nm, a, b in zip(("dq", "dk", "dv"), (got[0][:1, :4], got[1][:1, :1], got[2][:1, :1]), want):
                errs[nm] = _rel(a, b)
            ok = errs["out"] < 3e-2 and max(errs[n] for n in ("dq", "dk", "dv")) < 1.2e-1
            row = {"case": f"{mask} {sq}x{sk} gqa 16/4 fwd+bwd", "ok": ok, "details": errs, "params": {}}
        except Exception as exc:
            row = {"case": f"{mask} {sq}x{sk}", "ok": False, "reason": f"{type(exc).__name__}: {exc}"}
        row["seconds"] = time.perf_counter() - t
        rows.append(row)
        log(f"correct {row['case']}: {'ok' if row['ok'] else 'FAIL'} {errs}")
    return rows


def _masked_reference(q, k, v, spec):
    import torch

    k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    i = torch.arange(q.shape[2], device=q.device)[:, None]
    j = torch.arange(k.shape[2], device=q.device)[None, :]
    keep = j <= i + spec.shift if spec.causal else torch.ones_like(i + j, dtype=torch.bool)
    if spec.window is not None:
        keep = keep & (j >= i + spec.shift - spec.window)
    return torch.softmax(s.masked_fill(~keep, float("-inf")), -1).nan_to_num(0.0) @ v


def _rel(a, b) -> float:
    import torch

    return float(torch.linalg.vector_norm(a.double() - b.detach()) / torch.linalg.vector_norm(b.detach()))


# -- 2. racing --------------------------------------------------------------------------------------

def _class_key(w):
    return (w.head_dim, w.dtype, w.causal, w.q_heads, w.kv_heads, w.direction)


def race(named, configs: int, budget_s: float, baseline: str, store, deadline: float) -> dict:
    """attnbench tune per class of workloads (one param list per class); returns key -> result summary. A class
    that would start after `deadline` (seconds since start) is skipped: its shapes keep the default config."""
    from attnbench.impls.triton_fa.config import param_space
    from attnbench.tune.tuner import TuneConfig, tune

    classes: dict = {}
    for _, w in named:
        classes.setdefault(_class_key(w), []).append(w)
    out = {}
    for key, ws in classes.items():
        if time.perf_counter() - T0 > deadline:
            log(f"SKIPPED tune class {key}: past the deadline; its shapes use the default config")
            for w in ws:
                out[w.key] = {"workload": w.label, "best_params": None, "skipped": "deadline"}
            continue
        space = param_space(ws[0], limit=configs)
        cfg = TuneConfig(workloads=ws, impls=["triton-fa"], device=DEVICE, params={"triton-fa": space},
                         budget_s=budget_s, baseline=baseline, force=True)
        log(f"tune class D{key[0]} {key[1]} {'causal' if key[2] else 'full'} H{key[3]}/{key[4]} {key[5]}: "
            f"{len(ws)} shapes x {len(space)} configs")
        result = tune(cfg, store, progress=lambda line: log(f"  {line}"))
        for r in result.workloads:
            mine = [c for c in r.candidates if c.impl == "triton-fa" and c.timed]
            best = min(mine, key=lambda c: c.median_ms) if mine else None
            rejected = [f"{c.label}: {c.status} ({c.reason})" for c in r.candidates if not c.timed and c.status != "ok"]
            out[r.workload.key] = {
                "workload": r.workload.label, "best_params": best.params if best else None,
                "best_median_ms": best.median_ms if best else None, "chosen": r.chosen, "speedup": r.speedup,
                "stop": r.stop_reason, "rounds": r.rounds, "cost": r.cost, "rejected": rejected,
                "candidates": {c.label: {"status": c.status, "median_ms": c.median_ms, "dropped": c.dropped_round,
                                         "compile_ms": c.compile_ms, "rel_err": c.rel_err} for c in r.candidates}}
    return out


def nearest_params(w, tuned: dict, tuned_workloads) -> tuple[dict, str]:
    """The tuned params of the nearest tuned shape of the same class (sequence, then batch, in log2)."""
    same = [t for t in tuned_workloads if _class_key(t) == _class_key(w) and tuned.get(t.key, {}).get("best_params")
            is not None]
    if not same:
        return {}, "default (no tuned shape of this class)"
    best = min(same, key=lambda t: (abs(math.log2(t.q_len / w.q_len)), abs(math.log2(t.batch / w.batch))))
    return dict(tuned[best.key]["best_params"]), best.label


# -- 3. the interleaved comparison -----------------------------------------------------------------

def tuned_impl(table: dict):
    """triton-fa under its own name, taking each workload's params from `table` (workload key -> params)."""
    from attnbench.impls.triton_fa.impl import TritonFAImpl

    class Tuned(TritonFAImpl):
        def build(self, workload, device, params):
            return super().build(workload, device, {**table.get(workload.key, {}), **(params or {})})

    return Tuned()


def compare(named, table: dict, store, policy, against=("sdpa-flash", "sdpa-cudnn")) -> list[dict]:
    from attnbench.compare.comparison import compare_measurements
    from attnbench.measure.runner import RunConfig, run

    ws = [w for _, w in named]
    suite = {w.key: s for s, w in named}
    def seen(m) -> None:
        from attnbench.analysis.stats import median

        what = f"{median(m.samples_ms):.4g} ms" if m.samples_ms else f"{m.status}: {m.reason[:80]}"
        log(f"  {m.workload.label} {m.impl}: {what}")

    rid = run(RunConfig(workloads=ws, impls=[tuned_impl(table), *against], device=DEVICE,
                        timer="host" if DRY else "cold", policy=policy,
                        interleave=True, name="triton-fa vs " + ", ".join(against)), store, progress=False,
              on_measurement=seen)
    ms = store.measurements(rid)
    mine = [m for m in ms if m.impl == "triton-fa"]
    rows = {w.key: {"suite": suite[w.key], "workload": w.label, "params": table.get(w.key, {})} for w in ws}
    for m in ms:
        r = rows[m.workload.key]
        r[f"{m.impl}_status"] = m.status
        if m.status != "ok":
            r[f"{m.impl}_reason"] = m.reason
    for other in against:
        theirs = [m for m in ms if m.impl == other]
        try:
            c = compare_measurements(mine, theirs, a_name="triton-fa", b_name=other)
        except Exception as exc:  # e.g. nothing paired: every cell of a side failed (their reasons are kept)
            log(f"compare with {other}: {type(exc).__name__}: {exc}")
            continue
        for row in c.rows:
            r = rows[row.key]
            r["triton-fa_tflops"] = row.a_tflops
            r[f"{other}_tflops"] = row.b_tflops
            r[f"vs_{other}"] = {"speedup": row.speedup, "ci": list(row.speedup_ci), "verdict": row.verdict,
                                "p_holm": row.p_holm, "flags": list(row.flags),
                                "medians_ms": [row.a_median_ms, row.b_median_ms]}
    return [rows[w.key] for w in ws]


def table_md(rows: list[dict], against=("sdpa-flash", "sdpa-cudnn")) -> str:
    head = "| suite | shape | triton-fa TF/s | " + " | ".join(f"{a} TF/s" for a in against) + " | " + \
        " | ".join(f"vs {a}: speedup [95% CI] verdict" for a in against) + " | config |"
    lines = [head, "|" + "---|" * (4 + 2 * len(against))]
    for r in rows:
        cells = [r["suite"], r["workload"], _f(r.get("triton-fa_tflops"))]
        cells += [_f(r.get(f"{a}_tflops")) for a in against]
        for a in against:
            v = r.get(f"vs_{a}")
            cells.append(f"{v['speedup']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}] {v['verdict']}" if v else
                         f"n/a ({r.get(f'{a}_status', '?')}: {r.get(f'{a}_reason', r.get('triton-fa_reason', ''))[:60]})")
        cells.append(",".join(f"{k}={v}" for k, v in sorted(r["params"].items())) or "default")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _f(x) -> str:
    if not isinstance(x, (int, float)):
        return "n/a"
    return f"{x:.0f}" if x >= 10 else f"{x:.3g}"


def verdicts(rows: list[dict], bwd: bool) -> list[str]:
    out = []
    flash = [r.get("vs_sdpa-flash") for r in rows]
    met = sum(1 for v in flash if v and v["verdict"] in ("faster", "same"))
    faster = sum(1 for v in flash if v and v["verdict"] == "faster")
    out.append(f"{'fwd+bwd' if bwd else 'forward'} >= sdpa-flash: {met}/{len(rows)} shapes ({faster} faster, "
               f"{sum(1 for v in flash if v and v['verdict'] == 'slower')} slower, "
               f"{sum(1 for v in flash if not v)} not compared): target {'MET' if met == len(rows) else 'NOT met'}")
    if not bwd:
        big = [r for r in rows if "D128" in r["workload"] and int(r["workload"].split(" S")[1].split()[0].split("x")[0]) >= 2048
               and r.get("vs_sdpa-cudnn")]
        ok = sum(1 for r in big if r["vs_sdpa-cudnn"]["speedup"] >= 0.8)
        ratios = [r["vs_sdpa-cudnn"]["speedup"] for r in big]
        span = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "n/a"
        verdict = "no such shape compared" if not big else "MET" if ok == len(big) else "NOT met"
        out.append(f">= 80% of sdpa-cudnn at D128, S >= 2k: {ok}/{len(big)} shapes (triton-fa / cudnn {span}): "
                   f"target {verdict}")
    return out


# -- main -------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The command line, built without running anything (tests/test_gpu_check.py parses gpu_check.sh's flags)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="folder for triton_fa.json and triton_fa.md")
    ap.add_argument("--quick", action="store_true", help="one shape per suite (a smoke run, ~1-2 min)")
    ap.add_argument("--configs", type=int, default=8, help="configs raced per shape (param_space's first N)")
    ap.add_argument("--budget", type=float, default=5.0, help="racing budget per shape, seconds")
    ap.add_argument("--deadline", type=float, default=470.0,
                    help="skip steps that start after this many seconds (forward racing classes after 45%% of it, "
                         "backward racing classes after 85%%)")
    ap.add_argument("--dry-run", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny shapes: the plumbing only")
    ap.add_argument("--part", choices=("all", "fwd", "bwd"), default="all",
                    help="the forward steps (2, 3) or the backward ones (4) only, to split the work over two calls")
    return ap


def main() -> None:
    args = build_parser().parse_args()
    global DEVICE, DRY
    if args.dry_run:
        DEVICE, DRY = "cpu", True

    import torch

    if not DRY and not torch.cuda.is_available():   # before importing triton, which a CPU machine may lack
        raise SystemExit("triton_fa: needs a CUDA GPU (or --dry-run with TRITON_INTERPRET=1)")
    import triton

    from attnbench.measure.timing import TimingPolicy
    from attnbench.store import Store
    out_dir = Path(args.out) if args.out else None
    data: dict = {"gpu": "cpu (dry run)" if DRY else torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                  "cuda": torch.version.cuda, "args": vars(args), "skipped": []}

    def save() -> None:
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "triton_fa.json").write_text(json.dumps(data, indent=1, default=str))

    def due(step: str) -> bool:
        if time.perf_counter() - T0 > args.deadline:
            data["skipped"].append(step)
            log(f"SKIPPED {step}: past the {args.deadline:.0f} s deadline")
            save()
            return False
        return True

    log(f"triton_fa on {data['gpu']} (torch {torch.__version__}, triton {triton.__version__})")
    data["correctness"] = correctness(DEVICE)
    save()
    policy = TimingPolicy(warmup_ms=25, min_samples=10, max_samples=2000, max_time_ms=400, target_precision=0.01)
    if DRY:
        policy = TimingPolicy(warmup_ms=0, min_samples=3, max_samples=3)
    tune_set, comp_set = shapes(args.quick)
    md = [f"# triton-fa on {data['gpu']} (torch {torch.__version__}, triton {triton.__version__})", ""]
    bad = [r["case"] for r in data["correctness"] if not r["ok"]]
    md.append(f"correctness: {len(data['correctness']) - len(bad)}/{len(data['correctness'])} cases ok"
              + (f"; FAILED: {', '.join(bad)}" if bad else ""))
    with Store(":memory:") as store:
        if args.part != "bwd" and due("forward racing"):
            data["tune_fwd"] = race(tune_set, args.configs, args.budget, "sdpa-flash", store, args.deadline * 0.45)
            save()
        tuned_ws = [w for _, w in tune_set]
        if args.part != "bwd" and due("forward comparison"):
            table = {}
            for _, w in comp_set:
                table[w.key], data.setdefault("tuned_from", {})[w.label] = nearest_params(
                    w, data.get("tune_fwd", {}), tuned_ws)
            log(f"compare: {len(comp_set)} shapes, triton-fa (tuned) with sdpa-flash and sdpa-cudnn, interleaved")
            data["compare_fwd"] = compare(comp_set, table, store, policy)
            save()
            md += ["", "## forward (cold timer; speedup = other's median / triton-fa's)", "",
                   table_md(data["compare_fwd"]), ""] + verdicts(data["compare_fwd"], bwd=False)
        train = training(args.quick) if args.part != "fwd" else []
        if train and due("backward racing"):
            data["tune_bwd"] = race(train, max(4, args.configs - 2), args.budget, "sdpa-flash", store,
                                    args.deadline * 0.85)
            save()
        if train and due("backward comparison"):
            table = {w.key: (data.get("tune_bwd", {}).get(w.key, {}).get("best_params") or {}) for _, w in train}
            log(f"compare fwd+bwd: {len(train)} shapes")
            data["compare_bwd"] = compare(train, table, store, policy)
            save()
            md += ["", "## fwd+bwd, training-like (bf16, causal, B*S = 16k)", "", table_md(data["compare_bwd"]), ""]
            md += verdicts(data["compare_bwd"], bwd=True)
    if data["skipped"]:
        md.append(f"skipped (deadline): {', '.join(data['skipped'])}")
    md.append(f"total time: {time.perf_counter() - T0:.0f} s")
    text = "\n".join(md)
    print(text, flush=True)
    data["markdown"] = text
    save()
    if out_dir:
        (out_dir / "triton_fa.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
