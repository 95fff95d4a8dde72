#!/usr/bin/env bash
# Every GPU-side check in one call. Usage: scripts/gpu_check.sh [section ...]
# Sections: env, tests, run, shifts, warm, flag, correctness, executor, workloads, adapters, triton, hf, benchmarks
# (= timer, ncu, tune, dispatch, gate, compare, aa), all (default). `all` takes longer than one 10-minute device
# call: split it.
# `adapters` installs .whl/nvidia_cudnn_frontend-*.whl when present (into /tmp, for its own commands only);
# `triton` takes about 8 minutes alone.
# Writes a few logs under $OUT (the device tool fetches at most 8 files): summary.md (short tables),
# pytest-gpu.log, attnbench.db (the runs, for reports made elsewhere), bench.log.
# Knobs that fit a section into one device call (tests/test_gpu_check.py dry-runs every example line of this form):
#   TESTS_TIMEOUT=500 scripts/gpu_check.sh tests                # seconds; default 900
#   TRITON_FA_ARGS=--quick scripts/gpu_check.sh triton          # one shape per suite, ~2 min
#   TRITON_FA_ARGS="--part fwd" scripts/gpu_check.sh triton     # then --part bwd: the full run over two calls
#   TRITON_FA_ARGS="--part bwd" scripts/gpu_check.sh triton
#   CORRECTNESS_ARGS="--budget-s 110" scripts/gpu_check.sh correctness
#   TUNE_MODE=all-shapes scripts/gpu_check.sh tune              # quick (default), all-shapes, full (alone)
#   TUNE_MODE=full scripts/gpu_check.sh tune
#   AA_ARGS="--reps 5" scripts/gpu_check.sh aa
#   WORKLOAD_PARTS=... (in the workloads section)
#   WORKLOAD_PARTS=masks PART_TIMEOUT=420 scripts/gpu_check.sh workloads     # stop a part's run (SIGINT) after 420 s
#   DB_FROM=.gpu-db/attnbench.db RESUME=1 WORKLOAD_PARTS=masks scripts/gpu_check.sh workloads
# PART_TIMEOUT stops each workloads part's `attnbench run` gracefully: what it measured stays in attnbench.db. To
# finish it in the next call, copy that attnbench.db into an ignored folder of the checkout (e.g. .gpu-db/), carry
# that folder, and pass it as DB_FROM (copied to $OUT/attnbench.db first) with RESUME=1 (`run --resume`).
# DRY_RUN=1: run nothing, print every command the sections would run (see below); a CPU test
# (tests/test_gpu_check.py) parses each one with its own parser before any of it costs device time.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${DRY_RUN:-0}" = 1 ]; then OUT=${OUT:-$(mktemp -d)}; else OUT=${OUT:-/tmp/attnbench-gpu}; fi
mkdir -p "$OUT"
if [ "${DRY_RUN:-0}" = 1 ]; then
  # python3 and nvidia-smi become shims found first on PATH (so also through timeout and env): each call prints
  # its command line on this script's stdout (fd 9, whatever the call's own redirections) and keeps its
  # arguments NUL-separated in $OUT/dry-run/*.args (and what `python3 -` reads, in *.stdin).
  DRY="$OUT/dry-run"
  rm -rf "$DRY"
  mkdir -p "$DRY/bin" "$OUT/json"
  cat > "$DRY/bin/python3" <<'SHIM'
#!/usr/bin/env bash
f="$(dirname "$(dirname "$0")")/$(date +%s%N)-$$"   # in time order; the pid keeps a pipeline's calls apart
printf '%s\0' "$(basename "$0")" "$@" > "$f.args"
[ "${1:-}" = - ] && cat > "$f.stdin"
line=$(printf ' %q' "$(basename "$0")" "$@")
printf '+%s\n' "$line" >&9   # one write, so the two ends of a pipeline do not interleave
exit 0
SHIM
  chmod +x "$DRY/bin/python3"
  cp "$DRY/bin/python3" "$DRY/bin/nvidia-smi"
  export PATH="$DRY/bin:$PATH"
  exec 9>&1
  echo "dry run: nothing runs; the commands, each after a +, in $DRY"
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
DB="$OUT/attnbench.db"
if [ -n "${DB_FROM:-}" ]; then   # a previous call's runs, to add to or to resume (RESUME=1)
  if [ -f "$DB_FROM" ]; then cp "$DB_FROM" "$DB"
  elif [ "${DRY_RUN:-0}" != 1 ]; then echo "DB_FROM=$DB_FROM: no such file" >&2; exit 2; fi
fi
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
  # TESTS_TIMEOUT caps the section (seconds) so a slow compile cannot take the whole device call.
  timeout "${TESTS_TIMEOUT:-900}" python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/pytest-gpu.log" 2>&1
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

if want shifts; then
  # The measurement core on a real GPU (benchmarks/measure_audit.py): every ok row of characterize has at
  # least 10 batches, few rows (0-2 of 70) are flagged SHIFT (the time changed within the measurement),
  # and no row is an error for invalid samples.
  say "## measurement audit: batches, stop reasons, level shifts (characterize)"
  step "run characterize (audit)" python3 -m attnbench run --preset characterize --db "$DB" -q --name audit
  audit_log=$(mktemp)   # not under $OUT: the device tool fetches few files; the lines that matter go to the summary
  python3 benchmarks/measure_audit.py --db "$DB" > "$audit_log" 2>&1
  cat "$audit_log" >> "$BENCH"
  tail -n 1 "$audit_log" | tee -a "$SUMMARY"
  grep -E "SHIFT|FEW" "$audit_log" | head -n 20 >> "$SUMMARY"
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

if want executor; then
  # Issue 18: characterize in-process and through --executor gpus (dask-cuda, one worker process per GPU):
  # the same rows and statuses, medians within noise (benchmarks/executor_parity.py). Then a kernel that
  # kills its worker process: its cell must be recorded as `error` after two deaths, the rest measured.
  # Needs dask, distributed and dask-cuda: carried as wheels in .whl/ (docs/methods.md, "Executors"), installed
  # here into a folder of their own when the image lacks them, on the PYTHONPATH of this section's commands only.
  say "## --executor gpus against inproc (characterize)"
  XENV=(env)
  dwhl=$(ls .whl/*.whl 2>/dev/null | grep -v nvidia_cudnn)
  if [ -n "$dwhl" ] && ! python3 -c "import distributed, dask_cuda" >>"$BENCH" 2>&1; then
    DSITE=/tmp/attnbench-dask-site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$DSITE" $dwhl >>"$BENCH" 2>&1
    say "- pip install --target $DSITE ($(echo "$dwhl" | wc -l) wheels from .whl/): exit $?"
    XENV=(env PYTHONPATH="$PYTHONPATH:$DSITE")
  fi
  if "${XENV[@]}" python3 -c "import distributed, dask_cuda" >>"$BENCH" 2>&1; then
    step "run characterize inproc" python3 -m attnbench run --preset characterize --db "$DB" -q \
      --name characterize-inproc
    step "run characterize gpus" "${XENV[@]}" python3 -m attnbench run --preset characterize --executor gpus \
      --db "$DB" -q --name characterize-gpus
    step "executor parity" python3 benchmarks/executor_parity.py --db "$DB" --out "$OUT/json"
    sed -n '/^# executor parity/,/^verdict/p' "$BENCH" | tail -n 90 >> "$SUMMARY"
    step "run crash gpus" "${XENV[@]}" python3 -m attnbench run --executor gpus -b 1 -H 8 -s 512 -d 64 \
      -i sdpa-flash,tests.fixtures.crash:crash --db "$DB" -q --name crash-gpus
    table
  else
    say "- skipped: dask, distributed or dask-cuda cannot be imported here (see $BENCH)"
  fi
fi

if want workloads; then
  # The serving and training workloads (issue 14): each preset below with every impl; rows must be ok or
  # unsupported with a reason. run_summary.py prints the counts by status, every incorrect/error/oom row
  # with its reason, the unsupported reasons, and the ok rows: memory-bound ones (decode) as GB/s over the
  # memory ceiling ("of BW"; measured by env --ceilings, run here first unless the env section ran), with
  # the timer `auto` chose. Then timer_accuracy on decode shapes: `auto` within 10% of ncu at >= 5 us.
  # Expected on an H200 (estimates: not yet run there): decode ~2 min, masks ~1.5 min, training ~2 min,
  # long-context ~1.5 min, accuracy ~3 min, ceilings ~0.5 min. More than one 10-minute device call, so split:
  #   WORKLOAD_PARTS="decode masks accuracy" scripts/gpu_check.sh workloads
  #   WORKLOAD_PARTS="training long-context" scripts/gpu_check.sh workloads
  say "## workloads (${WORKLOAD_PARTS:-decode masks training long-context accuracy})"
  want env || step "env --ceilings" python3 -m attnbench env --ceilings --db "$DB"
  for part in ${WORKLOAD_PARTS:-decode masks training long-context accuracy}; do
    case $part in
      accuracy)
        step "timer_accuracy --decode" python3 benchmarks/timer_accuracy.py --decode --no-flex --budget-s 200 \
          --out "$OUT/json"
        sed -n '/^Timer accuracy/,/^Targets/p' "$OUT/json/timer_accuracy_decode.md" >> "$SUMMARY" 2>&1
        continue ;;
      long-context) opts=(--min-samples 5 --max-time-ms 1000) ;;  # 0.2-0.8 s per call at 128k
      training) opts=(--max-time-ms 300) ;;
      *) opts=(--max-time-ms 200) ;;
    esac
    [ "${RESUME:-0}" = 1 ] && opts+=(--resume)
    limit=()
    [ -n "${PART_TIMEOUT:-}" ] && limit=(timeout -s INT -k 60 "$PART_TIMEOUT")
    step "run $part" "${limit[@]}" python3 -m attnbench run --preset "$part" --db "$DB" -q --name "$part" \
      --warmup-ms 10 "${opts[@]}"
    python3 scripts/run_summary.py "$DB" >> "$SUMMARY" 2>&1
  done
fi

if want correctness; then
  # Issue 13: the correctness gate judges each kernel against float64 with eager math in the same dtype as the
  # yardstick. benchmarks/correctness_margins.py checks every built-in impl on the presets (characterize,
  # llm-prefill) in bf16 and fp16, gradients at three shapes, and the corrupted fixtures (errors in >= 1% of
  # the rows), and prints how close the correct kernels came to the limits. Then the corrupted fixtures go
  # through `attnbench run` as a user's kernels would, beside sdpa-flash: they must be stored `incorrect`.
  say "## correctness gate: correct kernels pass, corrupted ones fail"
  step "correctness margins" python3 benchmarks/correctness_margins.py --out "$OUT/json" ${CORRECTNESS_ARGS:-}
  sed -n '/^# correctness margins/,/^correctness margins:/p' "$BENCH" | grep -v '^$' >> "$SUMMARY"
  grep -q '^correctness margins: PASS' "$BENCH" || say "**CORRECTNESS FAIL: a correct kernel was incorrect or a corrupted one passed (bench.log)**"
  fx=tests.fixtures.kernels
  step "run corrupted fixtures" python3 -m attnbench run -b 8 -H 8 -s 1024 -d 64 --causal --dtype bf16,fp16 \
    -i $fx:tail_rows_miss_keys,$fx:skips_tail_key_tile,$fx:one_head_off,sdpa-flash --db "$DB" -q --name corrupted
  python3 -m attnbench report --db "$DB" | sed -n '/^| workload/,/^$/p' | cut -c1-400 >> "$SUMMARY"
  bad=$(python3 -m attnbench report --db "$DB" --format json | python3 -c "
import json, sys
rows = json.load(sys.stdin)['measurements']
fixture = [m for m in rows if m['impl'].startswith('tests.fixtures')]
print(sum(m['status'] != 'incorrect' for m in fixture) + sum(m['status'] != 'ok' for m in rows if m['impl'] == 'sdpa-flash'))")
  [ "$bad" = 0 ] && say "- corrupted fixtures through the CLI: all incorrect, sdpa-flash ok" \
    || say "**CORRECTNESS FAIL: $bad fixture rows not incorrect (or sdpa-flash not ok) through the CLI**"
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
      [ "$b" = aa_false_verdicts ] && extra=(--gpu ${AA_ARGS:-})
      step "$b" python3 "benchmarks/$b.py" --out "$OUT/json" "${extra[@]}"
      tail -n 30 "$BENCH" | sed -n '/^|/p;/^[A-Za-z].*:/p' | tail -n 25 >> "$SUMMARY"
    fi
  fi
done
if want adapters; then
  # cudnn-fe is the one adapter whose library can reach this GPU (a wheel carried in .whl/); the others are
  # tested against fakes only (tests/impls/test_adapters*.py). Installed into a folder of its own, on the
  # PYTHONPATH of this section's commands only, so the other sections see the machine as it was.
  say "## adapters: cudnn-fe (nvidia-cudnn-frontend) against sdpa-cudnn"
  ASITE=/tmp/attnbench-adapters-site
  whl=$(ls .whl/nvidia_cudnn_frontend-*.whl 2>/dev/null | head -n 1)
  if [ -n "$whl" ]; then
    python3 -m pip install -q --no-deps --target "$ASITE" "$whl" >>"$BENCH" 2>&1
    say "- pip install --target $ASITE $(basename "$whl"): exit $?"
  else
    say "- no .whl/nvidia_cudnn_frontend-*.whl: cudnn-fe will list as not installed and its cells be unsupported"
  fi
  AENV=(env PYTHONPATH="$ASITE:$PYTHONPATH")
  "${AENV[@]}" python3 -m attnbench list 2>&1 | sed -n '/^library adapters/,/^plugins/p' | tee -a "$SUMMARY"
  for p in characterize llm-prefill; do
    step "run $p -i cudnn-fe,sdpa-cudnn" "${AENV[@]}" python3 -m attnbench run --preset $p -i cudnn-fe,sdpa-cudnn \
      --db "$DB" -q --name "adapters-$p"
    table
  done
  step "run benchmarks/adapters-cudnn.toml (decode, causal-br, window, alibi, fwd+bwd)" "${AENV[@]}" python3 -m attnbench \
    run --sweep benchmarks/adapters-cudnn.toml -i cudnn-fe,sdpa-cudnn --db "$DB" -q --name adapters-masks
  table
  for p in characterize llm-prefill; do
    say "### compare cudnn-fe vs sdpa-cudnn, $p"
    "${AENV[@]}" python3 -m attnbench compare --impl cudnn-fe --impl sdpa-cudnn --preset $p --db "$DB" \
      >>"$SUMMARY" 2>>"$BENCH"
    say "- compare $p: exit $?"
  done
  say "### tune -i cudnn-fe,sdpa-cudnn (cudnn-fe's heuristic modes and plans are its params)"
  "${AENV[@]}" python3 -m attnbench tune -i cudnn-fe,sdpa-cudnn -b 4 -H 32 --kv-heads 8 -s 2048,8192 -d 128 \
    --dtype bf16 --causal --budget 30s --db "$DB" -q >>"$SUMMARY" 2>>"$BENCH"
  say "- tune: exit $?"
fi


if want triton; then
  # Issue 16: triton-fa correct on the GPU, raced by attnbench tune, then interleaved with sdpa-flash and
  # sdpa-cudnn (forward: characterize, llm-prefill, FA grid; fwd+bwd: training-like). It stops starting new
  # steps after --deadline (470 s) so one device call holds it; its JSON is written after every step.
  say "## benchmarks/triton_fa.py (triton-fa tuned vs sdpa-flash and sdpa-cudnn)"
  step "triton_fa" python3 benchmarks/triton_fa.py --out "$OUT/json" ${TRITON_FA_ARGS:-}
  if [ -f "$OUT/json/triton_fa.md" ]; then cat "$OUT/json/triton_fa.md" >> "$SUMMARY"
  else grep -E "correct |SKIPPED|Error|error" "$BENCH" | tail -n 30 >> "$SUMMARY"; fi
fi

if want hf; then
  # transformers models (Llama-style, Qwen2-style with sliding windows; random weights, bf16, 2048 tokens)
  # through the tuned dispatch (issue 17): tune --from-model, then compare --model against sdpa. ~4 min.
  say "## benchmarks/hf_models.py"
  step "hf_models" python3 benchmarks/hf_models.py --out "$OUT/json"
  [ -f "$OUT/json/hf_models.md" ] && cat "$OUT/json/hf_models.md" >> "$SUMMARY"
fi

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
