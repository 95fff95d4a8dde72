"""Row formatting of the Markdown table: memory-bound rows lead with bandwidth."""

from attnbench.analysis import metrics
from attnbench.measure.runner import annotate
from attnbench.report import html as htmlreport
from attnbench.report import tables as report
from attnbench.spec import Workload
from attnbench.store import Measurement, Store

H200 = {"device_kind": "cuda", "gpu_name": "NVIDIA H200", "torch": "2.11.0", "cuda": "13.0"}
DECODE = Workload(batch=32, q_heads=32, kv_heads=8, q_len=1, kv_len=8192, head_dim=128, dtype="bf16",
                  mask="causal-br")
PREFILL = Workload(batch=1, q_heads=32, kv_heads=8, q_len=16384, kv_len=16384, head_dim=128, dtype="bf16",
                   causal=True)


def test_memory_bound_rows_show_percent_of_bandwidth_and_compute_bound_rows_percent_of_peak(tmp_path):
    with Store(tmp_path / "r.db") as s:
        s.add_environment("h200", H200)
        s.put("ceilings", "h200", {"device": "cuda", "gpu_name": "NVIDIA H200", "tflops": {"bf16": 794.0},
                                   "gbps": 4263.0})
        rid = s.start_run("h200", {})
        c = report.run_ceilings(s, "h200")
        for w, ms in ((DECODE, 0.5), (PREFILL, 3.3)):
            s.add(rid, annotate(Measurement(workload=w, impl="sdpa-cudnn", status="ok", samples_ms=(ms,) * 20,
                                            timer="graph", device="cuda", env_id="h200"), c))
        text = report.markdown(s, rid)
    rows = [ln for ln in text.splitlines() if ln.startswith("| B")]
    gbps = metrics.gb_per_s(DECODE, 0.5)
    assert 2000 < gbps < 2300
    assert "memory-bound" in rows[0] and f"| {100 * gbps / 4263:.0f}% of BW |" in rows[0]
    assert "compute-bound" in rows[1] and "% (" in rows[1] and "of BW" not in rows[1]
    assert "marked `of BW`" in text


def test_pct_text_without_ceilings_is_empty():
    assert report.pct_text({}) == ""
    assert report.pct_text({"regime": "memory-bound", "pct_bandwidth": 71.4, "pct_peak": 3.0}) == "71% of BW"
    # a host-bound row whose kernel is memory-bound (decode at a small batch) still leads with bandwidth
    assert report.pct_text({"regime": "host-bound", "bound_by": "memory-bound", "pct_bandwidth": 76.0,
                            "pct_peak": 2.0, "pct_bound": 76.0}) == "76% of BW"
    assert report.pct_text({"regime": "host-bound", "bound_by": "compute-bound", "pct_peak": 20.0,
                            "pct_bound": 20.0}) == "20% (20%)"
    assert report.pct_text({"regime": "compute-bound", "pct_peak": 80.2, "pct_bound": 81.0}) == "80% (81%)"


def test_run_summary_counts_statuses_lists_failures_and_leads_decode_with_bandwidth(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "run_summary.py"
    spec = importlib.util.spec_from_file_location("run_summary", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with Store(tmp_path / "r.db") as s:
        s.add_environment("h200", H200)
        s.put("ceilings", "h200", {"device": "cuda", "gpu_name": "NVIDIA H200", "tflops": {"bf16": 794.0},
                                   "gbps": 4263.0})
        rid = s.start_run("h200", {}, name="decode")
        c = report.run_ceilings(s, "h200")
        base = dict(workload=DECODE, timer="graph", device="cuda", env_id="h200")
        s.add(rid, annotate(Measurement(impl="sdpa-cudnn", status="ok", samples_ms=(0.5,) * 20,
                                        extra={"timer_choice": {"chose": "graph", "probe_ms": 0.0072}}, **base), c))
        s.add(rid, Measurement(impl="sdpa-flash", status="unsupported", reason="torch has no sdpa-flash kernel",
                               **base))
        s.add(rid, Measurement(impl="mine", status="incorrect", reason="relative error 0.9 > tolerance 0.03",
                               **base))
        s.finish_run(rid)
    text = mod.summary(str(tmp_path / "r.db"))
    assert text.startswith("### decode (run 1): 3 cells: 1 incorrect, 1 ok, 1 unsupported")
    assert "Memory ceiling: 4263 GB/s (measured)." in text
    assert "- INCORRECT: B32 H32/8 S1x8192 D128 bf16 causal-br · mine: relative error 0.9" in text
    assert "- unsupported (1x) sdpa-flash: torch has no sdpa-flash kernel" in text
    assert "% of BW | memory-bound | graph (auto, probe 7.2 us) |" in text


def test_header_counts_one_measurement_in_the_singular(tmp_path):
    with Store(tmp_path / "r.db") as s:
        s.add_environment("h200", H200)
        rid = s.start_run("h200", {})
        s.add(rid, Measurement(workload=DECODE, impl="sdpa-cudnn", status="ok", samples_ms=(0.5,) * 20,
                               timer="graph", device="cuda", env_id="h200"))
        one = report.markdown(s, rid)
        s.add(rid, Measurement(workload=PREFILL, impl="sdpa-cudnn", status="ok", samples_ms=(3.3,) * 20,
                               timer="graph", device="cuda", env_id="h200"))
        two = report.markdown(s, rid)
    assert "1 measurement (1 ok)." in one and "2 measurements (2 ok)." in two


H100 = {"device_kind": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "cuda": "13.0", "l2_mb": 50}
H100_CEILINGS = {"device": "cuda", "gpu_name": H100["gpu_name"], "tflops": {"bf16": 793.0}, "gbps": 3000.0}
BIG_DECODE = Workload(batch=16, q_heads=32, kv_heads=8, q_len=1, kv_len=32768, head_dim=128, dtype="bf16",
                      mask="causal-br")   # 2.1 GB of KV cache: far above any L2


def test_above_the_measured_copy_ceiling_is_marked_never_shown_plainly(tmp_path):
    """A decode row at 105% of the measured copy ceiling (plausible: it reads, a copy also writes) read as a plain
    '105% of BW', an apparent win over a measured ceiling."""
    ms = metrics.min_bytes(BIG_DECODE) / (3150.0 * 1e6)   # 3150 GB/s: 105% of the copy, 94% of the 3350 datasheet
    with Store(tmp_path / "r.db") as s:
        s.add_environment("h100", H100)
        s.put("ceilings", "h100", H100_CEILINGS)
        rid = s.start_run("h100", {})
        c = report.run_ceilings(s, "h100")
        s.add(rid, annotate(Measurement(workload=BIG_DECODE, impl="sdpa-cudnn", status="ok", samples_ms=(ms,) * 20,
                                        timer="cold", device="cuda", env_id="h100"), c))
        text = report.markdown(s, rid)
    row = next(ln for ln in text.splitlines() if ln.startswith("| B16"))
    assert "| 105% of BW (above copy; 94% of datasheet) |" in row and "IMPLAUSIBLE" not in row
    assert "memory 3000 GB/s (measured), datasheet 3350 GB/s" in text and "marked `above copy`" in text


def test_small_percentages_keep_their_digits():
    assert report.pct_text({"regime": "memory-bound", "pct_bandwidth": 0.0454}) == "0.045% of BW"
    assert report.pct_text({"regime": "compute-bound", "pct_peak": 4.56, "pct_bound": 9.96}) == "4.6% (10%)"
    assert report.fmt_pct(0.0) == "0"


def test_env_line_leaves_out_versions_not_recorded():
    line = report._env_line({"device_kind": "cuda", "gpu_name": "Mystery GPU", "torch": "2.11.0", "cuda": "13.0"})
    assert line == "Mystery GPU, torch 2.11.0, CUDA 13.0" and "None" not in line


def test_methods_of_a_run_on_several_gpus_give_each_environment_and_its_ceilings(tmp_path):
    """The Methods of a run measured on an H100 and an H200 gave the H100's environment and ceilings only, while
    the H200 rows' percentages were taken against the H200's."""
    with Store(tmp_path / "r.db") as s:
        s.add_environment("h100", H100)
        s.add_environment("h200", H200)
        s.put("ceilings", "h100", H100_CEILINGS)
        rid = s.start_run("h100", {})
        s.add(rid, Measurement(workload=PREFILL, impl="sdpa-cudnn", status="ok", samples_ms=(3.3,) * 20,
                               timer="cold", device="cuda", env_id="h100"))
        s.add(rid, Measurement(workload=DECODE, impl="sdpa-cudnn", status="ok", samples_ms=(0.5,) * 20,
                               timer="cold", device="cuda", env_id="h200"))
        text = report.markdown(s, rid)
    methods = text[text.index("## Methods"):]
    assert "- Environments (never pooled; each row names its own): NVIDIA H100 80GB HBM3 · h100 = NVIDIA H100" in methods
    assert "NVIDIA H200 · h200 = NVIDIA H200, torch 2.11.0" in methods
    ceilings = next(ln for ln in methods.splitlines() if ln.startswith("- Ceilings:"))
    assert "NVIDIA H100 80GB HBM3 · h100: bf16 793 TFLOP/s (measured)" in ceilings
    assert "NVIDIA H200 · h200: bf16 989 TFLOP/s (datasheet); memory 4800 GB/s (datasheet)" in ceilings


def test_a_run_measured_wholly_on_another_environment_is_described_by_it(tmp_path):
    """Every row came from an H200 worker, but the header, Methods and ceilings described the run's own
    environment (an H100)."""
    with Store(tmp_path / "r.db") as s:
        s.add_environment("h100", H100)
        s.add_environment("h200", H200)
        rid = s.start_run("h100", {})
        s.add(rid, Measurement(workload=PREFILL, impl="sdpa-cudnn", status="ok", samples_ms=(3.3,) * 20,
                               timer="cold", device="cuda", env_id="h200"))
        text = report.markdown(s, rid)
        page = htmlreport.render_run(s, rid)
    assert text.splitlines()[2].startswith("Device: NVIDIA H200, torch 2.11.0") and "H100" not in text
    assert "bf16 989 TFLOP/s (datasheet); memory 4800 GB/s (datasheet)" in text
    assert "H100" not in page


def test_methods_without_any_ceiling_say_what_is_not_given(tmp_path):
    """On a CPU (no ceiling known) the Methods explained % of peak, regimes and IMPLAUSIBLE flags that no row
    could carry."""
    with Store(tmp_path / "r.db") as s:
        s.add_environment("cpu", {"device_kind": "cpu", "cpu_model": "x86_64", "torch": "2.13.0"})
        rid = s.start_run("cpu", {})
        s.add(rid, Measurement(workload=PREFILL.replace(q_len=64, kv_len=64), impl="sdpa-math", status="ok",
                               samples_ms=(0.3,) * 20, timer="host", env_id="cpu"))
        text = report.markdown(s, rid)
    line = next(ln for ln in text.splitlines() if ln.startswith("- Ceilings:"))
    assert line == ("- Ceilings: compute peak unknown; memory unknown: no ceiling is known for this device, so no row "
                    "gets a % of peak, a regime or a plausibility check, and no roof is drawn. Measure them with "
                    "`attnbench env --ceilings`.")
