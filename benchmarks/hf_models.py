"""transformers models through the tuned dispatch (GPU, issue 17): `tune --from-model`, then `compare --model`.

Usage: python benchmarks/hf_models.py --out DIR [--seq 2048] [--budget 15s] [--impls sdpa-flash,...]

Two configs with random weights, bf16, batch 1, 2048 tokens:
  - llama: Llama-style, 4 layers, 32 query / 8 KV heads, head dim 64 (hidden 2048), vocab 32000;
  - qwen2: the same sizes, Qwen2-style with a sliding window of 1024 on layers 2-3 (max_window_layers 2),
    so both a causal and a window:1023 prefill, and decode over 2048 and 1024 keys.
For each: `attnbench tune --from-model config.json -b 1 -s SEQ --pass fwd,fwd+bwd` over the SDPA
backends (--impls; flex is left out by default: its compiles do not fit the budget), --budget per
workload; then `attnbench compare --model config.json --table TABLE --train` (host timer: the latency a
caller sees; forward and a training step, 50 samples each, interleaved) and the forward again with the
`cold` timer (device time). In process: which impl each layer runs (explain_model), and one decode step
after a prefill, attnbench against sdpa on the same cache, its logits within bf16's tolerance.

Pass: every output check within tolerance (compare's own check, and the decode step) and no row `slower`
(a Holm-corrected slowdown beyond 2% with a CI that excludes 1); `faster` where the table's winner is
faster than what sdpa-auto picks. Writes hf_models.json (the compare JSON of every run, the tune tables,
the layer map) and hf_models.md. About 3-4 minutes on an H200.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=4,
             num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=8192,
             dtype="bfloat16")


def configs():
    from transformers import LlamaConfig, Qwen2Config

    return {
        "llama": LlamaConfig(**SIZES),
        "qwen2": Qwen2Config(**SIZES, use_sliding_window=True, sliding_window=1024, max_window_layers=2),
    }


COMPARE_TIMERS = (("host", ["--train"]), ("cold", ["--timer", "cold"]))


def tune_argv(folder: str, table: str, db: str, args: argparse.Namespace) -> list[str]:
    """The arguments of `attnbench tune --from-model` for one model: its dispatch table."""
    return ["tune", "--from-model", folder, "-b", "1", "-s", str(args.seq), "--pass", "fwd,fwd+bwd", "-i", args.impls,
            "--budget", args.budget, "-o", table, "--db", db]


def compare_argv(folder: str, table: str, extra: list[str], args: argparse.Namespace) -> list[str]:
    """The arguments of `attnbench compare --model` for one model and timer."""
    return ["compare", "--model", folder, "--table", table, "-b", "1", "-s", str(args.seq), "--samples",
            str(args.samples), "--min-samples", "20", "--format", "json", *extra]


def attnbench_commands(args: argparse.Namespace) -> list[list[str]]:
    """The attnbench commands a run starts per model, with placeholder paths (tests parse them with the CLI)."""
    return [tune_argv("model", "table.json", "tune.db", args)] + [
        compare_argv("model", "table.json", extra, args) for _, extra in COMPARE_TIMERS]


def attnbench(*args: str) -> tuple[int, str]:
    """Run the CLI in a child process (as a user would); its stderr (progress, errors) goes to ours."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "attnbench", *args], capture_output=True, text=True)
    print(f"$ attnbench {' '.join(args)}  # exit {proc.returncode}, {time.time() - t0:.0f} s\n{proc.stderr}",
          file=sys.stderr, flush=True)
    return proc.returncode, proc.stdout


def decode_check(config, table: str, seq: int) -> dict:
    """Prefill SEQ-1 tokens with sdpa into a cache, then one token with each impl on copies of that cache."""
    import copy

    import torch

    from attnbench.integrations.hf_compare import build_models
    from attnbench.integrations.transformers import explain_model, register
    from attnbench.measure.correctness import rel_error, tolerance

    register(table)
    base, cand = build_models(config, "bf16", "cuda")
    ids = torch.randint(0, config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.inference_mode():
        pre = base(input_ids=ids[:, :-1], use_cache=True)
        cache = pre.past_key_values
        want = base(input_ids=ids[:, -1:], past_key_values=copy.deepcopy(cache)).logits
        got = cand(input_ids=ids[:, -1:], past_key_values=copy.deepcopy(cache)).logits
    err = rel_error(got, want.double())
    layers = [d.line() for d in explain_model(cand, 1, seq)]
    del base, cand, cache, pre
    torch.cuda.empty_cache()
    return {"rel_err": err, "tolerance": tolerance("bf16"), "ok": err <= tolerance("bf16"), "layers": layers}


def rows_of(data: dict, model: str, timer: str) -> list[dict]:
    out = []
    for r in data.get("rows", []):
        out.append({"model": model, "timer": timer, "case": r["label"].split(" · ")[-1],
                    "attnbench_ms": r["a_median_ms"], "sdpa_ms": r["b_median_ms"], "speedup": r["speedup"],
                    "ci": r["speedup_ci"], "verdict": r["verdict"]})
    for e in data.get("excluded", []):
        out.append({"model": model, "timer": timer, "case": e["label"].split(" · ")[-1], "verdict": "excluded",
                    "reason": e["reason"]})
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line, built without running anything (tests/test_gpu_check.py parses gpu_check.sh's flags)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--budget", default="15s", help="tune's racing budget per workload")
    ap.add_argument("--impls", default="sdpa-flash,sdpa-cudnn,sdpa-efficient")
    ap.add_argument("--samples", type=int, default=50)
    return ap


def main() -> int:
    args = build_parser().parse_args()
    import torch

    if not torch.cuda.is_available():
        print("hf_models: needs a CUDA GPU")
        return 2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hf_models-"))
    db = str(work / "tune.db")
    results: dict = {"seq": args.seq, "impls": args.impls, "budget": args.budget, "models": {}}
    rows, failures = [], []
    for name, cfg in configs().items():
        folder = work / name
        cfg.save_pretrained(folder)
        table = str(work / f"{name}-table.json")
        res: dict = {"config": cfg.to_dict()}
        rc, text = attnbench(*tune_argv(str(folder), table, db, args))
        res["tune_exit"] = rc
        if rc != 0 or not Path(table).exists():
            failures.append(f"{name}: tune exited {rc}")
            results["models"][name] = res
            continue
        res["table"] = json.loads(Path(table).read_text())
        for timer, extra in COMPARE_TIMERS:
            rc, text = attnbench(*compare_argv(str(folder), table, extra, args))
            if rc != 0:
                failures.append(f"{name}: compare ({timer}) exited {rc}")
                continue
            data = json.loads(text)
            res[f"compare_{timer}"] = data
            rows += rows_of(data, name, timer)
        try:
            res["decode"] = decode_check(cfg, table, args.seq)
            if not res["decode"]["ok"]:
                failures.append(f"{name}: decode step relative error {res['decode']['rel_err']:.3g}")
        except Exception as exc:  # recorded; the other model still runs
            res["decode"] = {"error": f"{type(exc).__name__}: {exc}"}
            failures.append(f"{name}: decode check raised {type(exc).__name__}")
        results["models"][name] = res
    for r in rows:
        if r["verdict"] in ("slower", "excluded"):
            failures.append(f"{r['model']} {r['case']} ({r['timer']}): {r['verdict']} {r.get('reason', '')}".strip())
    lines = [f"## transformers models through attnbench (bf16, B1 S{args.seq}, tune budget {args.budget}/workload)",
             "", "| model | timer | case | attnbench ms | sdpa ms | speedup [95% CI] | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["verdict"] == "excluded":
            lines.append(f"| {r['model']} | {r['timer']} | {r['case']} | | | | excluded: {r['reason']} |")
        else:
            lines.append(f"| {r['model']} | {r['timer']} | {r['case']} | {r['attnbench_ms']:.4g} | "
                         f"{r['sdpa_ms']:.4g} | {r['speedup']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                         f"{r['verdict']} |")
    for name, res in results["models"].items():
        d = res.get("decode", {})
        if "rel_err" in d:
            lines.append(f"\n{name}: decode step logits relative error {d['rel_err']:.3g} "
                         f"(tolerance {d['tolerance']:g})")
            lines += [f"- {line}" for line in d["layers"]]
    verdict = "PASS" if not failures else "FAIL: " + "; ".join(failures)
    lines += ["", f"hf_models: {verdict}"]
    text = "\n".join(lines)
    print(text)
    results["rows"], results["failures"] = rows, failures
    (out / "hf_models.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "hf_models.md").write_text(text + "\n")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
