"""The HTML report of a real CPU run, opened in headless Chromium (Debian's package) through Playwright."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

EVIL = "<script>alert(1)</script>"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str | None:
    for path in (shutil.which("chromium"), "/usr/bin/chromium"):
        if path and os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    """A real CPU run: sdpa-math on two tiny workloads, plus a plugin impl whose name is an XSS probe."""
    import torch.nn.functional as F

    from attnbench.report import html as htmlreport
    from attnbench.impls.plugins import FunctionImpl
    from attnbench.measure.runner import RunConfig, measure_cell, run
    from attnbench.spec import Workload
    from attnbench.store import Store
    from attnbench.measure.timing import TimingPolicy, make_timer

    workloads = [Workload(1, 2, 2, q, q, 16, dtype="fp32") for q in (32, 64)]
    policy = TimingPolicy(warmup_ms=1.0, min_samples=5, max_samples=10, max_time_ms=200.0)
    folder = tmp_path_factory.mktemp("browser")
    with Store(folder / "run.db") as store:
        run_id = run(RunConfig(workloads=workloads, impls=["sdpa-math"], device="cpu", policy=policy,
                               name="browser test"), store, progress=False)
        env_id = store.run(run_id).env_id
        evil = FunctionImpl(EVIL, lambda q, k, v, **kw: F.scaled_dot_product_attention(q, k, v, **kw))
        for w in workloads:
            m = measure_cell(evil, w, "cpu", make_timer("host", "cpu"), policy, env_id=env_id)
            assert m.status == "ok", m.reason
            store.add(run_id, m)
        path = htmlreport.write(htmlreport.render_run(store, run_id), folder / "report.html")
    return path


def test_report_in_chromium(browser, report_file):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    dialogs: list[str] = []
    requests: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(report_file.as_uri())
    page.wait_for_load_state("load")

    plots = page.locator("figure.plot svg")
    assert plots.count() == 3                                     # latency, TFLOP/s (seq sweep), roofline
    for i in range(plots.count()):
        plot = plots.nth(i)
        plot.scroll_into_view_if_needed()
        assert plot.is_visible()
        box = plot.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100, box

    text = page.inner_text("body")
    assert EVIL in text                                           # shown as text
    assert "sdpa-math" in text and "Methods" in text
    assert page.locator("script").count() == 1                   # only the sort script

    # the table sorts on a header click (inline JS), by the median column
    header = page.locator("#measurements thead th", has_text="median ms")
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    medians = [float(t) for t in page.locator("#measurements tbody tr td:nth-child(4)").all_inner_texts()]
    assert medians == sorted(medians) and len(medians) == 4

    page.evaluate("window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "html-report.png"), full_page=True)
    page.close()
    assert errors == []
    assert dialogs == []
    assert all(u.startswith(("file:", "data:", "about:")) for u in requests), requests
