"""Cell formatting of the leaderboard tables: one place for the Markdown, LaTeX and HTML writers.

A table's columns (:func:`columns`), a row's cells as text (:func:`row_cells`), and for the web page
each column's sort key and type (:func:`column_keys`) and each cell's raw sort value
(:func:`sort_values`). Numbers use :func:`number` (fixed digits, scientific outside 1e-2 .. 1e5);
a missing value is ``–``. The bold marker ``**`` around a cell is Markdown; the LaTeX writer drops
it and the HTML writer turns it into ``<strong>``.

Example:
    >>> fmt_stat(29.4691, 27.63, 31.3)
    '29.47 [27.63, 31.30]'
    >>> number(None), number(1.5e-4), number(12.345, 1)
    ('–', '1.50e-04', '12.3')
"""

from __future__ import annotations

import json

from dglbench.leaderboard.protocol import LEAKAGE_DECIMALS
from dglbench.leaderboard.ranking import Row
from dglbench.leaderboard.schema import DefenseInfo
from dglbench.leaderboard.track import METRICS, Track
from dglbench.metrics import METRICS as REGISTRY

__all__ = [
    "ATTACK_LABELS",
    "METRIC_LABELS",
    "column_keys",
    "columns",
    "defense_text",
    "floors_of",
    "fmt_stat",
    "number",
    "params_text",
    "row_cells",
    "shown_params",
    "sort_values",
    "v2_cells",
    "v2_columns",
]

METRIC_LABELS = {name: REGISTRY[name].label for name in METRICS}  # labels from the metric registry
ATTACK_LABELS = {"inverting_gradients": "IG", "dlg": "DLG", "idlg": "iDLG"}


def number(x: float | None, digits: int = 2, scientific: bool = True) -> str:
    """``x`` with ``digits`` decimals (scientific when tiny or huge, unless ``scientific=False``); ``–`` for a
    missing value."""
    if x is None:
        return "–"
    if scientific and x != 0 and (abs(x) < 10 ** (-digits) or abs(x) >= 1e5):
        return f"{x:.{digits}e}"
    return f"{x:.{digits}f}"


def fmt_stat(
    mean: float | None, low: float | None, high: float | None, digits: int = 2, scientific: bool = True
) -> str:
    """``mean [low, high]`` (``–`` for a missing mean; the interval only when present)."""
    if mean is None:
        return "–"
    if low is None or high is None:
        return number(mean, digits, scientific)
    return f"{number(mean, digits, scientific)} [{number(low, digits, scientific)}, {number(high, digits, scientific)}]"


def params_text(params: dict) -> str:
    """``k=v, k=v`` of parameters (sorted by name)."""
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(params.items())) or "–"


def _defaults(defense: DefenseInfo) -> dict:
    """Default parameter values of a built-in defense (``{}`` when unknown), less its strength parameter (the
    class's ``strength``, else its first parameter), which a table always shows."""
    if defense.source != "builtin":
        return {}
    import dataclasses

    from dglbench.defenses import DEFENSES

    cls = DEFENSES.get(defense.name) if defense.name in DEFENSES else None
    if cls is None or not dataclasses.is_dataclass(cls):
        return {}
    fields = [f for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING]
    strength = getattr(cls, "strength", None) or (fields[0].name if fields else None)
    return {f.name: f.default for f in fields if f.name != strength}


def shown_params(defense: DefenseInfo) -> str:
    """The defense's parameters for a table: the strength and every value that differs from a built-in default.

    A privacy accountant's ``steps`` and ``sample_rate`` are left out where the entry carries its (ε, δ): on
    protocol-2 tracks the track sets them from its FedSGD run, the same for every entry, and ε says what they give.
    """
    from dglbench.leaderboard.protocol import ACCOUNTING_KEYS

    defaults = _defaults(defense)
    accounted = isinstance((defense.formal_privacy or {}).get("epsilon"), (int, float))
    hidden = set(ACCOUNTING_KEYS) if accounted and set(ACCOUNTING_KEYS) <= defense.params.keys() else set()
    return params_text(
        {k: v for k, v in defense.params.items() if k not in hidden and (k not in defaults or defaults[k] != v)}
    )


def defense_text(defense: DefenseInfo) -> str:
    """The defense's name (an entry point's own name), with its formal guarantee (``dp_sgd (ε=4.73, δ=1e-05)``)."""
    name = defense.spec if defense.source == "entry_point" else defense.name
    p = defense.formal_privacy or {}
    if isinstance(p.get("epsilon"), (int, float)):
        delta = f", δ={p['delta']:g}" if isinstance(p.get("delta"), (int, float)) else ""
        return f"{name} (ε={p['epsilon']:.3g}{delta})"
    return name


def _arrow(metric: str) -> str:
    return "↓" if METRICS[metric] else "↑"


def columns(track: Track) -> list[str]:
    """Column titles of a track's table (privacy columns: the ranking metric of each attack)."""
    m = track.ranking.metric
    attack_cols = [f"{ATTACK_LABELS.get(a.name, a.name)} {METRIC_LABELS[m]} {_arrow(m)}" for a in track.attacks]
    eps = repr(float(track.estimate.eps[0]))
    return ["Rank", "Defense", "Parameters", "Test acc. (%)", "Δ acc.", *attack_cols,
            f"{METRIC_LABELS[track.ranking.tie_break]} (rank attack)",
            "I2F lower bound", f"I2F exact (ε={eps})", "Grad. cosine", "Failures", "Frontier"]  # fmt: skip


def row_cells(track: Track, row: Row) -> list[str]:
    """The cells of one row, aligned with :func:`columns`."""
    e, m = row.entry, track.ranking.metric
    cells = [str(row.rank) if row.rank is not None else "–", defense_text(e.defense), shown_params(e.defense),
             number(row.accuracy, 1), number(row.drop, 1)]  # fmt: skip
    for spec in track.attacks:
        s = e.summary(spec.name)
        stat = s.metrics.get(m) if s else None
        text = fmt_stat(stat.mean, stat.ci95_low, stat.ci95_high) if stat else "–"
        cells.append(f"**{text}**" if row.attack == spec.name and row.rank is not None else text)
    first = e.summary(row.attack or track.attacks[0].name)
    tie = first.metrics.get(track.ranking.tie_break) if first else None
    cells.append(fmt_stat(tie.mean, tie.ci95_low, tie.ci95_high) if tie else "–")
    i2f = e.i2f
    eps = repr(float(track.estimate.eps[0]))
    cells.append(number(i2f.lower_bound.mean, 3) if i2f else "–")
    cells.append(number(i2f.exact[eps].mean, 3) if i2f and eps in i2f.exact else "–")
    cells.append(number(e.utility.gradient_cosine.mean, 3))
    failures = sum(s.failures for s in e.privacy)
    victims = sum(s.victims for s in e.privacy)
    cells.append(f"{failures}/{victims}")
    cells.append("★" if row.pareto else "")
    return cells


def column_keys(track: Track) -> list[tuple[str, str]]:
    """(data-key, data-type) per column of the web page, aligned with :func:`columns`."""
    keys = [("rank", "num"), ("defense", "text"), ("params", "text"), ("accuracy", "num"), ("drop", "num")]
    keys += [(f"attack-{a.name}", "num") for a in track.attacks]
    keys += [("tie", "num"), ("i2f-lower-bound", "num"), ("i2f-exact", "num"), ("cosine", "num"),
             ("failures", "num"), ("frontier", "num")]  # fmt: skip
    return keys


def sort_values(track: Track, row: Row) -> list[str]:
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


# ------------------------------------------------------------------------------------------------ protocol 2
def floors_of(rows: list[Row]) -> dict[str, float | None]:
    """The blind-guess floors of a protocol-2 board (the same victims for every entry: the first entry's)."""
    for r in rows:
        if r.entry.worst_case is not None:
            return dict(r.entry.worst_case.floors)
    return {}


def several_images(track: Track) -> bool:
    """Whether a victim of the protocol-2 ``track`` holds more than one image (a batch)."""
    return int(track.data.params.get("images_per_victim", 1)) > 1


def _v2_columns(track: Track, floors: dict[str, float | None]) -> list[tuple[str, str, str, bool]]:
    """(title, data-key, data-type, secondary) per column of a protocol-2 table."""
    cols = [("Rank", "rank", "num", False), ("Defense", "defense", "text", False),
            ("Parameters", "params", "text", False), ("Leakage ↓", "leakage", "num", False)]  # fmt: skip
    for m in track.ranking.leakage:
        floor = floors.get(m)
        suffix = f" (floor {number(floor)})" if floor is not None else ""
        cols.append((f"Worst {METRIC_LABELS[m]}{suffix}", f"worst-{m}", "num", False))
    if several_images(track):  # a batch scores as a whole: how many of its images came back is shown beside
        cols.append(("Images ≥ 40 dB (%)", "images-40db", "num", False))
    cols += [("Test acc. (%)", "accuracy", "num", False), ("Acc. drop (pts)", "drop", "num", False),
             ("Failed", "failures", "num", False), ("Frontier", "frontier", "num", False)]  # fmt: skip
    floor = floors.get(track.ranking.metric)  # every metric with its blind guess, the per-attack ones too
    suffix = f" (floor {number(floor)})" if floor is not None else ""
    for a in track.attacks:
        label = ATTACK_LABELS.get(a.name, a.name)
        cols.append((f"{label} {METRIC_LABELS[track.ranking.metric]}{suffix}", f"attack-{a.name}", "num", True))
    cols += [("Adaptive attacks", "adaptive", "text", True), ("I2F lower bound", "i2f-lower-bound", "num", True),
             ("Grad. cosine", "cosine", "num", True), ("Reference", "reference", "text", True)]  # fmt: skip
    return cols


def v2_columns(track: Track, floors: dict[str, float | None] | None = None) -> list[tuple[str, str, str, bool]]:
    """Protocol 2: ``(title, data-key, data-type, secondary)`` per column; secondary columns collapse on the page."""
    return _v2_columns(track, floors or {})


def v2_cells(track: Track, row: Row) -> list[tuple[str, object]]:
    """Protocol 2: ``(text, sort value)`` per column of :func:`v2_columns`."""
    e, w = row.entry, row.entry.worst_case
    # leakage lies in [0, 1]: fixed decimals, the ranks' resolution ("0.000", not "4.151e-05")
    leak = fmt_stat(row.value, row.low, row.high, LEAKAGE_DECIMALS, scientific=False) if row.value is not None else "–"
    cells: list[tuple[str, object]] = [
        (row.rank_text, row.rank), (defense_text(e.defense), None), (shown_params(e.defense), None),
        (f"**{leak}**" if row.rank is not None else leak, row.value),
    ]  # fmt: skip
    for m in track.ranking.leakage:
        st = w.metrics.get(m) if w else None
        cells.append((fmt_stat(st.mean, st.ci95_low, st.ci95_high, 3 if m == "ssim" else 2) if st else "–",
                      st.mean if st else None))  # fmt: skip
    if several_images(track):
        mean, low, high = row.image_share or (None, None, None)
        pct = [None if v is None else 100 * v for v in (mean, low, high)]
        cells.append((fmt_stat(pct[0], pct[1], pct[2], 1, scientific=False), pct[0]))
    failures = w.failures if w else None
    cells += [(number(row.accuracy, 1), row.accuracy), (number(row.drop, 1), row.drop),
              (f"{failures}/{w.victims}" if w else "–", failures),
              ("★" if row.pareto else "", 1 if row.pareto else 0)]  # fmt: skip
    m = track.ranking.metric
    for a in track.attacks:
        s = e.summary(a.name)
        st = s.metrics.get(m) if s else None
        cells.append((fmt_stat(st.mean, st.ci95_low, st.ci95_high) if st else "–", st.mean if st else None))
    listed = {a.name for a in track.attacks}
    adaptive = [f"{s.attack} ({s.failures} failed)" for s in e.privacy if s.attack not in listed]
    cells.append((", ".join(adaptive) or "–", None))
    cells.append((number(e.i2f.lower_bound.mean, 3) if e.i2f else "–", e.i2f.lower_bound.mean if e.i2f else None))
    cells.append((number(e.utility.gradient_cosine.mean, 3), e.utility.gradient_cosine.mean))
    cells.append((e.defense.reference or "–", None))
    return cells
