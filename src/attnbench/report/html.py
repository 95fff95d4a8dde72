"""Self-contained HTML pages: one stored run (summary, plots, sortable table, Methods) and the history page.

Gathering and rendering are separate: `gather_run` reads the store into a RunView (no HTML);
`render_run_view` turns a RunView into one HTML file with inline SVG plots, inline CSS and a few lines
of inline JS, and nothing fetched from the network. Every string from the store is escaped by jinja2's
autoescape; only the SVG produced by plots.py and the Methods text escaped here are marked safe.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis import metrics
from ..analysis.datasheet import lookup_spec
from ..measure.clocks import throttled
from ..store import RunInfo, Store
from . import plots as P
from .history import IMPROVEMENT, REGRESSION, History, run_date, run_title
from .tables import Row, _env_line, methods, row_environments, rows_for, run_ceilings, typical_clock

THROTTLE_DROP = 0.10  # flagged when a clock reading fell more than this below the run's typical clock
# The Flagged list, most severe first: statuses that lost a measurement, then flags on numbers that were kept.
# host-bound is not in it: on small kernels it is the rule (35 of 35 rows of a characterize run on an H200),
# so the page says it in one line and the regime column says it per row.
SEVERITY = ("incorrect", "error", "oom", "implausible", "throttled")


@dataclass
class Entry:
    """A table row: the measurement's summary and what analysis/device.py says about it."""

    row: Row
    index: int                      # workload order in the run
    series: str                     # the plot series (impl label, plus timer when a run mixes timers)
    intensity: float
    pct_peak: float | None = None
    pct_bound: float | None = None  # % of the roofline bound at this intensity
    regime: str = ""
    flags: list[str] = field(default_factory=list)    # implausible / throttled / host-bound
    notes: list[str] = field(default_factory=list)    # why, in words

    @property
    def m(self):
        return self.row.m


@dataclass
class RunView:
    info: RunInfo
    env: dict[str, Any]
    entries: list[Entry]
    groups: list[P.Group]
    ceilings: Any = None            # roofline.Ceilings (measured where present, else datasheet) or None
    measured: dict[str, Any] | None = None
    spec: Any = None                # datasheet.DeviceSpec or None
    styles: dict[str, tuple[str, str]] = field(default_factory=dict)   # series -> (colour, marker)


# -- gathering ---------------------------------------------------------------------------------------------

def _spec(env: dict[str, Any]):
    return lookup_spec(env.get("gpu_name")) if env.get("gpu_name") else None


def _entry(row: Row, index: int, series: str, typical_mhz: float | None) -> Entry:
    m, w = row.m, row.m.workload
    e = Entry(row, index, series, metrics.intensity(w))
    if not m.ok:
        return e
    roof = row.roofline or {}  # report.rows_for places every ok row on the roofline (metrics.assess)
    e.pct_peak, e.pct_bound = roof.get("pct_peak"), roof.get("pct_bound")
    e.regime = roof.get("regime") or ""
    host = row.host_median_ms if m.timer != "host" else None
    if e.regime == "host-bound" and host is not None:
        e.flags.append("host-bound")
        e.notes.append(f"host {host:.4g} ms/call > device {row.median_ms:.4g} ms")
    if roof.get("plausibility") == "implausible":
        e.flags.append("implausible")
        e.notes.append(roof.get("plausibility_reason") or "above a device ceiling")
    # The Markdown report's rule: a reading more than THROTTLE_DROP below the run's typical clock.
    if m.extra.get("throttled") or throttled(m.clocks_mhz, typical_mhz, THROTTLE_DROP):
        low = min((c for c in m.clocks_mhz if c), default=None)
        e.flags.append("throttled")
        e.notes.append(f"SM clock fell to {low:.0f} MHz, typical {typical_mhz:.0f} MHz"
                       if low is not None and typical_mhz else "throttled")
    return e


def gather_run(store: Store, run_id: int | str | None = None) -> RunView:
    """Everything the run page shows, read from the store; no HTML."""
    info = store.run(run_id)
    env = store.environment(info.env_id) or {}
    measured = store.get("ceilings", info.env_id) if info.env_id else None
    measured = measured if isinstance(measured, dict) else None
    ceil = run_ceilings(store, info.env_id)
    rows = rows_for(store, info.run_id)
    typical = typical_clock(rows)
    order = {w: i for i, w in enumerate(dict.fromkeys(r.m.workload for r in rows))}
    mixed = len({r.m.timer for r in rows if r.m.ok}) > 1
    envs = row_environments(store, rows)  # a run on workers of several GPUs: each row's device, never pooled

    def series(m) -> str:
        return m.impl_label + (f" ({m.timer})" if mixed else "") + (f" on {envs.get(m.env_id, '?')}" if envs else "")

    entries = [_entry(r, order[r.m.workload], series(r.m), typical) for r in rows]
    names = list(dict.fromkeys(e.series for e in entries))
    styles = {s: (P.PALETTE[i % len(P.PALETTE)], P.MARKERS[i % len(P.MARKERS)]) for i, s in enumerate(names)}
    plotted = [w for w in order if any(e.m.ok and e.m.workload == w for e in entries)]
    return RunView(info, env, entries, P.swept_groups(plotted), ceil, measured, _spec(env), styles)


def attention(view: RunView) -> list[Entry]:
    """Entries that need attention, most severe first (SEVERITY): failed statuses, then implausible or
    throttled numbers; an entry whose only flag is host-bound is left to the one-line summary."""
    def rank(e: Entry) -> int:
        keys = [e.m.status, *e.flags]
        return min(SEVERITY.index(k) for k in keys if k in SEVERITY)

    hits = [e for e in view.entries if e.m.status in SEVERITY or set(e.flags) & set(SEVERITY)]
    return sorted(hits, key=lambda e: (rank(e), e.index))


def best_per_workload(view: RunView) -> list[tuple[Entry, Entry | None]]:
    """(fastest ok entry, runner-up or None) per workload, in run order; implausible ones keep their flag."""
    out = []
    for w in dict.fromkeys(e.m.workload for e in view.entries):
        ok = sorted((e for e in view.entries if e.m.workload == w and e.m.ok), key=lambda e: e.row.median_ms)
        if ok:
            out.append((ok[0], ok[1] if len(ok) > 1 else None))
    return out


# -- plots -----------------------------------------------------------------------------------------------

def _series(view: RunView, group: P.Group, value) -> list[P.Series]:
    out = []
    for name, (color, marker) in view.styles.items():
        s = P.Series(name, [], [], [], [], color, marker)
        for x, w in zip(group.x, group.workloads):
            for e in view.entries:
                if e.series == name and e.m.workload == w and e.m.ok:
                    y, lo, hi = value(e)
                    s.x.append(x)
                    s.y.append(y)
                    s.lo.append(lo)
                    s.hi.append(hi)
        if s.x:
            out.append(s)
    return out


def _latency(e: Entry) -> tuple[float, float, float]:
    return e.row.median_ms, e.row.ci[0], e.row.ci[1]


def _tflops(e: Entry) -> tuple[float, float, float]:
    f = metrics.flops(e.m.workload) / 1e9   # TFLOP/s = FLOP / (ms * 1e9); the CI inverts
    return e.row.tflops, f / e.row.ci[1], f / e.row.ci[0]


def _peak_lines(view: RunView, dtypes: set[str]) -> list[P.HLine]:
    if len(dtypes) != 1:
        return []
    (dtype,) = dtypes
    lines = []
    mt = (view.measured or {}).get("tflops") or {}
    if view.ceilings is not None and view.ceilings.source(dtype).startswith("measured"):
        lines.append(P.HLine(view.ceilings.peak(dtype), f"measured {dtype} matmul ceiling", "--", "#444444"))
    elif mt.get(dtype):
        lines.append(P.HLine(float(mt[dtype]), f"measured {dtype} matmul ceiling", "--", "#444444"))
    sheet = view.spec.tflops(dtype) if view.spec is not None else None
    if sheet:
        lines.append(P.HLine(sheet, f"{view.spec.name} datasheet {dtype} peak", ":", "#aa0000"))
    return lines


def group_plots(view: RunView, group: P.Group, n: int) -> tuple[str, str]:
    """(latency SVG, TFLOP/s SVG) for one swept group."""
    where = f" ({group.fixed})" if group.fixed else ""
    xlabel = group.title + (f"; {group.note}" if group.note else "")
    timers = sorted({e.m.timer for e in view.entries if e.m.ok})
    what = "host wall time" if timers == ["host"] else "device time"
    lat = P.line_chart(_series(view, group, _latency), title=f"median latency vs {group.title}{where}",
                       xlabel=xlabel, ylabel=f"ms per call ({what}), median and 95% CI", salt=f"lat{n}",
                       ticks=group.ticks)
    tf = P.line_chart(_series(view, group, _tflops), title=f"throughput vs {group.title}{where}",
                      xlabel=xlabel, ylabel="TFLOP/s (95% CI)", salt=f"tf{n}", ticks=group.ticks,
                      hlines=_peak_lines(view, {w.dtype for w in group.workloads}))
    return lat, tf


def roofline_plot(view: RunView) -> str:
    points = [P.Point(e.series, e.intensity, e.row.tflops, *view.styles[e.series])
              for e in view.entries if e.m.ok and e.row.tflops]
    roofs = []
    dtypes = sorted({e.m.workload.dtype for e in view.entries if e.m.ok})
    ceil = view.ceilings
    for i, d in enumerate(dtypes):
        if ceil is not None and (ceil.peak(d) or ceil.gbps):
            src = "/".join(sorted({ceil.source(d), ceil.gbps_source} - {"unknown"}))
            roofs.append(P.Roof(f"{d} roof ({src})", ceil.peak(d), ceil.gbps, "-", "#444444"))
        if view.spec is not None and ceil is not None and "measured" in (ceil.source(d) + ceil.gbps_source):
            if view.spec.tflops(d) or view.spec.mem_gbps:
                roofs.append(P.Roof(f"{d} roof ({view.spec.name} datasheet)", view.spec.tflops(d),
                                    view.spec.mem_gbps, ":", "#aa0000"))
    title = "roofline: every ok measurement" + ("" if roofs else " (no device peaks known)")
    return P.roofline_chart(points, roofs, title=title, salt="roof")


# -- rendering ---------------------------------------------------------------------------------------------

def _num(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def methods_html(md: str):
    """report.methods' Markdown bullets as HTML: escaped first, then `code` spans."""
    from markupsafe import Markup

    items = []
    for line in md.splitlines():
        if line.startswith("- "):
            text = html.escape(line[2:])
            items.append("<li>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", text) + "</li>")
    return Markup("<ul>" + "".join(items) + "</ul>")


def _jinja():
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["num"] = _num
    return env


def _software(env: dict[str, Any]) -> list[tuple[str, str]]:
    keys = ("gpu_name", "sm_count", "l2_mb", "memory_gib", "sm_clock_max_mhz", "power_limit_w", "driver",
            "cuda", "cudnn", "torch", "triton", "python", "cpu_model", "os", "attnbench", "git_commit")
    return [(k, str(env[k])) for k in keys if env.get(k) not in (None, "")]


def render_run_view(view: RunView) -> str:
    from markupsafe import Markup

    from .templates import RUN_PAGE

    plots = []
    for n, g in enumerate(view.groups):
        lat, tf = group_plots(view, g, n)
        plots.append((g, Markup(lat), Markup(tf)))
    roof = Markup(roofline_plot(view)) if any(e.m.ok for e in view.entries) else None
    counts: dict[str, int] = {}
    for e in view.entries:
        counts[e.m.status] = counts.get(e.m.status, 0) + 1
    ceil = view.ceilings
    dtypes = sorted({e.m.workload.dtype for e in view.entries})
    ceiling_rows = []
    if ceil is not None:
        for d in dtypes:
            ceiling_rows.append((f"{d} compute", _num(ceil.peak(d)) + " TFLOP/s" if ceil.peak(d) else "unknown",
                                 ceil.source(d)))
        ceiling_rows.append(("memory", _num(ceil.gbps) + " GB/s" if ceil.gbps else "unknown", ceil.gbps_source))
    md = methods([e.row for e in view.entries], view.env, view.info.config, ceil)
    return _jinja().from_string(RUN_PAGE).render(
        v=view, info=view.info, device=_env_line(view.env), software=_software(view.env), counts=counts,
        best=best_per_workload(view), plots=plots, roof=roof, ceiling_rows=ceiling_rows,
        attention=attention(view), host_bound=[e for e in view.entries if "host-bound" in e.flags],
        unsupported=[e for e in view.entries if e.m.status == "unsupported"], methods=methods_html(md),
        convention=metrics.CONVENTION, log_decades=P.LOG_DECADES, throttle=THROTTLE_DROP)


def render_run(store: Store, run_id: int | str | None = None) -> str:
    """The run page of a stored run (None: the newest) as one self-contained HTML document."""
    return render_run_view(gather_run(store, run_id))


# -- history -----------------------------------------------------------------------------------------------

def history_plots(h: History) -> list[tuple[str, str]]:
    """(workload label, SVG) per workload: each impl's median over run order with its CI band, gate
    verdicts circled."""
    pos = h.run_position()
    mixed = len({c.timer for c in h.cells}) > 1

    def series_name(c) -> str:
        return c.impl_label + (f" ({c.timer})" if mixed and c.timer else "")

    names = list(dict.fromkeys(series_name(c) for c in h.cells))
    styles = {s: (P.PALETTE[i % len(P.PALETTE)], P.MARKERS[i % len(P.MARKERS)]) for i, s in enumerate(names)}
    step = max(1, math.ceil(len(h.runs) / 12))
    ticks = P.Ticks([float(i) for i in range(0, len(h.runs), step)],
                    [run_title(r) for r in h.runs][::step])
    out = []
    workloads = list(dict.fromkeys(c.workload for c in h.cells))
    for n, w in enumerate(workloads):
        series, marks = [], []
        for c in (c for c in h.cells if c.workload == w):
            name = series_name(c)
            pts = [p for p in c.points if p.median_ms is not None]
            if not pts:
                continue
            color, marker = styles[name]
            series.append(P.Series(name, [float(pos[p.run_id]) for p in pts], [p.median_ms for p in pts],
                                   [p.ci[0] for p in pts], [p.ci[1] for p in pts], color, marker))
            for p in pts:
                if p.verdict in (REGRESSION, IMPROVEMENT):
                    marks.append(P.Mark(float(pos[p.run_id]), p.median_ms, f"gate: {p.verdict}",
                                        "#d62728" if p.verdict == REGRESSION else "#2ca02c",
                                        "^" if p.verdict == REGRESSION else "v"))
        if series:
            svg = P.line_chart(series, title=f"{w.label}: median over runs", xlabel="run",
                               ylabel="ms per call, median and 95% CI band", salt=f"hist{n}", marks=marks,
                               ticks=ticks, band=True)
            out.append((w.label, svg))
    return out


def render_history_view(h: History) -> str:
    from markupsafe import Markup

    from .history import point_text
    from .templates import HISTORY_PAGE

    plots = [(label, Markup(svg)) for label, svg in history_plots(h)]
    rows = []
    for c in h.cells:
        by_run = {p.run_id: p for p in c.points}
        rows.append((c, [(by_run.get(r.run_id), point_text(by_run.get(r.run_id))) for r in h.runs]))
    filters = ", ".join(f"{k} {v}" for k, v in h.filters.items() if v)
    return _jinja().from_string(HISTORY_PAGE).render(
        h=h, plots=plots, rows=rows, filters=filters, run_title=run_title, run_date=run_date, REGRESSION=REGRESSION,
        IMPROVEMENT=IMPROVEMENT)


def render_history(store: Store, workload: str | None = None, impl: str | None = None) -> str:
    """The history page across stored runs, filtered like history.gather."""
    from .history import gather

    return render_history_view(gather(store, workload, impl))


def write(text: str, path: str | Path) -> Path:
    """Write a rendered page (e.g. docs/examples/characterize-h100.html); returns the path."""
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path
