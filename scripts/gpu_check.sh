#!/usr/bin/env bash
# Every GPU-side check in one call. Usage: scripts/gpu_check.sh [section ...]
# Sections: env, tests, run, warm, flag, benchmarks (= timer, ncu, tune, dispatch, gate, compare, aa), all (default).
# `all` takes longer than one 10-minute device call: split it, e.g. `env tests run`, then `timer`,
# then `tune dispatch gate compare`, then `aa` (A/A false verdicts of compare, issue 13: ~4-6 min).
# Writes a few logs under $OUT (the device tool fetches at most 8 files): summary.md (short tables),
# pytest-gpu.log, attnbench.db (the runs, for reports made elsewhere), bench.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/attnbench-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
DB="$OUT/attnbench.db"
SUMMARY="$OUT/summary.md"
BENCH="$OUT/bench.log"
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(all)
want() { local s; for s in "${sections[@]}"; do [ "$s" = all ] || [ "$s" = "$1" ] && return 0; done; return 1; }
say() { echo "$*" | tee -a "$SUMMARY"; }
table() { # the newest run's table and its ceilings line, into the summary
  python3 -m attnbench report --db "$DB" | sed -n '/^| workload/,/^$/p;/^- Ceilings/p' >> "$SUMMARY" 2>&1
}
step() { # step NAME CMD...: run, keep the log, note the exit code
  local name=$1; shift
  local t0=$(date +%s)
  "$@" >>"$BENCH" 2>&1
  local rc=$?
  say "- $name: exit $rc ($(( $(date +%s) - t0 )) s)"
  return 0
}

say "# gpu_check $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv,noheader | tee -a "$SUMMARY"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)" | tee -a "$SUMMARY"

if want env; then
  say "## env"
  python3 -m attnbench env --ceilings --db "$DB" 2>&1 | tee -a "$SUMMARY"
fi

if want tests; then
  say "## pytest -m gpu"
  python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/pytest-gpu.log" 2>&1
  say "- pytest gpu: exit $? ($(tail -n 1 "$OUT/pytest-gpu.log"))"
fi

if want run; then
  say "## attnbench run --preset characterize"
  step "run characterize" python3 -m attnbench run --preset characterize --db "$DB" -q --name characterize
  python3 -m attnbench report --db "$DB" >> "$SUMMARY" 2>&1
  step "sdpa-cudnn vs do_bench" python3 benchmarks/sdpa_vs_dobench.py --db "$DB" --impl sdpa-cudnn --out "$OUT/json"
  grep -A 20 "vs triton do_bench" "$BENCH" | tail -n 14 >> "$SUMMARY"
  say "## attnbench run --preset llm-prefill"
  step "run llm-prefill" python3 -m attnbench run --preset llm-prefill --db "$DB" -q --name llm-prefill
  python3 -m attnbench report --db "$DB" | head -n 45 >> "$SUMMARY" 2>&1
fi

if want warm; then
  # Small, memory-bound shapes, some with inputs that fit in L2, timed warm: a GB/s above the copy
  # ceiling must be flagged IMPLAUSIBLE (on the H100 none got there: docs/gpu-results.md). The same
  # shapes cold, for contrast.
  say "## warm-cache small shapes (beating the copy ceiling must be flagged implausible)"
  for t in warm cold; do
    step "run $t" python3 -m attnbench run -b 64,128,256 -H 8 -s 32,64,128 -d 64 -i sdpa-cudnn,sdpa-flash \
      --timer $t --db "$DB" -q --name "small-$t"
    table
  done
  # Decode-like shapes (one or a few queries over a 67-268 MB KV cache): the least work per byte.
  step "run decode warm" python3 -m attnbench run -b 16,32 -H 32 --kv-heads 8 -s 1,16 --kv-seq 1024,2048 -d 128 \
    --dtype bf16 -i sdpa-auto,sdpa-flash,sdpa-cudnn --timer warm --db "$DB" -q --name decode-warm
  table
fi

if want flag; then
  # A timer error: the plugin's work runs on its own stream, so events on the caller's stream see almost
  # none of it. The figure lands far above the copy ceiling and must be flagged, with sdpa-flash beside it.
  say "## timer error flagged (side-stream plugin)"
  step "run side-stream" python3 -m attnbench run -b 32 -H 8 -s 2048 -d 64 \
    -i tests.fixtures.kernels:side_stream,sdpa-flash --db "$DB" -q --name timer-error
  table
fi

for b in timer_accuracy timer_stability timer_cost ncu_cache_probe tune_racing dispatch_overhead gate_power compare_checks \
         aa_false_verdicts; do
  group=${b%%_*}
  if want benchmarks || want "$group"; then
    if [ -f "benchmarks/$b.py" ]; then
      say "## benchmarks/$b.py"
      extra=()
      # TUNE_MODE: quick (default, ~1 min), all-shapes (~5 min), full (25-40 min: run it alone)
      [ "$b" = tune_racing ] && [ "${TUNE_MODE:-quick}" != full ] && extra=(--"${TUNE_MODE:-quick}")
      # 10 A/A compares of sdpa-auto over characterize (target: 0 with a faster/slower row), then
      # cudnn vs flash at B32 H8 S512 D64 fp16 (must stay `faster`, CI above 1).
      [ "$b" = aa_false_verdicts ] && extra=(--gpu)
      step "$b" python3 "benchmarks/$b.py" --out "$OUT/json" "${extra[@]}"
      tail -n 30 "$BENCH" | sed -n '/^|/p;/^[A-Za-z].*:/p' | tail -n 25 >> "$SUMMARY"
    fi
  fi
done
# Small JSON results into one file (the device tool returns at most 8 files).
if [ -d "$OUT/json" ]; then
  python3 - "$OUT/json" > "$OUT/bench.json" <<'PY'
import json, pathlib, sys
out = {p.name: json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json"))}
print(json.dumps(out, indent=1))
PY
  rm -rf "$OUT/json"
fi
say "done"
