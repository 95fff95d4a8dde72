"""Row formatting of the Markdown table: memory-bound rows lead with bandwidth."""

from attnbench.analysis import metrics
from attnbench.measure.runner import annotate
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
    assert report.pct_text({"regime": "compute-bound", "pct_peak": 80.2, "pct_bound": 81.0}) == "80% (81%)"
