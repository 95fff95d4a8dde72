"""Plots for the HTML reports: which to draw (the swept axes of a run) and matplotlib figures rendered
to deterministic, self-contained SVG text.

matplotlib is imported inside the functions (never at import time) and only `matplotlib.figure.Figure`
is used, so no pyplot state or global backend is touched. Text from users (impl names, labels) reaches
matplotlib with `$` escaped (no mathtext) and stays SVG text (svg.fonttype none), which matplotlib's SVG writer
escapes (&, <, >), so an SVG never carries it as markup.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Sequence

from ..spec import Workload, masks

# Colour-blind-safe palette (Okabe-Ito), then tab10's remainder; assigned by the caller per impl so an
# impl keeps its colour across every plot of a page.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
           "#8c564b", "#7f7f7f", "#bcbd22", "#17becf")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LOG_DECADES = 1.5  # an axis goes logarithmic when its data spans more than this many decades


@dataclass
class Series:
    """One line: y over x, with an optional interval [lo, hi] per point (error bars or a band)."""

    label: str
    x: list[float]
    y: list[float]
    lo: list[float] | None = None
    hi: list[float] | None = None
    color: str = PALETTE[0]
    marker: str = "o"


@dataclass
class HLine:
    """A horizontal reference line (a ceiling or a datasheet peak)."""

    y: float
    label: str
    style: str = "--"
    color: str = "#444444"


@dataclass
class Mark:
    """A highlighted point (a gate verdict) drawn over the series."""

    x: float
    y: float
    kind: str           # legend text, e.g. 'regression'
    color: str = "#d62728"
    marker: str = "^"


@dataclass
class Roof:
    """A roofline: compute peak (TFLOP/s) and memory bandwidth (GB/s)."""

    label: str
    tflops: float | None
    gbps: float | None
    style: str = "-"
    color: str = "#444444"


@dataclass
class Point:
    label: str
    x: float
    y: float
    color: str = PALETTE[0]
    marker: str = "o"


@dataclass
class Ticks:
    positions: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def plain(text: str) -> str:
    """User text made safe for matplotlib: '$' would start mathtext (and can fail to parse)."""
    return str(text).replace("$", r"\$")


def spans_decades(values: Sequence[float], decades: float = LOG_DECADES) -> bool:
    pos = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return len(pos) >= 2 and math.log10(max(pos) / min(pos)) > decades


def _figure(width: float = 7.0, height: float = 4.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, which="major", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    return fig, ax


def to_svg(fig, salt: str) -> str:
    """The figure as an inline <svg> element. A per-plot hash salt keeps ids unique within one page and
    the output identical from run to run (no date in the metadata)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none", "svg.image_inline": True}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": "attnbench"})
    text = buf.getvalue()
    return text[text.index("<svg"):].strip()


def _log_axis(axis, values: Sequence[float]) -> None:
    """Plain-number labels at 1-2-5 steps (1 only over wide ranges) instead of 10^k and minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    pos = [v for v in values if v and v > 0 and math.isfinite(v)]
    decades = math.log10(max(pos) / min(pos)) if len(pos) >= 2 else 1.0
    subs = (1.0,) if decades > 3 else (1.0, 2.0, 5.0) if decades > 0.7 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _legend(ax, handles, labels, **kw) -> None:
    # Explicit labels: matplotlib would otherwise drop labels starting with '_' (a valid impl name).
    if handles:
        ax.legend(handles, [plain(x) for x in labels], fontsize=8, framealpha=0.9, **kw)


def line_chart(series: Sequence[Series], *, title: str, xlabel: str, ylabel: str, salt: str,
               hlines: Sequence[HLine] = (), marks: Sequence[Mark] = (), ticks: Ticks | None = None,
               band: bool = False, logx: bool | None = None, logy: bool | None = None) -> str:
    """Lines with error bars (band=False) or shaded bands (band=True); axes go logarithmic when the data
    span more than LOG_DECADES decades unless logx/logy say otherwise."""
    fig, ax = _figure()
    handles, labels = [], []
    for s in series:
        if not s.x:
            continue
        if band:
            (line,) = ax.plot(s.x, s.y, color=s.color, marker=s.marker, markersize=4, linewidth=1.5)
            if s.lo is not None and s.hi is not None:
                ax.fill_between(s.x, s.lo, s.hi, color=s.color, alpha=0.18, linewidth=0)
        else:
            yerr = None
            if s.lo is not None and s.hi is not None:
                yerr = [[max(0.0, y - lo) for y, lo in zip(s.y, s.lo)],
                        [max(0.0, hi - y) for y, hi in zip(s.y, s.hi)]]
            cont = ax.errorbar(s.x, s.y, yerr=yerr, color=s.color, marker=s.marker, markersize=5,
                               linewidth=1.5, capsize=3, elinewidth=1)
            line = cont.lines[0]
        handles.append(line)
        labels.append(s.label)
    seen_kinds: set[str] = set()
    for mk in marks:
        h = ax.scatter([mk.x], [mk.y], s=90, facecolors="none", edgecolors=mk.color, marker=mk.marker,
                       linewidths=2, zorder=5)
        if mk.kind not in seen_kinds:
            seen_kinds.add(mk.kind)
            handles.append(h)
            labels.append(mk.kind)
    ys = [v for s in series for v in (s.hi or s.y) + (s.lo or s.y)] + [h.y for h in hlines]
    xs = [v for s in series for v in s.x]
    if logy if logy is not None else spans_decades(ys):
        ax.set_yscale("log")
        _log_axis(ax.yaxis, ys)
    doubling = _powers_of_two(xs) and max(xs) / min(xs) >= 8   # a doubling sweep reads best on log2
    if ticks is None and (logx if logx is not None else spans_decades(xs) or doubling):
        ax.set_xscale("log", base=2 if _powers_of_two(xs) else 10)
    for h in hlines:
        line = ax.axhline(h.y, linestyle=h.style, color=h.color, linewidth=1.2)
        handles.append(line)
        labels.append(h.label)
    if ticks is not None:
        ax.set_xticks(ticks.positions)
        ax.set_xticklabels([plain(t) for t in ticks.labels], rotation=30 if len(ticks.labels) > 4 else 0,
                           ha="right" if len(ticks.labels) > 4 else "center", fontsize=8)
    elif xs and all(float(v).is_integer() for v in xs) and len(set(xs)) <= 12:
        ax.set_xticks(sorted(set(xs)))
        ax.set_xticklabels([f"{int(v)}" for v in sorted(set(xs))], fontsize=8)
        ax.minorticks_off()
    ax.set_title(plain(title), fontsize=10)
    ax.set_xlabel(plain(xlabel))
    ax.set_ylabel(plain(ylabel))
    _legend(ax, handles, labels, loc="best")
    return to_svg(fig, salt)


def _powers_of_two(xs: Sequence[float]) -> bool:
    return bool(xs) and all(v > 0 and float(v).is_integer() and (int(v) & (int(v) - 1)) == 0 for v in xs)


def roofline_chart(points: Sequence[Point], roofs: Sequence[Roof], *, title: str, salt: str) -> str:
    """Arithmetic intensity (FLOP/byte) against TFLOP/s on log-log axes, with each roof drawn as
    min(peak, intensity * bandwidth) where both are known, or its one known part."""
    import numpy as np

    fig, ax = _figure(6.5, 4.6)
    handles, labels, seen = [], [], set()
    for p in points:
        h = ax.scatter([p.x], [p.y], color=p.color, marker=p.marker, s=30, alpha=0.85, zorder=3)
        if p.label not in seen:
            seen.add(p.label)
            handles.append(h)
            labels.append(p.label)
    xs = [p.x for p in points if p.x > 0]
    ys = [p.y for p in points if p.y > 0]
    ridges = [r.tflops * 1e3 / r.gbps for r in roofs if r.tflops and r.gbps]
    x_lo = min(xs + ridges) / 4 if xs or ridges else 0.1
    x_hi = max(xs + ridges) * 4 if xs or ridges else 1000.0
    grid = np.geomspace(x_lo, x_hi, 200)
    for r in roofs:
        if r.tflops and r.gbps:
            y = np.minimum(r.tflops, grid * r.gbps / 1e3)
            (line,) = ax.plot(grid, y, linestyle=r.style, color=r.color, linewidth=1.4)
        elif r.tflops:
            line = ax.axhline(r.tflops, linestyle=r.style, color=r.color, linewidth=1.4)
        elif r.gbps:
            (line,) = ax.plot(grid, grid * r.gbps / 1e3, linestyle=r.style, color=r.color, linewidth=1.4)
        else:
            continue
        handles.append(line)
        labels.append(r.label)
        ys.append(r.tflops or 0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    _log_axis(ax.xaxis, [x_lo, x_hi])
    pos = [v for v in ys if v > 0]
    if pos:
        ax.set_ylim(min(pos) / 3, max(pos) * 2)
        _log_axis(ax.yaxis, [min(pos) / 3, max(pos) * 2])
    ax.set_xlabel("arithmetic intensity (FLOP / byte of minimum traffic)")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(plain(title), fontsize=10)
    _legend(ax, handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return to_svg(fig, salt)


# -- which plots: the swept axes of a run's workloads ------------------------------------------------

# Axes a plot can sweep: name, the Workload fields that change together, and the title. The x value is
# the first field. Earlier entries win ties; categorical fields (dtype, mask, score_mod, pass) are never x axes.
AXES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("seq", ("q_len", "kv_len"), "sequence length"),
    ("batch", ("batch",), "batch size"),
    ("heads", ("q_heads", "kv_heads"), "heads"),
    ("kv_len", ("kv_len",), "key/value length"),
    ("q_len", ("q_len",), "query length"),
    ("kv_heads", ("kv_heads",), "KV heads"),
    ("q_heads", ("q_heads",), "query heads"),
    ("dim", ("head_dim",), "head dim"),
)
_FIELDS = ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim", "dtype", "mask", "score_mod", "direction")


@dataclass
class Group:
    """Workloads that differ in one axis: one latency and one TFLOP/s plot."""

    axis: str                       # an AXES name, or '' for workload-index labels
    title: str                      # x-axis title
    fixed: str                      # what the group's workloads share, e.g. 'B32 H8 D64 fp16'
    workloads: list[Workload]
    x: list[float]
    ticks: Ticks | None = None      # categorical labels (index fallback)
    note: str = ""


def _fixed_label(w: Workload, fields: tuple[str, ...]) -> str:
    parts = [] if "batch" in fields else [f"B{w.batch}"]
    if "q_heads" not in fields and "kv_heads" not in fields:
        parts.append(f"H{w.q_heads}" + (f"/{w.kv_heads}" if w.gqa else ""))
    elif "kv_heads" in fields and "q_heads" not in fields:
        parts.append(f"H{w.q_heads}")
    elif "q_heads" in fields and "kv_heads" not in fields:
        parts.append(f"KV{w.kv_heads}")
    if "q_len" not in fields and "kv_len" not in fields:
        parts.append(f"S{w.q_len}" if w.q_len == w.kv_len else f"S{w.q_len}x{w.kv_len}")
    elif "kv_len" in fields and "q_len" not in fields:
        parts.append(f"Sq{w.q_len}")
    elif "q_len" in fields and "kv_len" not in fields:
        parts.append(f"Sk{w.kv_len}")
    if "head_dim" not in fields:
        parts.append(f"D{w.head_dim}")
    parts.append(w.dtype)
    parts += [x for x in (masks.label(w.mask), w.score_mod) if x]
    if w.direction != "fwd":
        parts.append(w.direction)
    return " ".join(parts)


def swept_groups(workloads: list[Workload]) -> list[Group]:
    """Groups of workloads that differ in exactly one axis, chosen greedily (largest first) until every
    workload is in a plot; workloads left over share one plot, on an axis whose values are all distinct
    among them if there is one (noting what else varies), else on workload-index labels."""
    ws = list(dict.fromkeys(workloads))
    candidates = []
    for prio, (name, fields, title) in enumerate(AXES):
        buckets: dict[tuple, list[Workload]] = {}
        for w in ws:
            rest = tuple(getattr(w, f) for f in _FIELDS if f not in fields)
            buckets.setdefault(rest, []).append(w)
        for members in buckets.values():
            xs = [getattr(w, fields[0]) for w in members]
            if len(members) >= 2 and len(set(xs)) == len(xs):
                candidates.append((-len(members), prio, ws.index(members[0]), name, fields, title, members))
    candidates.sort(key=lambda c: c[:3])
    covered: set[Workload] = set()
    groups = []
    for _, _, _, name, fields, title, members in candidates:
        if set(members) <= covered:
            continue
        covered.update(members)
        members = sorted(members, key=lambda w: getattr(w, fields[0]))
        groups.append(Group(name, title, _fixed_label(members[0], fields), members,
                            [float(getattr(w, fields[0])) for w in members]))
    left = [w for w in ws if w not in covered]
    if left:
        groups.append(_leftover_group(left))
    return groups


def _leftover_group(left: list[Workload]) -> Group:
    if len(left) >= 2:
        for name, fields, title in AXES:
            xs = [getattr(w, fields[0]) for w in left]
            if len(set(xs)) == len(xs):
                varying = [f for f in _FIELDS if f not in fields and len({getattr(w, f) for w in left}) > 1]
                members = sorted(left, key=lambda w: getattr(w, fields[0]))
                note = f"{', '.join(varying)} also vary" if varying else ""
                shared = [f for f in _FIELDS if f not in varying]
                fixed = _fixed_label(members[0], tuple(f for f in _FIELDS if f not in shared))
                return Group(name, title, fixed, members, [float(getattr(w, fields[0])) for w in members],
                             note=note)
    idx = [float(i) for i in range(len(left))]
    return Group("", "workload", "", left, idx, ticks=Ticks(idx, [w.label for w in left]))
