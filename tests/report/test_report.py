import dataclasses

import numpy as np
import pytest

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
    # flagged beside the figure too, not only in the note at the end of the row
    assert lines["warm-kernel"].split(" | ")[6].endswith("of BW IMPLAUSIBLE")
    assert "IMPLAUSIBLE" not in lines["sdpa-cudnn"]
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


def _bursty(w, impl, seed, **kw):
    from tests.analysis import bursty

    x, sizes = bursty.apart(np.random.default_rng(seed), batches=12, per_batch=8, base=0.1)
    return Measurement(workload=w, impl=impl, status="ok", samples_ms=tuple(x), batch_sizes=tuple(sizes),
                       timer="cold", device="cuda", env_id="h100", stop_reason="converged", **kw)


def test_ci_is_over_batches_and_methods_say_what_it_covers(tmp_path):
    from attnbench.analysis.rounds import block_median_ci
    from attnbench.analysis.stats import median_ci

    m = _bursty(SMALL, "sdpa-cudnn", 3)
    row = report.summarize(m)
    assert row.ci == block_median_ci(m.samples_ms, m.batch_sizes) and row.batches == 12
    lo, hi = median_ci(m.samples_ms)
    assert row.ci[1] - row.ci[0] > 1.5 * (hi - lo)  # bursts widen it: batches, not samples, are independent
    reps = [{"repeat": i + 1, "median_ms": v} for i, v in enumerate((0.100, 0.104, 0.101))]
    old = Measurement(workload=BIG, impl="sdpa-flash", status="ok", samples_ms=(3.0, 3.1, 2.9) * 10, timer="cold",
                      device="cuda", env_id="h100", stop_reason="fixed")
    with Store(tmp_path / "r.db") as s:
        s.add_environment("h100", H100)
        rid = s.start_run("h100", {})
        s.add(rid, _bursty(SMALL, "sdpa-cudnn", 3, extra={"repeats": reps, "precision": 0.02}))
        s.add(rid, old)
        text = report.markdown(s, rid)
        data = report.json_report(s, rid)
    assert "n=96 in 12 batches converged ±2%, spread across 3 repeats 4%" in text
    assert "bootstrap over batches" in text and "It does not cover what changes between measurements" in text
    assert "another process, another day, another card" in text
    assert "1 measurement(s) without recorded batch sizes" in text and "10 contiguous blocks" in text
    assert "Repeats: the sweep was measured 3 times" in text
    summary = data["measurements"][0]["summary"]
    assert summary["batches"] == 12 and summary["repeats"] == 3 and summary["repeat_spread"] == pytest.approx(0.04)
    assert summary["ci_method"].startswith("bootstrap over batches")
    assert data["measurements"][1]["summary"]["ci_method"].startswith("bootstrap over 10 contiguous blocks")


def test_a_wild_spread_across_repeats_reads_as_a_factor():
    reps = [{"repeat": 1, "median_ms": 0.1}, {"repeat": 2, "median_ms": 18.1}]
    m = _bursty(SMALL, "sdpa-math", 4, extra={"repeats": reps})
    assert "spread across 2 repeats 181x" in report.timing_note(m, None)


def test_methods_state_the_bytes_of_fwd_plus_bwd_and_one_sample_count_once(tmp_path):
    """The convention gave the bytes of forward and of backward but not of fwd+bwd rows, and a run whose
    measurements all took 20 samples read 'Samples per measurement: 20–20'."""
    with Store(tmp_path / "r.db") as s:
        s.add_environment("h100", H100)
        rid = s.start_run("h100", {})
        s.add(rid, meas(BIG.replace(direction="fwd+bwd"), 12.0))
        s.add(rid, meas(BIG, 3.58, impl="sdpa-flash"))
        text = report.markdown(s, rid)
    assert "fwd+bwd counts as many (Q, K, V, dO read; O, dQ, dK, dV written)" in text
    assert "- Samples per measurement: 20 (stop:" in text


def test_rows_timed_differently_each_name_their_timer(tmp_path):
    """A table mixing graph and cold rows (not chosen by auto) named the timers in Methods only, not which row
    used which."""
    with Store(tmp_path / "r.db") as s:
        s.add_environment("h100", H100)
        rid = s.start_run("h100", {})
        s.add(rid, meas(BIG, 3.58))
        s.add(rid, dataclasses.replace(meas(SMALL, 0.012, impl="sdpa-flash"), timer="graph"))
        text = report.markdown(s, rid)
    rows = {ln.split("|")[2].strip(): ln for ln in text.splitlines() if ln.startswith("| B")}
    assert rows["sdpa-cudnn"].rstrip(" |").endswith(", timer cold")
    assert rows["sdpa-flash"].rstrip(" |").endswith(", timer graph")
