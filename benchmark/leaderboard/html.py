"""The static leaderboard page: one self-contained HTML file, sortable tables, inline SVG plots.

No external resources: styles and a small script are inline, and each track's privacy–utility plot
is an inline SVG drawn by matplotlib (deterministic: no dates, fixed ids). Clicking a column header
sorts the table (again: reverses); missing values always sort last. Opening the page with
``#sort=<column key>-<asc|desc>`` (e.g. ``index.html#sort=accuracy-desc``) sorts every table on load.

Example:
    >>> page = html_page([])
    >>> page.startswith("<!doctype html>") and "data-sortable" in page
    True
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence

from dglbench.leaderboard.ranking import Row
from dglbench.leaderboard.render import (
    ATTACK_LABELS,
    METRIC_LABELS,
    Board,
    columns,
    params_text,
    row_cells,
    shown_params,
)
from dglbench.leaderboard.track import METRICS, Track

__all__ = ["html_page", "privacy_utility_svg"]

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:88rem;padding:0 1rem;
color:#1d1d1f;line-height:1.45}
h1{margin-bottom:.2rem}code{background:#f2f2f4;padding:0 .25rem;border-radius:3px}
table.leaderboard{border-collapse:collapse;font-size:.86rem;margin:1rem 0;width:100%}
table.leaderboard th,table.leaderboard td{border-bottom:1px solid #ddd;padding:.3rem .45rem;text-align:right;
white-space:nowrap}
table.leaderboard th{cursor:pointer;background:#f7f7f9;position:sticky;top:0;user-select:none}
table.leaderboard th[aria-sort=ascending]::after{content:" \\25B2"}
table.leaderboard th[aria-sort=descending]::after{content:" \\25BC"}
table.leaderboard td:nth-child(2),table.leaderboard td:nth-child(3),table.leaderboard th:nth-child(2),
table.leaderboard th:nth-child(3){text-align:left}
tr.unranked{color:#777}tr.frontier td:last-child{color:#c77800}
.scroll{overflow-x:auto}figure{margin:1rem 0}figure svg{max-width:46rem;height:auto}.rule{color:#444}
"""

_SCRIPT = r"""
(function () {
  function value(cell, type) {
    var v = cell.getAttribute("data-value");
    if (type === "num") { return v === null || v === "" ? null : parseFloat(v); }
    return (v !== null ? v : cell.textContent).toLowerCase();
  }
  function sortTable(table, key, dir) {
    var heads = table.tHead.rows[0].cells, idx = -1, type = "text", i;
    for (i = 0; i < heads.length; i++) {
      if (heads[i].getAttribute("data-key") === key) { idx = i; type = heads[i].getAttribute("data-type") || "text"; }
    }
    if (idx < 0) { return false; }
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a.cells[idx], type), y = value(b.cells[idx], type);
      if (x === null && y === null) { return 0; }
      if (x === null) { return 1; }
      if (y === null) { return -1; }
      var c = x < y ? -1 : (x > y ? 1 : 0);
      return dir === "desc" ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (i = 0; i < heads.length; i++) { heads[i].removeAttribute("aria-sort"); }
    heads[idx].setAttribute("aria-sort", dir === "desc" ? "descending" : "ascending");
    table.setAttribute("data-sorted-by", key + "-" + dir);
    return true;
  }
  var tables = Array.prototype.slice.call(document.querySelectorAll("table.leaderboard"));
  tables.forEach(function (table) {
    Array.prototype.slice.call(table.tHead.rows[0].cells).forEach(function (th) {
      th.addEventListener("click", function () {
        var key = th.getAttribute("data-key");
        var dir = table.getAttribute("data-sorted-by") === key + "-asc" ? "desc" : "asc";
        sortTable(table, key, dir);
      });
    });
    table.setAttribute("data-sortable", "ready");
  });
  var m = /^#sort=([A-Za-z0-9_-]+)-(asc|desc)$/.exec(window.location.hash);
  if (m) { tables.forEach(function (t) { sortTable(t, m[1], m[2]); }); }
  document.documentElement.setAttribute("data-script", "ran");
})();
"""


def _keys(track: Track) -> list[tuple[str, str]]:
    """(data-key, data-type) per column, aligned with :func:`~dglbench.leaderboard.render.columns`."""
    keys = [("rank", "num"), ("defense", "text"), ("params", "text"), ("accuracy", "num"), ("drop", "num")]
    keys += [(f"attack-{a.name}", "num") for a in track.attacks]
    keys += [("tie", "num"), ("i2f-lower-bound", "num"), ("i2f-exact", "num"), ("cosine", "num"),
             ("failures", "num"), ("frontier", "num")]  # fmt: skip
    return keys


def _sort_values(track: Track, row: Row) -> list[str]:
    e, m = row.entry, track.ranking.metric
    vals: list[object] = [row.rank, None, None, row.accuracy, row.drop]
    for a in track.attacks:
        s = e.summary(a.name)
        vals.append(s.metrics[m].mean if s and m in s.metrics else None)
    first = e.summary(row.attack or track.attacks[0].name)
    tie = first.metrics.get(track.ranking.tie_break) if first else None
    eps = repr(float(track.estimate.eps[0]))
    vals += [tie.mean if tie else None, e.i2f.lower_bound.mean if e.i2f else None,
             e.i2f.exact[eps].mean if e.i2f and eps in e.i2f.exact else None, e.utility.gradient_cosine.mean,
             sum(s.failures for s in e.privacy), 1 if row.pareto else 0]  # fmt: skip
    return ["" if v is None else repr(v) for v in vals]


def privacy_utility_svg(track: Track, rows: Sequence[Row]) -> str:
    """The privacy–utility plot of a track as an ``<svg>`` element (matplotlib, deterministic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = track.ranking.metric
    with matplotlib.rc_context({"svg.hashsalt": f"dglbench-{track.id}", "svg.fonttype": "none", "font.size": 9}):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        pts = [(r.accuracy, r.value, r) for r in rows if r.value is not None]
        for label, keep, style in (
            ("ranked", lambda r: r.rank is not None, {"marker": "o", "color": "#1f77b4"}),
            ("unranked (utility)", lambda r: r.rank is None, {"marker": "x", "color": "#999999"}),
        ):
            sel = [(x, y) for x, y, r in pts if keep(r)]
            if sel:
                ax.scatter([x for x, _ in sel], [y for _, y in sel], label=label, zorder=3, **style)
        front = sorted(((x, y) for x, y, r in pts if r.pareto), key=lambda p: p[0])
        if len(front) > 1:
            ax.plot([x for x, _ in front], [y for _, y in front], color="#ff7f0e", lw=1.2, label="Pareto frontier")
        for x, y, r in pts:  # label the frontier, the podium and the undefended baseline; the table has the rest
            if not (r.pareto or (r.rank is not None and r.rank <= 3) or r.entry.defense.name == "none"):
                continue
            params = shown_params(r.entry.defense)
            text = r.entry.defense.name + (f" {params}" if params != "–" else "")
            ax.annotate(text if len(text) <= 28 else text[:27] + "…", (x, y), fontsize=6.5, xytext=(3, 3),
                        textcoords="offset points", color="#444444")  # fmt: skip
        if rows:
            undefended = rows[0].entry.utility.fedsgd.undefended_test_accuracy
            ax.axvline(undefended - track.ranking.max_accuracy_drop, color="#d62728", ls="--", lw=0.8,
                       label=f"accuracy bar (−{track.ranking.max_accuracy_drop:g} points)")  # fmt: skip
        attack = (
            "strongest attack"
            if track.ranking.attack == "strongest"
            else ATTACK_LABELS.get(track.ranking.attack, track.ranking.attack)
        )
        ax.set_xlabel("FedSGD test accuracy (%)  →  more useful")
        more = "more leakage" if METRICS[metric] else "less leakage"
        ax.set_ylabel(f"{METRIC_LABELS[metric]} of the {attack}  ↑  {more}")
        ax.set_title(f"{track.ref}: privacy vs utility", fontsize=10)
        ax.grid(alpha=0.3)
        if pts or rows:
            ax.legend(fontsize=7, loc="best")
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
        plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :].strip()


def _table(track: Track, rows: Sequence[Row]) -> str:
    keys = _keys(track)
    head = "".join(
        f'<th data-key="{k}" data-type="{t}" scope="col">{html.escape(c)}</th>'
        for (k, t), c in zip(keys, columns(track))
    )
    body = []
    for row in rows:
        cls = ("ranked" if row.rank is not None else "unranked") + (" frontier" if row.pareto else "")
        cells = []
        for (_, kind), cell, value in zip(keys, row_cells(track, row), _sort_values(track, row)):
            text = html.escape(cell.replace("**", ""))
            if cell.startswith("**"):
                text = f"<strong>{text}</strong>"
            attr = f' data-value="{html.escape(value)}"' if kind == "num" else ""
            cells.append(f"<td{attr}>{text}</td>")
        title = html.escape(row.note or row.entry.entry_id)
        body.append(
            f'<tr class="{cls}" data-entry="{html.escape(row.entry.entry_id)}" title="{title}">{"".join(cells)}</tr>'
        )
    return (
        f'<div class="scroll"><table class="leaderboard" data-track="{html.escape(track.ref)}">\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{chr(10).join(body)}\n</tbody>\n</table></div>"
    )


def _results(track: Track, rows: Sequence[Row]) -> str:
    if not rows:
        return "<p><em>No entries yet: submit one with <code>dglbench leaderboard submit</code>.</em></p>"
    return (
        f"{_table(track, rows)}\n<figure>{privacy_utility_svg(track, rows)}<figcaption>Privacy vs utility on "
        f"{html.escape(track.ref)}: every entry; labels on the frontier, the top three and no defense."
        "</figcaption></figure>"
    )


def html_page(all_boards: Sequence[Board]) -> str:
    """The whole page."""
    sections = []
    for b in all_boards:
        t = b.track
        attack = "the strongest attack of the suite" if t.ranking.attack == "strongest" else t.ranking.attack
        rule = (
            f"Rank: mean {METRIC_LABELS[t.ranking.metric]} of {attack} "
            f"({'lower' if METRICS[t.ranking.metric] else 'higher'} is more private), among entries within "
            f"{t.ranking.max_accuracy_drop:g} points of the undefended FedSGD accuracy; others are unranked. "
            "Values: mean [95 % t-interval] over the track's victims. ★ privacy–utility frontier."
        )
        suite = ", ".join(f"{a.name} ({params_text(a.params)})" for a in t.attacks)
        sections.append(
            f'<section id="{html.escape(t.id)}-v{t.version}">\n'
            f"<h2>{html.escape(t.title)} <code>{html.escape(t.ref)}</code></h2>\n"
            f'<p>{html.escape(t.description)}</p>\n<p class="rule">{html.escape(rule)}</p>\n'
            f'<p class="rule">Attack suite: {html.escape(suite)}.</p>\n{_results(t, b.rows)}\n</section>'
        )
    page = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>dglbench leaderboards</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        "<h1>dglbench leaderboards</h1>\n<p>Defenses against Deep Gradient Leakage on fixed, versioned tracks: "
        "attacked by each track's suite, estimated with the Inversion Influence Function (I2F), charged for utility "
        "(FedSGD test accuracy). Generated by <code>dglbench leaderboard render</code> from the JSON entries; "
        "click a column to sort.</p>\n"
        + "\n".join(sections)
        + f'\n<script data-sortable="script">{_SCRIPT}</script>\n</body>\n</html>\n'
    )
    return re.sub(r"[ \t]+\n", "\n", page)
