"""Jinja2 templates (autoescaped) of the HTML pages: inline CSS and JS only, nothing from the network."""

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1500px; padding: 0 1.5rem 3rem; color: #1b1b1b; }
h1 { font-size: 1.5rem; margin: 1.2rem 0 .3rem; } h2 { font-size: 1.2rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; } h3 { font-size: 1rem; margin-bottom: .2rem; }
.muted { color: #666; } code { background: #f2f2f2; padding: 0 .25em; border-radius: 3px; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: .1rem 1rem; margin: .5rem 0; }
dl.kv dt { color: #555; } dl.kv dd { margin: 0; }
table { border-collapse: collapse; font-size: 12.5px; margin: .5rem 0; }
th, td { border: 1px solid #ddd; padding: .2rem .45rem; text-align: left; vertical-align: top; }
td { white-space: nowrap; } td.wrap { white-space: normal; min-width: 24rem; }
td.wrap-s { white-space: normal; min-width: 14rem; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
thead th { background: #f6f6f6; }
table.sortable thead th { cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
tr.st-incorrect td, tr.st-error td, tr.st-oom td { background: #fdecea; }
tr.st-unsupported td { color: #777; }
tr.implausible td { background: #fff3cd; }
.flag { display: inline-block; font-size: 11px; padding: 0 .35em; border-radius: 3px; margin-right: .2em;
        background: #fff3cd; border: 1px solid #e0c36a; }
.flag.bad { background: #fdecea; border-color: #e3a09a; } .flag.good { background: #e6f4ea; border-color: #8fc79d; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
figure.plot { margin: 0; flex: 1 1 560px; max-width: 720px; }
figure.plot.wide { max-width: 900px; }
figure.plot svg { width: 100%; height: auto; display: block; }
figure.plot figcaption { font-size: 12px; color: #555; }
.scroll { overflow-x: auto; }
"""

SORT_JS = """
(function () {
  function key(td) {
    var v = td.getAttribute('data-v');
    if (v === null) { v = td.textContent; }
    v = v.trim();
    var n = parseFloat(v);
    return (v === '' ? [2, ''] : (isNaN(n) ? [1, v.toLowerCase()] : [0, n]));
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('thead th').forEach(function (th, col) {
      th.addEventListener('click', function () {
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        table.querySelectorAll('thead th').forEach(function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x[0] !== y[0]) { return x[0] - y[0]; }
          var c = x[1] < y[1] ? -1 : (x[1] > y[1] ? 1 : 0);
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""

_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="attnbench">
<title>{{ title }}</title>
<style>""" + CSS + """</style>
</head>
"""

_RUN_TITLE = "attnbench run {{ info.run_id }}{% if info.name %}: {{ info.name }}{% endif %}"
RUN_PAGE = _HEAD.replace("{{ title }}", _RUN_TITLE) + """<body>
<h1>attnbench run {{ info.run_id }}{% if info.name %}: {{ info.name }}{% endif %}</h1>
<p class="muted">{{ device }} · status {{ info.status }} · {{ v.entries|length }} measurements
({% for s, n in counts|dictsort %}{{ n }} {{ s }}{% if not loop.last %}, {% endif %}{% endfor %})</p>

<h2 id="summary">Summary</h2>
{% for prefix, items in software %}<dl class="kv">
{% for k, val in items %}<dt>{{ prefix }}{{ k }}</dt><dd>{{ val }}</dd>
{% endfor %}
</dl>
{% endfor %}
{% if ceiling_rows|selectattr(2, "ne", "unknown")|list %}
<h3>Ceilings</h3>
<table><thead><tr><th>ceiling</th><th>value</th><th>source</th></tr></thead><tbody>
{% for name, val, src in ceiling_rows %}<tr><td>{{ name }}</td><td class="n">{{ val }}</td><td>{{ src }}</td></tr>
{% endfor %}</tbody></table>
{% else %}
<p class="muted">No compute or memory ceilings are known for this device, so no % of peak, regime or roof.</p>
{% endif %}

<h3>Fastest implementation per workload{% if v.environments %} and device{% endif %} (median, among ok measurements)</h3>
{% if best %}
<table><thead><tr><th>workload</th>{% if v.environments %}<th>device</th>{% endif %}<th>fastest</th><th>median ms [95% CI]</th>
<th>figure of merit</th><th>runner-up</th><th>runner-up / fastest</th></tr></thead><tbody>
{% for e, second in best %}<tr><td>{{ e.m.workload.label }}</td>{% if v.environments %}<td>{{ e.device }}</td>{% endif %}
<td>{{ e.series }}{% for f in e.flags %} <span class="flag">{{ f }}</span>{% endfor %}</td>
<td class="n">{{ e.row.median_ms|num }} [{{ e.row.ci[0]|num }}, {{ e.row.ci[1]|num }}]</td>
<td class="n">{{ e.merit }}</td>
<td>{% if second %}{{ second.series }}{% endif %}</td>
<td class="n">{% if second %}{{ ratio(e, second) }}{% endif %}</td></tr>
{% endfor %}</tbody></table>
<p class="muted">Each row is its own measurement: a ratio between two rows is a hint, not a verdict (it has no test,
and unless they were interleaved, what changed between the two measurements is in neither interval). For a verdict,
use <code>attnbench compare</code>.</p>
{% else %}<p>No ok measurements.</p>{% endif %}

<h3>Flagged</h3>
{% if not attention and not host_bound and not unsupported %}<p>Nothing flagged.</p>{% endif %}
<ul>
{% for e in attention %}
{% if e.m.status != 'ok' %}
<li><span class="flag bad">{{ e.m.status }}</span> {{ e.m.workload.label }} · {{ e.series }}:
{{ e.m.reason }}
{% if e.m.rel_err is not none %} (rel err {{ '%.1e'|format(e.m.rel_err) }}
{%- if e.m.tolerance %}, tolerance {{ '%.1e'|format(e.m.tolerance) }}{% endif %}){% endif %}</li>
{% else %}
<li>{% for f in e.flags %}<span class="flag">{{ f }}</span>{% endfor %}
{{ e.m.workload.label }} · {{ e.series }}: {{ e.notes|join('; ') }}</li>
{% endif %}
{% endfor %}
{% if host_bound %}
<li><details><summary><span class="flag">host-bound</span> {{ host_bound|length }}
row{{ 's' if host_bound|length != 1 else '' }} host-bound: the host time per call exceeds the device time; see the
regime column</summary><ul>
{% for e in host_bound %}<li>{{ e.m.workload.label }} · {{ e.series }}: {{ e.notes[e.flags.index('host-bound')] }}</li>
{% endfor %}</ul></details></li>
{% endif %}
{% if unsupported %}<li><details><summary>{{ unsupported|length }} unsupported (impl × workload)</summary><ul>
{% for e in unsupported %}<li>{{ e.m.workload.label }} · {{ e.series }}: {{ e.m.reason }}</li>
{% endfor %}</ul></details></li>{% endif %}
</ul>

<h2 id="plots">Plots</h2>
{% if not plots %}<p>No ok measurements to plot.</p>{% endif %}
{% for g, lat, tf, bw in plots %}
<h3>{% if g.axis %}{{ g.title }} sweep{% else %}workloads{% endif %}{% if g.fixed %} · {{ g.fixed }}{% endif %}
{% if g.note %} <span class="muted">({{ g.note }})</span>{% endif %}</h3>
<div class="plots">
<figure class="plot" data-plot="latency-{{ loop.index0 }}">{{ lat }}<figcaption>Median latency per call with the
95% bootstrap CI of the median as error bars; axes are logarithmic where the data span more than {{ log_decades }} decades.</figcaption></figure>
{% if bw %}<figure class="plot" data-plot="gbps-{{ loop.index0 }}">{{ tf }}<figcaption>Memory-bound workloads: GB/s of
minimum traffic at the median (the CI inverted); dashed: measured copy ceiling (a copy reads and writes), dotted:
datasheet bandwidth, where known.</figcaption></figure>
{% else %}<figure class="plot" data-plot="tflops-{{ loop.index0 }}">{{ tf }}<figcaption>TFLOP/s at the median (the CI inverted);
dashed: measured matmul ceiling, dotted: datasheet peak, where known.</figcaption></figure>{% endif %}
</div>
{% endfor %}
{% if roof %}
<h3>Roofline</h3>
<div class="plots"><figure class="plot wide" data-plot="roofline">{{ roof }}<figcaption>Each ok measurement at its
arithmetic intensity (FLOPs / minimum bytes); roofs: min(compute peak, intensity × memory bandwidth).</figcaption></figure></div>
{% endif %}

<h2 id="table">All measurements</h2>
<p class="muted">Click a column header to sort.</p>
<div class="scroll"><table class="sortable" id="measurements"><thead><tr>
<th>workload</th><th>impl</th>{% if v.environments %}<th>device</th>{% endif %}<th>status</th><th>median ms</th><th>95% CI ms</th><th>TFLOP/s</th><th>GB/s</th>
<th>% of peak (of BW)</th><th>% of bound</th><th>FLOP/B</th><th>regime</th><th>rel err</th><th>backend</th><th>timer</th><th>n</th><th>sampling</th><th>notes</th>
</tr></thead><tbody>
{% for e in v.entries %}{% set m = e.m %}<tr class="st-{{ m.status }}{% if 'implausible' in e.flags %} implausible{% endif %}">
<td data-v="{{ e.index }}">{{ m.workload.label }}</td><td>{{ e.series }}</td>{% if v.environments %}<td>{{ e.device }}</td>{% endif %}<td>{{ m.status }}</td>
<td class="n">{{ e.row.median_ms|num }}</td>
<td class="n" data-v="{{ e.row.ci[0] if e.row.ci else '' }}">{% if e.row.ci %}{{ e.row.ci[0]|num }}–{{ e.row.ci[1]|num }}{% endif %}</td>
<td class="n">{{ e.row.tflops|num(3) }}</td><td class="n">{{ e.row.gbps|num(4) }}</td>
<td class="n" data-v="{{ e.pct|replace('% of BW', '') }}">{{ e.pct }}</td><td class="n">{{ e.pct_bound|num(3) }}</td><td class="n">{{ e.intensity|num(3) }}</td>
<td>{{ e.regime if e.regime != 'unknown' else '' }}</td>
<td class="n" data-v="{{ m.rel_err if m.rel_err is not none else '' }}">{% if m.rel_err is not none %}{{ '%.1e'|format(m.rel_err) }}{% endif %}</td>
<td>{{ m.backend }}</td><td>{{ m.timer }}</td><td class="n">{{ m.samples_ms|length if m.ok else '' }}</td><td class="wrap-s">{{ e.sampling }}</td>
<td class="wrap">{% for f in e.flags %}<span class="flag">{{ f }}</span>{% endfor %}
{{ m.reason }}{% if m.reason and e.notes %}; {% endif %}{{ e.notes|join('; ') }}</td>
</tr>
{% endfor %}</tbody></table></div>

<h2 id="methods">Methods</h2>
{{ methods }}
<p class="muted">Plot axes: per group of workloads that differ in one field, that field; workloads left over are
drawn against an axis whose values are all distinct (saying what else varies), or against their labels.
Percent of peak uses the measured ceiling where stored (<code>attnbench env --ceilings</code>), else the
datasheet figure (the Ceilings table says which); % of bound is over the roofline bound at the workload's
intensity. Flags: <em>implausible</em> above 100% of the compute or memory ceiling (warm cache, miscounted work
or a timer error); <em>host-bound</em> when the host time per call exceeds the device time; <em>throttled</em>
when an SM clock reading fell more than {{ (throttle * 100)|round|int }}% below the run's typical clock (the median of
the measurements' median clocks).</p>
<script>""" + SORT_JS + """</script>
</body>
</html>
"""

HISTORY_PAGE = _HEAD.replace("{{ title }}", "attnbench history{% if filters %} ({{ filters }}){% endif %}") + """<body>
<h1>attnbench history{% if filters %} <span class="muted">({{ filters }})</span>{% endif %}</h1>
<p class="muted">{{ h.runs|length }} runs, {{ h.cells|length }} cells (workload × impl × timer). Each point is a
cell's median in one run, with the 95% CI of the median (a bootstrap over its batches, as on the run page) as a band; circled points carry a gate
verdict (▲ regression, ▼ improvement).</p>
{% if not h.cells %}<p>No stored measurement matches.</p>{% endif %}

<h2 id="runs">Runs</h2>
<table class="sortable"><thead><tr><th>run</th><th>date</th><th>name</th><th>status</th><th>environment</th><th>measurements</th></tr></thead><tbody>
{% for r in h.runs %}<tr><td data-v="{{ r.run_id }}">#{{ r.run_id }}</td><td>{{ run_date(r) }}</td>
<td>{{ r.name }}</td><td>{{ r.status }}</td><td><code>{{ r.env_id }}</code></td><td class="n">{{ r.n_measurements }}</td></tr>
{% endfor %}</tbody></table>

<h2 id="plots">Plots</h2>
<div class="plots">
{% for label, svg in plots %}
<figure class="plot" data-plot="history-{{ loop.index0 }}">{{ svg }}<figcaption>{{ label }}</figcaption></figure>
{% endfor %}
</div>

<h2 id="table">Table</h2>
<p class="muted">Median ms [95% CI] per run. Click a column header to sort.</p>
<div class="scroll"><table class="sortable" id="history"><thead><tr><th>workload</th><th>impl</th><th>timer</th>
{% for r in h.runs %}<th>{{ run_title(r) }}</th>{% endfor %}</tr></thead><tbody>
{% for c, cells in rows %}<tr><td>{{ c.workload.label }}</td><td>{{ c.impl_label }}{% if c.device %} · {{ c.device }}{% endif %}</td><td>{{ c.timer }}</td>
{% for p, text in cells %}
<td class="n" data-v="{{ p.median_ms if p and p.median_ms is not none else '' }}">
{%- if p and p.verdict == REGRESSION %}<span class="flag bad">{{ text }}</span>
{%- elif p and p.verdict == IMPROVEMENT %}<span class="flag good">{{ text }}</span>
{%- else %}{{ text }}{% endif %}</td>
{% endfor %}
</tr>
{% endfor %}</tbody></table></div>
<script>""" + SORT_JS + """</script>
</body>
</html>
"""
