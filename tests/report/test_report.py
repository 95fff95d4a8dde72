from attnbench.report import tables as report
from attnbench.analysis.roofline import ceilings_for
from attnbench.store import Measurement
from attnbench.analysis.metrics import assess
from attnbench.measure.runner import annotate
from attnbench.spec import Workload
from attnbench.store import Store
from attnbench.impls.sdpa import _reasons

H100 = {"device_kind": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "cuda": "13.0"}
SMALL = Workload(batch=32, q_heads=8, kv_heads=8, q_len=128, kv_len=128, head_dim=64, dtype="fp16")
BIG = Workload(batch=4, q_heads=16, kv_heads=16, q_len=8192, kv_len=8192, head_dim=128, dtype="bf16")


def meas(w, ms, impl="sdpa-cudnn", host=None, status="ok", peak=None):
    n = 20
    return Measurement(workload=w, impl=impl, status=status, samples_ms=(ms,) * n if status == "ok" else (),
                       host_ms=(host,) * n if host else (), timer="cold", device="cuda", env_id="h100",
                       reason="" if status == "ok" else "why", peak_mem_mb=peak)


def test_assess_places_measurements_on_the_roofline():
    c = ceilings_for(H100, {"device": "cuda", "gpu_name": H100["gpu_name"], "tflops": {"bf16": 793.0},
                            "gbps": 3000.0})
    big = assess(BIG, 3.58, 0.05, c)  # FIELD-NOTES: cuDNN 614 TFLOP/s
    assert big["regime"] == "compute-bound" and big["plausibility"] == "ok"
    assert 75 < big["pct_peak"] < 80 and big["peak_source"] == "measured"
    # A warm-cache small kernel "faster than memory": flagged, with the likely cause.
    small = assess(SMALL, 0.005, None, c)
    assert small["plausibility"] == "implausible" and "cache-resident" in small["plausibility_reason"]
    assert small["pct_bandwidth"] > 100
    host = assess(SMALL, 0.014, 0.055, c)
    assert host["regime"] == "host-bound"


def test_markdown_shows_peak_regime_and_flags(tmp_path):
    with Store(tmp_path / "r.db") as s:
        s.add_environment("h100", H100)
        rid = s.start_run("h100", {"policy": {"max_samples": 20}})
        c = report.run_ceilings(s, "h100")
        for m in (meas(BIG, 3.58, peak=1536.4), meas(SMALL, 0.005, impl="warm-kernel"), meas(SMALL, 0.1, impl="nope", status="unsupported")):
            s.add(rid, annotate(m, c))
        s.finish_run(rid)
        text = report.markdown(s, rid)
        stored = {m.impl: m for m in s.measurements(rid)}
    assert stored["warm-kernel"].extra["plausibility"] == "implausible"
    assert stored["sdpa-cudnn"].extra["regime"] == "compute-bound"
    lines = {ln.split("|")[2].strip(): ln for ln in text.splitlines() if ln.startswith("| B")}
    assert "compute-bound" in lines["sdpa-cudnn"] and "% (" in lines["sdpa-cudnn"]
    assert "IMPLAUSIBLE" in lines["warm-kernel"]
    assert "peak 1536 MB" in lines["sdpa-cudnn"] and "Peak memory:" in text
    assert "| unsupported |" in text and "why" in text
    # Methods names each dtype's ceiling and where it came from (no measured ceilings stored here).
    assert "Ceilings: bf16 989 TFLOP/s (datasheet), fp16 989 TFLOP/s (datasheet); memory 3350 GB/s" in text


def test_json_report_carries_the_derived_summary(tmp_path):
    with Store(tmp_path / "r.db") as s:
        s.add_environment("h100", H100)
        rid = s.start_run("h100", {})
        s.add(rid, meas(BIG, 3.58))
        data = report.json_report(s, rid)
    (m,) = data["measurements"]
    assert m["summary"]["median_ms"] == 3.58 and m["summary"]["roofline"]["regime"] == "compute-bound"
    assert m["samples_ms"] == [3.58] * 20


def test_torch_backend_reasons_are_cleaned():
    text = _reasons([
        "Memory efficient kernel not used because: (Triggered internally at /a/sdp_utils.cpp:986.)",
        "Both fused kernels require query, key and value to have the same num_heads. (Triggered internally at x.h:1.)",
        "Flash attention has been runtime disabled. (Triggered internally at y.h:2.)",
    ])
    assert text == "Both fused kernels require query, key and value to have the same num_heads."
