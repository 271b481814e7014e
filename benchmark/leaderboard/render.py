"""``dglbench leaderboard render``: every table, citation file and the web page, generated from the entries.

Outputs (all written atomically; rendering twice gives identical files):

* ``leaderboards/README.md`` — one Markdown table per track between ``<!-- leaderboard-<track>:begin -->``
  and ``...:end -->`` markers (text outside the markers is kept);
* ``leaderboards/v<N>/tables/<track>.csv`` (every number, one row per entry) and ``<track>.tex`` (booktabs);
* ``leaderboards/references.bib`` — dglbench, the I2F paper, the attacks and defenses;
* ``CITATION.cff`` at the repository root;
* ``leaderboards/index.html`` — self-contained page with sortable tables and the privacy–utility plots;
* ``leaderboards/v<N>/schema/*.schema.json`` — the JSON Schemas of the entry files.

Every table cell comes from :mod:`~dglbench.leaderboard.cells`; nothing here imports code an entry names.

Example:
    >>> fmt_stat(29.4691, 27.63, 31.3)
    '29.47 [27.63, 31.30]'
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date
from pathlib import Path

from dglbench.io import atomic_write_text, replace_between_markers
from dglbench.leaderboard.cells import METRIC_LABELS, columns, fmt_stat, row_cells
from dglbench.leaderboard.html import html_page
from dglbench.leaderboard.ranking import Board, rank_entries
from dglbench.leaderboard.schema import SCHEMA_VERSION, write_schemas
from dglbench.leaderboard.store import entry_files, load_entry
from dglbench.leaderboard.track import METRICS, Track, default_root, list_tracks, load_track

__all__ = ["Board", "boards", "csv_table", "fmt_stat", "latex_table", "markdown_table", "render_all"]


def boards(root: str | Path | None = None) -> list[Board]:
    """Every stored track with its entries ranked (tracks without entries included)."""
    root = Path(root or default_root())
    entries = [load_entry(p) for p in entry_files(root)]
    out = []
    for ref in list_tracks(root):
        track = load_track(ref, root)
        out.append(Board(track, rank_entries(track, entries)))
    return sorted(out, key=lambda b: (not b.rows, b.track.ref))  # tracks with entries first


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
    written += write_schemas(root / f"v{SCHEMA_VERSION}" / "schema")  # v1/schema keeps schema v1 as published
    return written
