"""The static leaderboard page: one self-contained HTML file, sortable tables, inline SVG plots.

No external resources: the page is ``templates/page.html`` (its styles and small sorting script
inline) with one ``templates/section.html`` per track filled in, and each track's privacy–utility
plot is an inline SVG drawn by matplotlib (deterministic: no dates, fixed ids). Cells come from
:mod:`~dglbench.leaderboard.cells`, as in the Markdown and LaTeX tables. Clicking a column header
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
from functools import cache
from importlib.resources import files
from typing import Any

from dglbench.leaderboard.cells import (
    ATTACK_LABELS,
    METRIC_LABELS,
    column_keys,
    columns,
    floors_of,
    params_text,
    row_cells,
    shown_params,
    sort_values,
    v2_cells,
    v2_columns,
)
from dglbench.leaderboard.ranking import Board, Row
from dglbench.leaderboard.track import METRICS, Track

__all__ = ["fill", "html_page", "privacy_utility_svg"]

_PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")
SECONDARY = ' class="secondary"'


@cache
def _template(name: str) -> str:
    """A template file shipped in ``dglbench/leaderboard/templates/``."""
    return files("dglbench.leaderboard").joinpath("templates", name).read_text(encoding="utf-8")


def fill(template: str, **values: str) -> str:
    """``template`` with each ``{{ name }}`` replaced by ``values[name]`` in one pass (values are not re-read).

    Example:
        >>> fill("<p>{{ a }} {{ b }}</p>", a="{{ b }}", b="x")
        '<p>{{ b }} x</p>'
    """
    names = set(_PLACEHOLDER.findall(template))
    if names != set(values):
        raise KeyError(f"template placeholders {sorted(names)} do not match the values {sorted(values)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _merge_close_labels(
    labels: Sequence[tuple[float, float, str]], points: Sequence[tuple[float, float, object]], near: float = 0.04
) -> list[tuple[float, float, str]]:
    """Labels of points within ``near`` of the axes' spans of each other become one label, a line per point
    (otherwise they print over each other), anchored at the highest point of the group.

    Example:
        >>> _merge_close_labels([(100, 0.42, "a"), (100, 0.43, "b"), (90, 0.0, "c")], [(100, 1.0, 0), (90, 0.0, 0)])
        [(100, 0.43, 'b\\na'), (90, 0.0, 'c')]
    """
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    groups: list[list[tuple[float, float, str]]] = []
    for label in sorted(labels, key=lambda t: (-t[1], t[0], t[2])):
        for group in groups:
            x0, y0, _ = group[-1]
            if abs(label[0] - x0) <= near * span_x and abs(label[1] - y0) <= near * span_y:
                group.append(label)
                break
        else:
            groups.append([label])
    return [(g[0][0], g[0][1], "\n".join(t for _, _, t in g)) for g in groups]


def _text_box(note: Any, renderer: Any) -> Any:
    """The drawn extent of an annotation's text alone (its own extent includes its leader line)."""
    from matplotlib.text import Text

    note.update_positions(renderer)
    return Text.get_window_extent(note, renderer)


def _lift_overlapping_labels(
    fig: Any,
    ax: Any,
    notes: Sequence[tuple[Any, set[tuple[float, float]]]],
    points: Sequence[tuple[float, float]],
    pad: float = 1.0,
    renderer: Any = None,
) -> float:
    """Move each label up, lowest point first, until its text box clears the labels placed before it and the
    markers of the points it does not name (``notes``: each annotation with the points it names).

    ``_merge_close_labels`` joins the labels of points that nearly coincide; this handles the labels of points
    apart whose texts still meet (a long label running into its right-hand neighbour's at the same height, or
    over a marker). The boxes are the drawn texts' extents (matplotlib's renderer), so the result holds for any
    label length; call it after every artist that can move the axes' limits has been added. ``renderer``: the
    canvas's, from a draw made after those artists (else it draws the figure). Returns how far (pixels) the
    highest label reaches above the axes (negative: inside).
    """
    from matplotlib.transforms import Bbox

    if renderer is None:
        fig.canvas.draw()  # the axes' limits are final only once drawn (autoscaling is lazy)
        renderer = fig.canvas.get_renderer()
    half = 3.5 * fig.dpi / 72.0  # a default scatter marker (36 pt²) is 6 points across, plus a little
    markers = {}
    for x, y in points:
        cx, cy = ax.transData.transform((x, y))
        markers[(x, y)] = Bbox.from_extents(cx - half, cy - half, cx + half, cy + half)
    placed: list[Any] = []
    for note, own in sorted(notes, key=lambda n: (n[0].xy[1], n[0].xy[0])):
        others = [box for xy, box in markers.items() if xy not in own]
        for _ in range(len(notes) + len(others)):
            box = _text_box(note, renderer)
            clash = [b for b in placed + others if box.overlaps(b)]
            if not clash:
                break
            dx, dy = note.xyann
            note.xyann = (dx, dy + (max(b.y1 for b in clash) - box.y0 + pad) * 72.0 / fig.dpi)
        placed.append(_text_box(note, renderer))
    return max((box.y1 for box in placed), default=0.0) - ax.get_window_extent(renderer).y1


def _place_labels(
    fig: Any,
    ax: Any,
    notes: Sequence[tuple[Any, set[tuple[float, float]]]],
    points: Sequence[tuple[float, float]],
) -> None:
    """Put a label that would cross the axes' right edge to the left of its point, lift the labels clear of each
    other (``_lift_overlapping_labels``) and raise the top of the y axis until the highest label is inside the
    axes, so that no label crosses the frame. Growing the y axis moves nothing sideways: one flip is enough."""
    fig.canvas.draw()  # the axes' limits are final only once drawn (autoscaling is lazy)
    renderer = fig.canvas.get_renderer()
    right = ax.get_window_extent(renderer).x1
    for note, _ in notes:
        if _text_box(note, renderer).x1 > right:
            note.set_horizontalalignment("right")
            note.xyann = (-abs(note.xyann[0]), note.xyann[1])
    start = [note.xyann[1] for note, _ in notes]
    for attempt in range(5):  # the last attempt ends with a lift, so the labels never overlap
        for (note, _own), y in zip(notes, start):
            note.xyann = (note.xyann[0], y)
        over = _lift_overlapping_labels(fig, ax, notes, points, renderer=renderer)  # set_ylim needs no draw
        if over <= 0 or attempt == 4:
            return
        low, high = ax.get_ylim()
        ax.set_ylim(low, high + (high - low) * (over + 2.0) / ax.get_window_extent().height)


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
        labels = []  # the frontier, the podium and the undefended baseline; the table has the rest
        for x, y, r in pts:
            if r.pareto or (r.rank is not None and r.rank <= 3) or r.entry.defense.name == "none":
                params = shown_params(r.entry.defense)
                text = r.entry.defense.name + (f" {params}" if params != "–" else "")
                labels.append((x, y, text if len(text) <= 28 else text[:27] + "…"))
        notes = []  # each label with the points it names (a merged label names several)
        leader = {"arrowstyle": "-", "color": "#aaaaaa", "lw": 0.5, "shrinkA": 0, "shrinkB": 3}
        for x, y, text in _merge_close_labels(labels, pts):
            note = ax.annotate(text, (x, y), fontsize=6.5, xytext=(3, 3), textcoords="offset points",
                               color="#444444", arrowprops=leader)  # fmt: skip
            notes.append((note, {(lx, ly) for lx, ly, lt in labels if lt in text.split("\n")}))
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
        if track.protocol == 2:
            ax.set_ylabel("mean worst-case leakage  ↑  more leakage\n(0 blind guess, 1 perfect)")
        else:
            ax.set_ylabel(f"{METRIC_LABELS[metric]} of the {attack}  ↑  {more}")
        ax.set_title(f"{track.ref}: privacy vs utility", fontsize=10)
        ax.grid(alpha=0.3)
        if pts or rows:
            ax.legend(fontsize=7, loc="best")
        _place_labels(fig, ax, notes, [(x, y) for x, y, _ in pts])
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
        plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :].strip()


def _table_v2(track: Track, rows: Sequence[Row]) -> str:
    """Protocol 2: the main columns, and secondary ones that a checkbox above the table shows (no script)."""
    cols = v2_columns(track, floors_of(list(rows)))
    head = "".join(
        f'<th data-key="{k}" data-type="{t}" scope="col"{SECONDARY if sec else ""}>{html.escape(c)}</th>'
        for c, k, t, sec in cols
    )
    body = []
    for row in rows:
        cls = ("ranked" if row.rank is not None else "unranked") + (" frontier" if row.pareto else "")
        cells = []
        for (_, _, kind, sec), (cell, value) in zip(cols, v2_cells(track, row)):
            text = html.escape(cell.replace("**", ""))
            if cell.startswith("**"):
                text = f"<strong>{text}</strong>"
            attr = f' data-value="{"" if value is None else html.escape(repr(value))}"' if kind == "num" else ""
            cells.append(f"<td{attr}{SECONDARY if sec else ''}>{text}</td>")
        title = html.escape(row.note or row.entry.entry_id)
        body.append(
            f'<tr class="{cls}" data-entry="{html.escape(row.entry.entry_id)}" title="{title}">{"".join(cells)}</tr>'
        )
    box = f"more-{track.id}-v{track.version}"
    return (
        f'<input type="checkbox" class="more" id="{box}"><label for="{box}"> show secondary columns (per attack, '
        "adaptive attacks, I2F, gradient cosine, reference)</label>\n"
        f'<div class="scroll"><table class="leaderboard" data-track="{html.escape(track.ref)}">\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{chr(10).join(body)}\n</tbody>\n</table></div>"
    )


def _table(track: Track, rows: Sequence[Row]) -> str:
    if track.protocol == 2:
        return _table_v2(track, rows)
    keys = column_keys(track)
    head = "".join(
        f'<th data-key="{k}" data-type="{t}" scope="col">{html.escape(c)}</th>'
        for (k, t), c in zip(keys, columns(track))
    )
    body = []
    for row in rows:
        cls = ("ranked" if row.rank is not None else "unranked") + (" frontier" if row.pareto else "")
        cells = []
        for (_, kind), cell, value in zip(keys, row_cells(track, row), sort_values(track, row)):
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


def _strips(rows: Sequence[Row], strips: dict[str, str]) -> str:
    """Each entry's strip of reconstructions (base64 PNG, embedded), in table order."""
    from dglbench.leaderboard.strip import STRIP_VICTIMS

    shown = [(r, strips[r.entry.entry_id]) for r in rows if r.entry.entry_id in strips]
    if not shown:
        return ""
    items = "".join(
        f'<figure class="strip"><img alt="reconstructions of {html.escape(r.entry.entry_id)}" '
        f'src="data:image/png;base64,{b64}"><figcaption>{html.escape(r.rank_text)} '
        f"{html.escape(r.entry.defense.name)} {html.escape(shown_params(r.entry.defense))}</figcaption></figure>"
        for r, b64 in shown
    )
    return (
        f"<details><summary>Reconstructions of the first {STRIP_VICTIMS} victims per entry (top: private image; "
        f"bottom: the attack of the victim's worst PSNR; crossed out: every attack failed)</summary>{items}</details>"
    )


def _results(track: Track, rows: Sequence[Row], strips: dict[str, str] | None = None) -> str:
    if not rows:
        return "<p><em>No entries yet: submit one with <code>dglbench leaderboard submit</code>.</em></p>"
    return (
        f"{_table(track, rows)}\n<figure>{privacy_utility_svg(track, rows)}<figcaption>Privacy vs utility on "
        f"{html.escape(track.ref)}: every entry; labels on the frontier, the top three and no defense."
        f"</figcaption></figure>{_strips(rows, strips or {})}"
    )


def _section(board: Board, strips: dict[str, str] | None = None) -> str:
    t = board.track
    if t.protocol == 2:
        return _section_v2(board, strips or {})
    attack = "the strongest attack of the suite" if t.ranking.attack == "strongest" else t.ranking.attack
    rule = (
        f"Rank: mean {METRIC_LABELS[t.ranking.metric]} of {attack} "
        f"({'lower' if METRICS[t.ranking.metric] else 'higher'} is more private), among entries within "
        f"{t.ranking.max_accuracy_drop:g} points of the undefended FedSGD accuracy; others are unranked. "
        "Values: mean [95 % t-interval] over the track's victims. ★ privacy–utility frontier."
    )
    suite = ", ".join(f"{a.name} ({params_text(a.params)})" for a in t.attacks)
    return fill(
        _template("section.html"), anchor=html.escape(f"{t.id}-v{t.version}"), title=html.escape(t.title),
        ref=html.escape(t.ref), description=html.escape(t.description), rule=f'<p class="rule">{html.escape(rule)}</p>',
        suite=html.escape(suite), results=_results(t, board.rows), extra="",
    ).rstrip("\n")  # fmt: skip


def _section_v2(board: Board, strips: dict[str, str]) -> str:
    from dglbench.leaderboard.cite import track_bibtex
    from dglbench.leaderboard.render import rule_v2, rule_v2_details

    t = board.track
    suite = ", ".join(f"{a.name} ({params_text(a.params)})" for a in t.attacks)
    suite += "; plus the adaptive attacks each defense declares"
    rule = (  # the rule in one sentence; how it is applied one click away
        f'<p class="rule"><strong>{html.escape(rule_v2(board))}</strong></p>\n<details class="rule"><summary>How '
        f"the rule is applied (leakage, blind-guess floors, failed attacks, intervals, ties, columns)</summary>"
        f'<p class="rule">{html.escape(rule_v2_details(board))}</p></details>'
    )
    extra = (
        f"<details><summary>BibTeX of this track (cite with the entry id and the dglbench version)</summary>"
        f"<pre>{html.escape(track_bibtex(t))}</pre></details>"
    )
    return fill(
        _template("section.html"), anchor=html.escape(f"{t.id}-v{t.version}"), title=html.escape(t.title),
        ref=html.escape(t.ref), description=html.escape(t.description), rule=rule,
        suite=html.escape(suite), results=_results(t, board.rows, strips), extra=extra,
    ).rstrip("\n")  # fmt: skip


def html_page(all_boards: Sequence[Board], strips: dict[str, str] | None = None) -> str:
    """The whole page: protocol-2 tracks first, then the superseded v1 tracks under their own heading.

    ``strips`` maps entry ids to base64 PNG strips of reconstructions (:mod:`~dglbench.leaderboard.strip`).
    """
    from dglbench.leaderboard.render import SUPERSEDED

    current = [b for b in all_boards if not b.track.superseded]
    old = [b for b in all_boards if b.track.superseded]
    parts = [_section(b, strips) for b in current]
    if old:
        parts.append(f'<h2 id="v1">Version 1 (superseded)</h2>\n<p class="rule">{html.escape(SUPERSEDED)}</p>')
        parts += [_section(b) for b in old]
    page = fill(_template("page.html"), sections="\n".join(parts))
    return re.sub(r"[ \t]+\n", "\n", page)
