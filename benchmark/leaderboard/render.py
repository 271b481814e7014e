"""``dglbench leaderboard render``: every table, citation file and the web page, generated from the entries.

Outputs (all written atomically; rendering twice gives identical files):

* ``leaderboards/README.md`` — one Markdown table per track between ``<!-- leaderboard-<track>:begin -->``
  and ``...:end -->`` markers (text outside the markers is kept);
* ``leaderboards/v<N>/tables/<track>.csv`` (every number, one row per entry) and ``<track>.tex`` (booktabs);
* ``leaderboards/references.bib`` — dglbench, the I2F paper, the attacks and defenses;
* ``CITATION.cff`` at the repository root;
* ``leaderboards/index.html`` — self-contained page with sortable tables and the privacy–utility plots;
* ``leaderboards/v<N>/schema/*.schema.json`` — the JSON Schemas of the entry files.

Example:
    >>> fmt_stat(29.4691, 27.63, 31.3)
    '29.47 [27.63, 31.30]'
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from dglbench.io import atomic_write_text, replace_between_markers
from dglbench.leaderboard.ranking import Row, rank_entries
from dglbench.leaderboard.schema import DefenseInfo, write_schemas
from dglbench.leaderboard.store import entry_files, load_entry
from dglbench.leaderboard.track import METRICS, Track, default_root, list_tracks, load_track

__all__ = ["Board", "boards", "csv_table", "fmt_stat", "latex_table", "markdown_table", "render_all"]

METRIC_LABELS = {
    "l2_error": "l2 error", "rmse": "RMSE", "mse": "MSE", "psnr": "PSNR (dB)", "ssim": "SSIM",
    "lpips_alex": "LPIPS (Alex)", "lpips_vgg": "LPIPS (VGG)", "label_accuracy": "label acc.",
}  # fmt: skip
ATTACK_LABELS = {"inverting_gradients": "IG", "dlg": "DLG", "idlg": "iDLG"}


@dataclass(frozen=True)
class Board:
    """A track and its ranked rows."""

    track: Track
    rows: list[Row]


def boards(root: str | Path | None = None) -> list[Board]:
    """Every stored track with its entries ranked (tracks without entries included)."""
    root = Path(root or default_root())
    entries = [load_entry(p) for p in entry_files(root)]
    out = []
    for ref in list_tracks(root):
        track = load_track(ref, root)
        out.append(Board(track, rank_entries(track, entries)))
    return sorted(out, key=lambda b: (not b.rows, b.track.ref))  # tracks with entries first


def _num(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "–"
    if x != 0 and (abs(x) < 10 ** (-digits) or abs(x) >= 1e5):
        return f"{x:.{digits}e}"
    return f"{x:.{digits}f}"


def fmt_stat(mean: float | None, low: float | None, high: float | None, digits: int = 2) -> str:
    """``mean [low, high]`` (``–`` for a missing mean; the interval only when present)."""
    if mean is None:
        return "–"
    if low is None or high is None:
        return _num(mean, digits)
    return f"{_num(mean, digits)} [{_num(low, digits)}, {_num(high, digits)}]"


def params_text(params: dict) -> str:
    """``k=v, k=v`` of parameters (sorted by name)."""
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(params.items())) or "–"


def _defaults(defense: DefenseInfo) -> dict:
    """Default parameter values of a built-in defense (``{}`` when unknown), and its first parameter's name."""
    if defense.source != "builtin":
        return {}
    import dataclasses

    from dglbench.defenses import DEFENSES

    cls = DEFENSES.get(defense.name) if defense.name in DEFENSES else None
    if cls is None or not dataclasses.is_dataclass(cls):
        return {}
    fields = [f for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING]
    return {f.name: f.default for f in fields[1:]}  # the first parameter is the strength: always shown


def shown_params(defense: DefenseInfo) -> str:
    """The defense's parameters for a table: built-in defaults are left out, except the first parameter."""
    defaults = _defaults(defense)
    return params_text({k: v for k, v in defense.params.items() if k not in defaults or defaults[k] != v})


def defense_text(defense: DefenseInfo) -> str:
    """The defense's name, with its formal guarantee when it has one (``dp_sgd (ε=4.73, δ=1e-05)``)."""
    p = defense.formal_privacy or {}
    if isinstance(p.get("epsilon"), (int, float)):
        delta = f", δ={p['delta']:g}" if isinstance(p.get("delta"), (int, float)) else ""
        return f"{defense.name} (ε={p['epsilon']:.3g}{delta})"
    return defense.name


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
             _num(row.accuracy, 1), _num(row.drop, 1)]  # fmt: skip
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
    cells.append(_num(i2f.lower_bound.mean, 3) if i2f else "–")
    cells.append(_num(i2f.exact[eps].mean, 3) if i2f and eps in i2f.exact else "–")
    cells.append(_num(e.utility.gradient_cosine.mean, 3))
    failures = sum(s.failures for s in e.privacy)
    victims = sum(s.victims for s in e.privacy)
    cells.append(f"{failures}/{victims}")
    cells.append("★" if row.pareto else "")
    return cells


def markdown_table(board: Board) -> str:
    """The Markdown leaderboard of one track, with its ranking rule."""
    t = board.track
    head = columns(t)
    lines = [
        f"### {t.title} — `{t.ref}`",
        "",
        f"Ranked by the mean {METRIC_LABELS[t.ranking.metric]} of the "
        f"{'strongest attack of the suite' if t.ranking.attack == 'strongest' else t.ranking.attack} "
        f"({'lower' if METRICS[t.ranking.metric] else 'higher'} = more private), among entries whose FedSGD test "
        f"accuracy is within {t.ranking.max_accuracy_drop:g} points of the undefended accuracy; the others are "
        "listed unranked. Bold: the attack the rank comes from; [95 % t-interval]; ★: privacy–utility frontier; "
        "parameters at their defaults are not shown (the CSV has all).",
        "",
    ]
    if not board.rows:
        return "\n".join([*lines, "No entries yet: submit one with `dglbench leaderboard submit`."]) + "\n"
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in board.rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row_cells(t, row)) + " |")
    return "\n".join(lines) + "\n"


def csv_table(board: Board) -> str:
    """Every number of every entry of a track, one row per entry."""
    t = board.track
    eps_keys = [repr(float(e)) for e in t.estimate.eps]
    head = ["track", "rank", "entry_id", "defense", "params", "source", "test_accuracy", "undefended_test_accuracy",
            "accuracy_drop", "eligible", "pareto", "ranking_attack", "ranking_value"]  # fmt: skip
    for a in t.attacks:
        head += [f"{a.name}.victims", f"{a.name}.failures"]
        for m in t.metrics:
            head += [f"{a.name}.{m}.{k}" for k in ("mean", "median", "ci95_low", "ci95_high", "n")]
    head += ["i2f.lower_bound.mean", *[f"i2f.exact[{k}].mean" for k in eps_keys], "gradient_cosine.mean",
             "dglbench", "git_commit", "date"]  # fmt: skip
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head)
    for row in board.rows:
        e = row.entry
        fed = e.utility.fedsgd
        out = [t.ref, row.rank, e.entry_id, e.defense.name, json.dumps(e.defense.params, sort_keys=True),
               e.defense.source, fed.test_accuracy, fed.undefended_test_accuracy, fed.accuracy_drop, row.eligible,
               row.pareto, row.attack, row.value]  # fmt: skip
        for a in t.attacks:
            s = e.summary(a.name)
            out += [s.victims if s else None, s.failures if s else None]
            for m in t.metrics:
                st = s.metrics.get(m) if s else None
                out += [getattr(st, k) if st else None for k in ("mean", "median", "ci95_low", "ci95_high", "n")]
        i2f = e.i2f
        out += [i2f.lower_bound.mean if i2f else None]
        out += [i2f.exact[k].mean if i2f and k in i2f.exact else None for k in eps_keys]
        out += [e.utility.gradient_cosine.mean, e.provenance.dglbench, e.provenance.git_commit, e.provenance.date]
        writer.writerow(["" if v is None else v for v in out])
    return buf.getvalue()


_TEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "{": r"\{", "}": r"\}",
    "★": r"$\star$", "–": "--", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "Δ": r"$\Delta$",
    "ε": r"$\varepsilon$", "δ": r"$\delta$", "**": "",
}  # fmt: skip
_TEX_RE = re.compile("|".join(re.escape(k) for k in sorted(_TEX, key=len, reverse=True)))


def _tex(s: str) -> str:
    """``s`` with LaTeX's special characters escaped and the table's symbols in math mode (one pass)."""
    return _TEX_RE.sub(lambda m: _TEX[m.group(0)], s)


def latex_table(board: Board) -> str:
    """A booktabs LaTeX table of one track (``\\usepackage{booktabs}``)."""
    t = board.track
    head = columns(t)
    lines = [
        f"% {t.ref}: generated by `dglbench leaderboard render`; cite dglbench (leaderboards/references.bib).",
        r"\begin{table}[t]",
        r"\centering\small",
        rf"\caption{{{_tex(t.title)} (\texttt{{{_tex(t.ref)}}}). Ranked by mean {_tex(METRIC_LABELS[t.ranking.metric])}"
        rf" of the {'strongest attack' if t.ranking.attack == 'strongest' else _tex(t.ranking.attack)} among entries "
        rf"within {t.ranking.max_accuracy_drop:g} accuracy points of no defense; [95\% t-interval].}}",
        rf"\label{{tab:dglbench-{t.id}-v{t.version}}}",
        r"\begin{tabular}{" + "l" * 3 + "r" * (len(head) - 3) + "}",
        r"\toprule",
        " & ".join(_tex(h) for h in head) + r" \\",
        r"\midrule",
    ]
    for row in board.rows:
        lines.append(" & ".join(_tex(c) for c in row_cells(t, row)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


README_HEAD = """# dglbench leaderboards

Defenses against Deep Gradient Leakage, measured on fixed, versioned tracks: every entry is
attacked by the track's attack suite on the same victims, estimated with the Inversion Influence
Function (I2F), and charged for its utility (FedSGD test accuracy). Entries are JSON files under
`v1/entries/`, with their per-victim records beside them; the tables below, `v1/tables/*.csv|tex`,
`index.html` and `references.bib` are generated by `dglbench leaderboard render`. To add a defense,
see [SUBMITTING.md](SUBMITTING.md).
"""


def _marker(track: Track) -> str:
    return f"leaderboard-{track.id}-v{track.version}"


def render_all(root: str | Path | None = None, repo_root: str | Path | None = None) -> list[Path]:
    """Write every generated file; returns their paths."""
    from dglbench import __version__
    from dglbench.leaderboard.cite import bibtex, citation_cff
    from dglbench.leaderboard.html import html_page

    root = Path(root or default_root())
    repo_root = Path(repo_root) if repo_root else root.parent
    all_boards = boards(root)
    written: list[Path] = []
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.exists() else README_HEAD
    for board in all_boards:
        text = replace_between_markers(text, _marker(board.track), markdown_table(board))
        folder = root / f"v{board.track.version}" / "tables"
        written.append(atomic_write_text(folder / f"{board.track.id}.csv", csv_table(board)))
        written.append(atomic_write_text(folder / f"{board.track.id}.tex", latex_table(board)))
    written.append(atomic_write_text(readme, text))
    dates = [r.entry.provenance.date[:10] for b in all_boards for r in b.rows]
    released = max(dates) if dates else date.today().isoformat()
    written.append(atomic_write_text(root / "references.bib", bibtex(version=__version__, year=released[:4])))
    written.append(atomic_write_text(repo_root / "CITATION.cff", citation_cff(__version__, released)))
    written.append(atomic_write_text(root / "index.html", html_page(all_boards)))
    for version in sorted({b.track.version for b in all_boards}):
        written += write_schemas(root / f"v{version}" / "schema")
    return written
