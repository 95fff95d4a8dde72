"""HTML run and history pages, CSV export, swept-axis grouping and escaping, on synthetic stores."""

from __future__ import annotations

import csv
import dataclasses
import json
import io
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from attnbench.report import history, html as htmlreport, plots, tables as report
from attnbench.cli import app
from attnbench.store import Measurement
from attnbench.spec import Workload, load_preset
from attnbench.store import Store

EVIL = "<script>alert(1)</script>"
ENV = {"device_kind": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "sm_count": 132, "torch": "2.11.0",
       "cuda": "13.0", "cudnn": "91900", "triton": "3.6.0", "python": "3.12.3", "attnbench": "0.1.0"}
CEILINGS = {"device": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "tflops": {"fp16": 797.0, "bf16": 793.0},
            "gbps": 3000.0}
SPEED = {"sdpa-flash": 300.0, "sdpa-math": 40.0, EVIL: 150.0}   # TFLOP/s each impl reaches


def _samples(ms: float, seed: int, n: int = 30) -> tuple[float, ...]:
    return tuple(float(x) for x in ms * np.random.default_rng(seed).lognormal(0.0, 0.03, n))


def _ok(w: Workload, impl: str, seed: int, scale: float = 1.0, **kw) -> Measurement:
    from attnbench.analysis import metrics

    ms = metrics.flops(w) / (SPEED[impl] * 1e9) * scale
    return Measurement(workload=w, impl=impl, status="ok", timer="cold", env_id="envA", device="cuda",
                       samples_ms=_samples(ms, seed), host_ms=_samples(ms * 0.2, seed + 1),
                       clocks_mhz=(1755.0,) * 30, stop_reason="converged", rel_err=1e-4, tolerance=2e-3,
                       backend="flash" if impl == "sdpa-flash" else "", **kw)


def _fill(store: Store, run_id: int, workloads: list[Workload], scale: float = 1.0,
          verdict: dict | None = None) -> int:
    n = 0
    for i, w in enumerate(workloads):
        for j, impl in enumerate(SPEED):
            extra = {"gate_verdict": verdict["verdict"]} if verdict and verdict["cell"] == (i, impl) else {}
            store.add(run_id, _ok(w, impl, seed=100 * i + j, scale=scale, extra=extra))
            n += 1
    return n


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "x.db")
    s.add_environment("envA", ENV)
    s.put("ceilings", "envA", CEILINGS)
    yield s
    s.close()


@pytest.fixture()
def characterize():
    return list(load_preset("characterize").workloads)


@pytest.fixture()
def run_id(store, characterize):
    rid = store.start_run("envA", {"policy": {"max_samples": 30}}, name="synthetic characterize")
    _fill(store, rid, characterize)
    w0 = characterize[0]
    store.add(rid, Measurement(workload=w0, impl="broken", status="incorrect", reason="rel err 0.5 > 2e-3",
                               rel_err=0.5, tolerance=2e-3, timer="cold", env_id="envA", device="cuda"))
    store.add(rid, Measurement(workload=w0, impl="sdpa-cudnn", status="unsupported", reason="needs sm90+",
                               timer="cold", env_id="envA", device="cuda"))
    # Faster than the memory ceiling allows (warm cache), with a clock that dropped: both flagged.
    hot = Measurement(workload=w0, impl="warm-cache", status="ok", timer="cold", env_id="envA", device="cuda",
                      samples_ms=_samples(1e-4, 7), clocks_mhz=(1980.0,) * 15 + (1400.0,) * 15,
                      stop_reason="converged", rel_err=1e-4, tolerance=2e-3)
    store.add(rid, hot)
    # The host takes longer per call than the device: host-bound.
    slow = characterize[1]
    store.add(rid, Measurement(workload=slow, impl="launchy", status="ok", timer="cold", env_id="envA",
                               device="cuda", samples_ms=_samples(1.0, 8), host_ms=_samples(3.0, 9),
                               stop_reason="converged", rel_err=1e-4, tolerance=2e-3))
    store.finish_run(rid)
    return rid


def test_swept_groups_of_characterize(characterize):
    groups = plots.swept_groups(characterize)
    assert [g.axis for g in groups] == ["seq", "batch", "heads"]
    assert [len(g.workloads) for g in groups] == [5, 4, 3]
    assert groups[0].x == [128.0, 256.0, 512.0, 1024.0, 2048.0]
    assert groups[0].fixed == "B32 H8 D64 fp16"
    assert sorted({w for g in groups for w in g.workloads}) == sorted(characterize)


def test_swept_groups_fallbacks():
    # llm-prefill: seq and batch change together (fixed tokens): seq is the axis, with a note.
    prefill = plots.swept_groups(list(load_preset("llm-prefill").workloads))
    assert len(prefill) == 1 and prefill[0].axis == "seq" and "batch" in prefill[0].note
    # No axis with distinct values: workload-index labels.
    a = Workload(1, 8, 8, 128, 128, 64, dtype="fp16")
    b = Workload(1, 8, 8, 128, 128, 64, dtype="bf16")
    (g,) = plots.swept_groups([a, b])
    assert g.axis == "" and g.ticks.labels == [a.label, b.label]


def test_run_page_is_self_contained_escaped_and_complete(store, run_id, characterize):
    page = htmlreport.render_run(store, run_id)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script src" not in page.lower() and "@import" not in page and "<link" not in page.lower()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1                      # only the sort script
    # one latency and one throughput plot per swept group (seq, batch, heads), plus the roofline; a group whose rows
    # are all memory-bound (intensity below the ridge point) gets GB/s, its figure of merit
    assert len(re.findall(r'data-plot="latency-\d+"', page)) == 3
    assert len(re.findall(r'data-plot="(?:tflops|gbps)-\d+"', page)) == 3
    assert page.count('data-plot="roofline"') == 1
    assert page.count("<svg") == 7
    # summary, flags, table, methods
    assert "NVIDIA H100 80GB HBM3" in page and "H100 SXM" in page
    assert "incorrect" in page and "rel err 0.5" in page
    assert "1 unsupported" in page
    assert '<span class="flag">implausible' in page and '<span class="flag">throttled' in page
    flagged = sum("implausible" in e.flags for e in htmlreport.gather_run(store, run_id).entries)
    assert flagged >= 1 and page.count('<tr class="st-ok implausible">') == flagged   # highlighted in the table
    assert page.count('<span class="flag">host-bound') == 2   # in Flagged and in the table: launchy only
    assert page.count('<tr class="st-') == 3 * len(characterize) + 4
    assert "Methods" in page and "bootstrap over batches" in page and "flash-attention convention" in page
    assert "measured" in page and "datasheet" in page


def test_best_per_workload(store, run_id, characterize):
    view = htmlreport.gather_run(store, run_id)
    best = htmlreport.best_per_workload(view)
    assert len(best) == len(characterize)
    first, second = best[0]
    assert first.m.impl == "warm-cache" and "implausible" in first.flags    # ranked, with its flag shown
    assert all(b.m.impl == "sdpa-flash" for b, _ in best[1:])
    assert best[1][1].m.impl == EVIL


def test_run_page_is_deterministic(store, run_id):
    assert htmlreport.render_run(store, run_id) == htmlreport.render_run(store, run_id)


def test_run_page_without_gpu_or_ok_rows(tmp_path):
    with Store(tmp_path / "cpu.db") as s:
        s.add_environment("cpu", {"device_kind": "cpu", "torch": "2.13.0", "cpu_model": "x86_64"})
        rid = s.start_run("cpu", {})
        w = Workload(2, 4, 4, 64, 64, 32, dtype="fp32")
        s.add(rid, Measurement(workload=w, impl="x", status="error", reason="boom", timer="host"))
        s.finish_run(rid)
        page = htmlreport.render_run(s, rid)
    assert "No ok measurements" in page and "<svg" not in page and "boom" in page


def test_csv_parses(store, run_id, characterize):
    text = report.csv_report(store, run_id)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 3 * len(characterize) + 4
    assert list(rows[0]) == list(report.CSV_COLUMNS)
    assert all(len(r) == len(report.CSV_COLUMNS) and None not in r for r in rows)
    evil = [r for r in rows if r["impl"] == EVIL]
    assert len(evil) == len(characterize)
    assert float(evil[0]["ci95_lo_ms"]) <= float(evil[0]["median_ms"]) <= float(evil[0]["ci95_hi_ms"])
    bad = next(r for r in rows if r["status"] == "incorrect")
    assert bad["median_ms"] == "" and float(bad["rel_err"]) == 0.5


def _history_store(store, characterize):
    ids = []
    for k, scale in enumerate((1.0, 1.0, 1.25)):
        rid = store.start_run("envA", {}, name=f"commit {k}")
        verdict = {"cell": (0, "sdpa-flash"), "verdict": "regression"} if k == 2 else None
        _fill(store, rid, characterize[:3], scale=scale, verdict=verdict)
        store.finish_run(rid)
        ids.append(rid)
    # the second hook: a verdict table stored by a gate under ('gate', run id)
    store.put("gate", str(ids[1]), {"cells": {f"{characterize[1].key}|sdpa-math|": {"verdict": "improvement"}}})
    return ids


def test_history_gather_and_verdicts(store, characterize):
    ids = _history_store(store, characterize)
    h = history.gather(store)
    assert [r.run_id for r in h.runs] == ids
    assert len(h.cells) == 3 * 3
    flash0 = next(c for c in h.cells if c.workload == characterize[0] and c.impl_label == "sdpa-flash")
    assert [p.verdict for p in flash0.points] == ["", "", "regression"]
    assert flash0.points[2].median_ms > flash0.points[0].median_ms * 1.2
    math1 = next(c for c in h.cells if c.workload == characterize[1] and c.impl_label == "sdpa-math")
    assert [p.verdict for p in math1.points] == ["", "improvement", ""]
    only = history.gather(store, workload="s256", impl=EVIL)
    assert len(only.cells) == 1 and only.cells[0].workload == characterize[1]
    assert len(history.gather(store, workload="B32 H8 S512").cells) == 3
    assert history.gather(store, impl="nope").cells == []


def test_history_page(store, characterize):
    ids = _history_store(store, characterize)
    page = htmlreport.render_history(store)
    for rid in ids:
        assert f"#{rid} " in page and f"commit {ids.index(rid)}" in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert len(re.findall(r'data-plot="history-\d+"', page)) == 3
    assert "▲ regression" in page and "▼ improvement" in page
    md = history.markdown(history.gather(store))
    assert md.count("\n| B32") == 9 and "▲ regression" in md


def test_verdict_hook_is_tolerant(store, characterize):
    rid = store.start_run("envA", {})
    store.add(rid, _ok(characterize[0], "sdpa-flash", 1, extra={"gate_verdict": {"verdict": "REGRESSED"}}))
    store.put("gate", str(rid), ["not", "a", "dict"])
    h = history.gather(store)
    assert h.cells[0].points[0].verdict == "regression"
    assert history.normalize_verdict(None) == "" and history.normalize_verdict("unchanged") == "unchanged"


def test_cli_formats(store, run_id, tmp_path):
    runner = CliRunner()
    db = store.path
    out = tmp_path / "r.html"
    res = runner.invoke(app, ["report", str(run_id), "--format", "html", "-o", str(out), "--db", db])
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    res = runner.invoke(app, ["report", str(run_id), "--format", "csv", "--db", db])
    assert res.exit_code == 0 and len(list(csv.DictReader(io.StringIO(res.stdout)))) > 0
    hist = tmp_path / "h.html"
    res = runner.invoke(app, ["report", "--history", "--impl", "sdpa-flash", "--format", "html", "-o", str(hist),
                              "--db", db])
    assert res.exit_code == 0, res.output
    assert "sdpa-math" not in hist.read_text()
    res = runner.invoke(app, ["report", "--history", "--workload", "S128", "--db", db])
    assert res.exit_code == 0 and res.stdout.startswith("# attnbench history (workload S128)")
    for bad in (["report", "--format", "pdf"], ["report", "--history", "--format", "csv"],
                ["report", "1", "--history"], ["report", "1", "--impl", "x"]):
        assert runner.invoke(app, bad + ["--db", db]).exit_code != 0


def _flagged_items(page: str) -> list[str]:
    """The Flagged list's top-level items, as text (tags stripped, whitespace collapsed)."""
    section = page[page.index("<h3>Flagged</h3>"):page.index('<h2 id="plots">')]
    section = re.sub(r"<details>.*?</summary>.*?</details>", lambda m: m.group(0).split("</summary>")[0],
                     section, flags=re.S)   # a collapsed list counts as its one summary line
    items = re.findall(r"<li>(.*?)</li>", section, flags=re.S)
    return [" ".join(re.sub(r"<[^>]+>", " ", x).split()) for x in items]


def test_flagged_list_puts_problems_first_and_host_bound_in_one_line(store, characterize):
    """A characterize run on an H200 flagged 35 of 35 rows host-bound, burying what mattered."""
    from attnbench.analysis import metrics

    rid = store.start_run("envA", {}, name="many host-bound")
    for i, w in enumerate(characterize):
        for j, impl in enumerate(SPEED):
            ms = metrics.flops(w) / (40.0 * 1e9) * (j + 1)   # 40 TFLOP/s and slower: plausible everywhere
            store.add(rid, Measurement(workload=w, impl=impl, status="ok", timer="cold", env_id="envA", device="cuda",
                                       samples_ms=_samples(ms, i * 10 + j), host_ms=_samples(3 * ms, i * 10 + j + 5),
                                       clocks_mhz=(1755.0,) * 30, stop_reason="converged", rel_err=1e-4))
    w0, w1 = characterize[0], characterize[1]
    store.add(rid, Measurement(workload=w1, impl="cache-warm", status="ok", timer="cold", env_id="envA",
                               device="cuda", samples_ms=_samples(1e-5, 3), host_ms=_samples(1e-6, 4),
                               stop_reason="converged", rel_err=1e-4))
    store.add(rid, Measurement(workload=w1, impl="hot-card", status="ok", timer="cold", env_id="envA", device="cuda",
                               samples_ms=_samples(2.0, 5), host_ms=_samples(0.1, 6),
                               clocks_mhz=(1755.0,) * 15 + (1000.0,) * 15, stop_reason="converged", rel_err=1e-4))
    store.add(rid, Measurement(workload=w0, impl="oom-kernel", status="oom", reason="out of memory during first call",
                               timer="cold", env_id="envA", device="cuda"))
    store.add(rid, Measurement(workload=w0, impl="crashes", status="error", reason="first call: boom", timer="cold",
                               env_id="envA", device="cuda"))
    store.add(rid, Measurement(workload=w1, impl="tail-rows", status="incorrect", timer="cold", env_id="envA",
                               device="cuda", rel_err=2.4e-3,
                               reason="relative error 0.097 in out row 1017 head 1 (batch 0): 25.4x the fp16 math "
                                      "error there (limit 6.1x)"))
    store.finish_run(rid)
    page = htmlreport.render_run(store, rid)
    items = _flagged_items(page)
    n_host = 3 * len(characterize)
    assert items[0].startswith("incorrect B32 H8 S256 D64 fp16 · tail-rows: relative error 0.097 in out row 1017")
    assert "25.4x the fp16 math error there (limit 6.1x) (rel err 2.4e-03)" in items[0]
    assert items[1].startswith("error ") and "crashes" in items[1]
    assert items[2].startswith("oom ") and "oom-kernel" in items[2]
    assert items[3].startswith("implausible") and "cache-warm" in items[3]
    assert items[4].startswith("throttled") and "hot-card" in items[4] and "SM clock fell to 1000 MHz" in items[4]
    assert items[5] == (f"host-bound {n_host} rows host-bound: the host time per call exceeds the device time; "
                        "see the regime column")
    assert len(items) == 6   # nothing else: host-bound rows are behind that one line
    # the rows are still there, collapsed, with their numbers
    section = page[page.index("<h3>Flagged</h3>"):page.index('<h2 id="plots">')]
    assert section.count("ms/call &gt; device") == n_host and section.count(">host-bound<") == 1


def test_flagged_list_is_empty_when_nothing_needs_attention(store, characterize):
    rid = store.start_run("envA", {}, name="clean")
    w = characterize[-1]
    ms = 4 * w.batch * w.q_heads * w.q_len * w.kv_len * w.head_dim / (SPEED["sdpa-flash"] * 1e9)
    store.add(rid, Measurement(workload=w, impl="sdpa-flash", status="ok", timer="cold", env_id="envA", device="cuda",
                               samples_ms=_samples(ms, 1), host_ms=_samples(0.1 * ms, 2), stop_reason="converged"))
    store.finish_run(rid)
    page = htmlreport.render_run(store, rid)
    assert _flagged_items(page) == [] and "<p>Nothing flagged.</p>" in page


def test_methods_state_the_correctness_criterion(store, run_id):
    from attnbench.measure.criteria import CRITERION

    md = report.methods(report.rows_for(store, run_id), ENV, {})
    bullet = next(line for line in md.splitlines() if line.startswith("- Correctness:"))
    assert CRITERION in bullet and "2x eager math's" in bullet and "(batch, head, row)" in bullet
    page = htmlreport.render_run(store, run_id)
    assert "2x eager math&#x27;s (4x for gradients" in page and "TF32 matmuls allowed" in page


H200 = {"device_kind": "cuda", "gpu_name": "NVIDIA H200", "torch": "2.11.0", "cuda": "13.0", "l2_mb": 60}
DECODE = Workload(16, 32, 8, 1, 32768, 128, dtype="bf16", mask="causal-br")   # a 2.1 GB KV cache


def _at_gbps(w: Workload, impl: str, gbps: float, env: str, seed: int) -> Measurement:
    from attnbench.analysis import metrics

    return Measurement(workload=w, impl=impl, status="ok", timer="cold", env_id=env, device="cuda",
                       samples_ms=_samples(metrics.min_bytes(w) / (gbps * 1e6), seed), stop_reason="converged")


def test_run_page_of_a_run_on_two_gpus_names_each_rows_device_and_never_ranks_across_them(store):
    """The page of a run on an H100 and an H200 named the H100 alone (header, summary, ceilings), gave no row its
    device, ranked the H200's kernel against the H100's as 'fastest' and drew both as one series."""
    store.add_environment("h200", H200)
    rid = store.start_run("envA", {}, name="two gpus")
    for env, impl, gbps in (("envA", "sdpa-cudnn", 2000.0), ("h200", "sdpa-flash", 4000.0)):
        store.add(rid, _at_gbps(DECODE, impl, gbps, env, 1))   # a cell is measured once, on one worker
    store.finish_run(rid)
    view = htmlreport.gather_run(store, rid)
    assert {e.device for e in view.entries} == {"NVIDIA H100 80GB HBM3 · envA", "NVIDIA H200 · h200"}
    assert len({e.series for e in view.entries}) == 2                      # two series, one per device
    assert [second for _, second in htmlreport.best_per_workload(view)] == [None, None]
    page = htmlreport.render_run_view(view)
    assert "2 environments, never pooled (each row names its own)" in page
    assert page.count("<td>NVIDIA H200 · h200</td>") == 2                  # the fastest table and the row
    assert "NVIDIA H200 · h200: memory</td><td class=\"n\">4800 GB/s</td><td>datasheet" in page
    assert "NVIDIA H100 80GB HBM3 · envA: memory</td><td class=\"n\">3000 GB/s</td><td>measured" in page


def test_decode_rows_lead_with_bandwidth_and_above_copy_is_flagged(store):
    """A decode row's '% of peak' cell gave its % of the compute peak (1.6), the fastest table gave TFLOP/s and
    the plot TFLOP/s, and a row at 105% of the measured copy ceiling was not marked."""
    rid = store.start_run("envA", {}, name="decode")
    store.add(rid, _at_gbps(DECODE, "sdpa-cudnn", 3150.0, "envA", 1))    # 105% of the copy, 94% of the datasheet
    store.add(rid, _at_gbps(DECODE.replace(kv_len=16384), "sdpa-cudnn", 2000.0, "envA", 2))
    store.finish_run(rid)
    page = htmlreport.render_run(store, rid)
    assert ">105% of BW</td>" in page and ">67% of BW</td>" in page
    assert re.search(r">31[45]\d GB/s \(105% of BW\)<", page)
    assert 'data-plot="gbps-0"' in page and 'data-plot="tflops-' not in page
    assert "measured copy ceiling" in page
    items = _flagged_items(page)
    assert len(items) == 1 and items[0].startswith("above copy") and "94% of the datasheet bandwidth" in items[0]


def test_csv_names_units_devices_and_flags_and_json_gives_the_ceilings(store, run_id):
    """The CSV had no device, no flag on an implausible row (a warm-cache 'win' read as a plain number) and CI
    columns without a unit; the JSON gave percentages of ceilings it did not state."""
    rows = list(csv.DictReader(io.StringIO(report.csv_report(store, run_id))))
    assert {"ci95_lo_ms", "ci95_hi_ms", "host_median_ms", "pct_peak", "pct_bandwidth"} <= set(rows[0])
    assert {r["device"] for r in rows} == {"NVIDIA H100 80GB HBM3"} and {r["env_id"] for r in rows} == {"envA"}
    hot = next(r for r in rows if r["impl"] == "warm-cache")
    assert hot["flag"] == "implausible" and "above the copy ceiling" in hot["flag_reason"]
    assert float(hot["pct_bandwidth"]) > 100
    assert all(r["flag"] == "" for r in rows if r["impl"] == "sdpa-math")
    for col in ("median_ms", "ci95_lo_ms", "pct_peak", "host_median_ms"):   # one type per column: a number or empty
        assert all(r[col] == "" or float(r[col]) >= 0 for r in rows)
    data = report.json_report(store, run_id)
    assert data["ceilings"]["envA"]["gbps"] == 3000.0 and data["ceilings"]["envA"]["tflops"]["fp16"] == 797.0
    json.dumps(data, allow_nan=False)   # strict JSON: no NaN or Infinity anywhere


def test_history_never_pools_environments(store, characterize):
    """Runs on an H100 and then an H200 were one line per (workload, impl, timer): a change of GPU drawn, and
    tabled, as a change of speed of one cell."""
    store.add_environment("h200", H200)
    w = characterize[0]
    for env, scale in (("envA", 1.0), ("h200", 0.5)):
        rid = store.start_run(env, {}, name=env)
        store.add(rid, dataclasses.replace(_ok(w, "sdpa-flash", seed=1, scale=scale), env_id=env))
        store.finish_run(rid)
    h = history.gather(store)
    assert len(h.cells) == 2 and [len(c.points) for c in h.cells] == [1, 1]
    assert [c.device for c in h.cells] == ["NVIDIA H100 80GB HBM3 · envA", "NVIDIA H200 · h200"]
    md = history.markdown(h)
    assert "| sdpa-flash (cold) · NVIDIA H200 · h200 |" in md
    page = htmlreport.render_history(store)
    assert "sdpa-flash · NVIDIA H200 · h200" in page


def test_every_format_gives_the_same_median_and_interval(store):
    """Markdown, JSON, CSV, the HTML page and the history agree on each median and its CI to the precision shown
    (the history gave an order-statistic interval over single samples, narrower on bursty batches than the
    run report's bootstrap over batches)."""
    from attnbench.report.text import fmt_ms
    from tests.analysis import bursty

    x, sizes = bursty.apart(np.random.default_rng(3), batches=12, per_batch=8, base=0.1)
    rid = store.start_run("envA", {}, name="bursty")
    store.add(rid, Measurement(workload=Workload(32, 8, 8, 128, 128, 64, dtype="fp16"), impl="sdpa-flash",
                               status="ok", timer="cold", env_id="envA", device="cuda", samples_ms=tuple(x),
                               batch_sizes=tuple(sizes), stop_reason="converged"))
    store.finish_run(rid)
    summary = report.json_report(store, rid)["measurements"][0]["summary"]
    med, (lo, hi) = summary["median_ms"], summary["ci95_ms"]
    (row,) = list(csv.DictReader(io.StringIO(report.csv_report(store, rid))))
    assert (float(row["median_ms"]), float(row["ci95_lo_ms"]), float(row["ci95_hi_ms"])) == (med, lo, hi)
    assert f"| {fmt_ms(med)} [{fmt_ms(lo)}, {fmt_ms(hi)}] |" in report.markdown(store, rid)
    page = htmlreport.render_run(store, rid)
    assert f">{med:.4g}</td>" in page and f"{lo:.4g}–{hi:.4g}" in page
    (cell,) = history.gather(store, impl="sdpa-flash").cells
    assert (cell.points[0].median_ms, cell.points[0].ci) == (med, (lo, hi))


def test_fastest_table_says_when_intervals_overlap_and_scales_small_rates(tmp_path):
    """'runner-up / fastest 1.12x' was printed bare between rows whose CIs overlapped, and a CPU's rate read
    '0.00107 TFLOP/s'."""
    w = Workload(1, 2, 2, 64, 64, 16, dtype="fp32")
    with Store(tmp_path / "cpu.db") as s:
        s.add_environment("cpu", {"device_kind": "cpu", "torch": "2.13.0", "cpu_model": "x86_64"})
        rid = s.start_run("cpu", {})
        for impl, ms, seed in (("a", 0.100, 1), ("b", 0.101, 2), ("c", 0.2, 3)):
            s.add(rid, Measurement(workload=w, impl=impl, status="ok", timer="host", env_id="cpu",
                                   samples_ms=_samples(ms, seed), batch_sizes=(3,) * 10))
        s.finish_run(rid)
        view = htmlreport.gather_run(s, rid)
        page = htmlreport.render_run_view(view)
    (first, second), = htmlreport.best_per_workload(view)
    assert htmlreport.ratio_text(first, second).endswith("× (CIs overlap: not told apart)")
    c = next(e for e in view.entries if e.m.impl == "c")
    assert htmlreport.ratio_text(first, c) == f"{c.row.median_ms / first.row.median_ms:.3g}×"
    assert "a ratio between two rows is a hint, not a verdict" in page
    assert first.merit.endswith(" GFLOP/s") and not first.merit.startswith("0.")
    assert htmlreport._rate(599.0, "FLOP/s", "T") == "599 TFLOP/s" and htmlreport._rate(0.5, "B/s", "G") == "500 MB/s"


def test_run_page_gives_the_spread_across_repeats(store):
    """The Markdown note gave a pooled cell's spread across repeats, batches and precision; the page gave only its
    stop reason."""
    w = Workload(32, 8, 8, 128, 128, 64, dtype="fp16")
    reps = [{"repeat": i + 1, "median_ms": v} for i, v in enumerate((0.100, 0.104, 0.101))]
    rid = store.start_run("envA", {}, name="repeats")
    store.add(rid, Measurement(workload=w, impl="sdpa-flash", status="ok", timer="cold", env_id="envA", device="cuda",
                               samples_ms=_samples(0.1, 1), batch_sizes=(3,) * 10, stop_reason="converged",
                               extra={"repeats": reps, "precision": 0.02}))
    store.finish_run(rid)
    page = htmlreport.render_run(store, rid)
    assert "n=30 in 10 batches converged ±2%, spread across 3 repeats 4%" in page
