"""Every benchmark run as scripts/gpu_check.sh runs it, on no CUDA device: one clear line, never a traceback."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from tests.test_gpu_check import ROOT, dry_run

# Benchmarks meant to run on the CPU too, and what each prints that shows it started and did its work (here:
# reading the store), rather than stopping for want of a GPU.
CPU = {"executor_parity": "no run named characterize-inproc, characterize-gpus",
       "measure_audit": "measure_audit: no runs in"}
TIMEOUT_S = 45


def _run(argv: list[str]) -> tuple[int | None, str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    try:
        proc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        return None, f"{exc.stdout or ''}{exc.stderr or ''}"
    return proc.returncode, proc.stdout + proc.stderr


def test_every_benchmark_stops_with_one_line_without_a_gpu(tmp_path):
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    assert set(CPU) <= {p.stem for p in scripts}
    first: dict[str, list[str]] = {}
    for argv, _ in dry_run(tmp_path, []):
        if argv[0] == "python3" and argv[1].startswith("benchmarks/"):
            first.setdefault(argv[1], argv[1:])
    argvs = [first.get(f"benchmarks/{p.name}", [f"benchmarks/{p.name}"]) for p in scripts]
    with ThreadPoolExecutor(max_workers=2) as pool:   # each imports torch; this machine has few cores
        results = list(pool.map(_run, argvs))
    failures = []
    for path, argv, (rc, text) in zip(scripts, argvs, results):
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if rc is None:
            failures.append(f"{' '.join(argv)}: still running after {TIMEOUT_S} s with no GPU")
        elif "Traceback" in text:
            failures.append(f"{' '.join(argv)}: a traceback (exit {rc}):\n{text[-1500:]}")
        elif path.stem in CPU:
            if CPU[path.stem] not in text:
                failures.append(f"{' '.join(argv)}: exit {rc}, expected {CPU[path.stem]!r}, got:\n{text[-800:]}")
        elif rc == 0 or len(lines) != 1 or not any(w in lines[0] for w in ("CUDA", "GPU")):
            failures.append(f"{' '.join(argv)}: exit {rc}, expected one line saying it needs a CUDA GPU, got "
                            f"{len(lines)} lines:\n{text[-800:]}")
    assert not failures, "\n\n".join(failures)


def test_dispatch_overhead_compares_its_interleaved_batches_as_rounds():
    """The benchmark times attention and SDPA in 10 interleaved batches; its verdict pairs them by round, as
    `compare` does for impls timed in one session (it passed bare samples, which compare took as unpaired)."""
    import importlib.util
    import random

    from attnbench.spec import Workload

    spec = importlib.util.spec_from_file_location("dispatch_overhead", ROOT / "benchmarks" / "dispatch_overhead.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = random.Random(0)
    n = bench.BATCHES * bench.PER_BATCH
    sdpa = [1.0 + rng.gauss(0, 0.003) for _ in range(n)]
    # the same speed, except that a host burst slowed two of attention's ten batches by 10%
    attn = [1.0 + rng.gauss(0, 0.003) + (0.1 if i // bench.PER_BATCH in (3, 7) else 0.0) for i in range(n)]
    row = bench.compare_samples(Workload(1, 1, 1, 16, 16, 64, "fp16"), attn, sdpa)
    assert row["pairing"] == "rounds" and row["verdict"] != "slower"


def test_measure_audit_lists_batches_stop_reasons_and_shifts(tmp_path):
    from attnbench.measure.runner import RunConfig, run
    from attnbench.measure.timing import FakeTimer, TimingPolicy
    from attnbench.spec import Workload
    from attnbench.store import Store
    from benchmarks.measure_audit import audit

    w = Workload(batch=1, q_heads=2, kv_heads=2, q_len=32, kv_len=32, head_dim=16, dtype="fp32")
    config = RunConfig(workloads=[w], impls=["sdpa-math"], device="cpu",
                       policy=TimingPolicy(warmup_ms=1.0, min_samples=10, max_samples=50))
    with Store(tmp_path / "r.db") as store:
        run(config, store, timer=FakeTimer(), progress=False)
        lines, counts = audit(store)
    assert counts == {"ok": 1, "few_batches": 0, "shifted": 0, "invalid": 0}
    assert "n=50 batches=10 fixed" in lines[0] and "timer=fake" in lines[0]
