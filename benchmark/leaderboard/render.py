"""``dglbench leaderboard render``: every table, citation file and the web page, generated from the entries.

Outputs (all written atomically; rendering twice gives identical files):

* ``leaderboards/README.md`` — one Markdown table per track between ``<!-- leaderboard-<track>:begin -->``
  and ``...:end -->`` markers (text outside the markers is kept);
* ``leaderboards/v<N>/tables/<track>.csv`` (every number, one row per entry) and ``<track>.tex`` (booktabs);
* ``leaderboards/references.bib`` — dglbench, the I2F paper, the attacks and defenses;
* ``CITATION.cff`` into ``repo_root`` only when one is given (``--repo-root``): render writes nothing outside
  the leaderboard root otherwise; dates come from the entries, never from the clock;
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
from pathlib import Path

from dglbench.io import atomic_write_text, replace_between_markers
from dglbench.leaderboard.cells import METRIC_LABELS, columns, fmt_stat, row_cells, several_images
from dglbench.leaderboard.html import html_page
from dglbench.leaderboard.ranking import Board, Row, rank_entries
from dglbench.leaderboard.schema import SCHEMA_VERSION, write_schemas
from dglbench.leaderboard.store import entry_files, load_entry
from dglbench.leaderboard.track import METRICS, Track, default_root, list_tracks, load_track

__all__ = [
    "SUPERSEDED",
    "Board",
    "boards",
    "csv_table",
    "fmt_stat",
    "how_to_cite",
    "latex_table",
    "markdown_table",
    "render_all",
    "rule_v2",
    "rule_v2_details",
]

#: Why the version-1 tracks are superseded (shown above them on every page).
SUPERSEDED = (
    "Superseded by version 2: v1 measured privacy on victims holding 1 image and utility on FedSGD clients "
    "holding 32, so noise calibrated to the batch size (dp_sgd) was charged 32 times less in utility than in "
    "privacy and ranked first for it; it ranked by the attack strongest on average over 8 victims of 8x8 digits, "
    "by PSNR alone. Its entries stay readable, validated and citable as published; their numbers are not "
    "comparable with version 2 (see leaderboards/README.md, 'From v1 to v2')."
)


def rule_v2(board: Board) -> str:
    """The ranking rule of a protocol-2 track in one sentence (:func:`rule_v2_details` says how it is applied)."""
    t = board.track
    return (
        f"Rule: entries within {t.ranking.max_accuracy_drop:g} points of the undefended FedSGD accuracy are ranked "
        "by their mean worst-case leakage over the suite's attacks (0 = a blind guess, 1 = the image itself; lower "
        'first), and entries whose 95 % intervals overlap as shown share a rank ("2-4").'
    )


def rule_v2_details(board: Board) -> str:
    """How the rule of :func:`rule_v2` is applied: leakage, floors, failures, intervals, ties and columns."""
    from dglbench.leaderboard.cells import floors_of
    from dglbench.leaderboard.protocol import LEAKAGE_DECIMALS

    t = board.track
    floors = floors_of(board.rows)
    shown = ", ".join(f"{METRIC_LABELS[m]} {floors[m]:.3g}" for m in t.ranking.leakage if floors.get(m) is not None)
    return (
        "How it is applied: a victim's leakage is the worst case over every attack of the suite that "
        "succeeded on it (the track's published attacks and the defense's adaptive attacks; an attack whose loss "
        "or metrics are not finite has failed there, but for the PSNR +inf of an exact copy, which scores 1) of "
        "the larger of "
        + " and ".join(METRIC_LABELS[m] for m in t.ranking.leakage)
        + " each as the fraction of the way from a blind guess (the data set's mean image; "
        f"{'floors: ' + shown if shown else 'floors in the records'}) to a perfect reconstruction, at least 0. "
        "The mean is over the victims on which an attack succeeded; Failed counts the others (every attack "
        "failed there), and an entry with none left has no leakage and is listed unranked. "
        f"Interval: 95 % percentile bootstrap over victims ({t.ranking.bootstrap} resamples, seed "
        f"{t.ranking.bootstrap_seed}); ranks compare the intervals at the table's {LEAKAGE_DECIMALS} decimals, so "
        "entries that read alike share a rank. Listed by mean "
        f"leakage, then mean worst-case {METRIC_LABELS[t.ranking.tie_break]} (lower first), then entry id. Entries "
        "beyond the accuracy bar are listed unranked. "
        + _test_accuracy_note(board)
        + "Acc. drop = undefended minus defended accuracy, in points "
        "(positive: accuracy lost). ★: privacy-utility frontier. Parameters: the strength and every value that "
        "differs from the defense's default; a privacy accountant's steps and sample rate are in its ε (the CSV "
        "lists all)."
        + (
            " Images ≥ 40 dB: a victim holds a batch, whose PSNR and SSIM are means over its images, so a few "
            "copies make its leakage 1; this column is the mean share of a victim's images that an attack "
            "recovered at 40 dB or more (an exact copy counts), with its bootstrap interval; shown, not ranked."
            if several_images(t)
            else ""
        )
    )


def _test_accuracy_note(board: Board) -> str:
    """What one test accuracy is: one FedSGD run, scored on so many images that one image is so many points."""
    u = board.track.utility
    sizes = sorted({r.entry.utility.fedsgd.test_images for r in board.rows})
    if len(sizes) != 1 or sizes[0] < 1:
        return ""
    n = sizes[0]
    return (
        f"Test acc.: top-1 accuracy after one FedSGD run ({u.rounds} rounds of {u.clients} clients, seed {u.seed}) "
        f"on the {n} test images, so one image is {100 / n:.2g} points and entries whose models differ can read "
        "alike. "
    )


def how_to_cite(board: Board) -> str:
    """The "How to cite" paragraph of a track (Markdown)."""
    from dglbench import __version__

    t = board.track
    example = board.rows[0].entry.entry_id if board.rows else f"{t.ref}/<defense>-<hash>"
    return (
        f"How to cite: name the track `{t.ref}`, the entry id (e.g. `{example}`) and the dglbench version "
        f"(`{__version__}`; each entry records the version it was measured with), and cite dglbench and the "
        f"track's references from `references.bib` (key `dglbench-{t.id}-v{t.version}`)."
    )


def _with_image_share(track: Track, row: Row, root: Path) -> Row:
    """``row`` with the share of its victims' images recovered at 40 dB or more (from its victims file)."""
    from dataclasses import replace

    from dglbench.leaderboard.aggregate import image_share
    from dglbench.leaderboard.store import entry_paths, load_victims

    e = row.entry
    _, victims = entry_paths(track.ref, e.defense.name, e.entry_id.rsplit("-", 1)[1], root)
    if not victims.exists():
        return row
    return replace(row, image_share=image_share(track, list(load_victims(victims).records)))


def boards(root: str | Path | None = None) -> list[Board]:
    """Every stored track with its entries ranked: protocol-2 tracks first, then with entries, CPU, by id.

    Ids are compared word by word (``natural-convnet5`` before its variant ``natural-convnet5-trained``, whose
    description refers to it; plain string order would put ``-`` before ``@``).
    """
    root = Path(root or default_root())
    entries = [load_entry(p) for p in entry_files(root)]
    out = []
    for ref in list_tracks(root):
        track = load_track(ref, root)
        rows = rank_entries(track, entries)
        if track.protocol == 2 and several_images(track):
            rows = [_with_image_share(track, r, root) for r in rows]
        out.append(Board(track, rows))
    return sorted(out, key=lambda b: (b.track.order_key[0], not b.rows, b.track.scale != "cpu", *b.track.order_key[1:]))


def _markdown_v2(board: Board) -> str:
    from dglbench.leaderboard.cells import floors_of, v2_cells, v2_columns

    t = board.track
    cols = [c for c in v2_columns(t, floors_of(board.rows)) if not c[3]]  # main columns; the CSV has the rest
    lines = [f"### {t.title} — `{t.ref}`", "", f"**{rule_v2(board)}**", "", rule_v2_details(board), "",
             how_to_cite(board), ""]  # fmt: skip
    if not board.rows:
        return "\n".join([*lines, "No entries yet: run `leaderboards/v2/baselines.sh` or submit one."]) + "\n"
    lines += ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in board.rows:
        cells = [text for (text, _), c in zip(v2_cells(t, row), v2_columns(t)) if not c[3]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    refs = sorted({(r.entry.defense.name, r.entry.defense.reference) for r in board.rows if r.entry.defense.reference})
    if refs:
        lines += ["", "References given by submitters: " + "; ".join(f"{n}: <{u}>" for n, u in refs) + "."]
    return "\n".join(lines) + "\n"


def markdown_table(board: Board) -> str:
    """The Markdown leaderboard of one track, with its ranking rule."""
    t = board.track
    if t.protocol == 2:
        return _markdown_v2(board)
    head = columns(t)
    lines = [
        f"### {t.title} — `{t.ref}`",
        "",
        f"Ranked by the mean {METRIC_LABELS[t.ranking.metric]} of the "
        f"{'strongest attack of the suite' if t.ranking.attack == 'strongest' else t.ranking.attack} "
        f"({'lower' if METRICS[t.ranking.metric] else 'higher'} = more private), among entries whose FedSGD test "
        f"accuracy is within {t.ranking.max_accuracy_drop:g} points of the undefended accuracy; the others are "
        "listed unranked. Bold: the attack the rank comes from; [95 % t-interval]; ★: privacy–utility frontier; "
        "Δ acc. = undefended minus defended accuracy, in points; parameters: the strength and every value that "
        "differs from the defense's default (the CSV has all).",
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
    eps_keys = [repr(float(e)) for e in t.estimate.eps] if t.estimate is not None else []
    head = ["track", "rank", "entry_id", "defense", "params", "source", "test_accuracy", "undefended_test_accuracy",
            "accuracy_drop", "eligible", "pareto", "ranking_attack", "ranking_value"]  # fmt: skip
    for a in t.attacks:
        head += [f"{a.name}.victims", f"{a.name}.failures"]
        for m in t.metrics:
            head += [f"{a.name}.{m}.{k}" for k in ("mean", "median", "ci95_low", "ci95_high", "n")]
    head += ["i2f.lower_bound.mean", *[f"i2f.exact[{k}].mean" for k in eps_keys], "gradient_cosine.mean",
             "dglbench", "git_commit", "date"]  # fmt: skip
    v2 = t.protocol == 2
    if v2:
        head += ["rank_range", "reference", "code_hash", "worst.victims", "worst.failures", "leakage.mean",
                 "leakage.bootstrap_low", "leakage.bootstrap_high"]  # fmt: skip
        head += [f"worst.{m}.{k}" for m in t.metrics for k in ("mean", "ci95_low", "ci95_high", "floor")]
    batch = v2 and several_images(t)
    if batch:
        head += ["images_40db.mean", "images_40db.bootstrap_low", "images_40db.bootstrap_high"]
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
        if v2:
            w = e.worst_case
            out += [row.rank_text, e.defense.reference, e.defense.code_hash, w.victims if w else None,
                    w.failures if w else None, w.leakage.mean if w else None, row.low, row.high]  # fmt: skip
            for m in t.metrics:
                st = w.metrics.get(m) if w else None
                out += [st.mean if st else None, st.ci95_low if st else None, st.ci95_high if st else None,
                        w.floors.get(m) if w else None]  # fmt: skip
        if batch:
            out += list(row.image_share or (None, None, None))
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


def _latex_v2(board: Board) -> str:
    from dglbench.leaderboard.cells import floors_of, v2_cells, v2_columns

    t = board.track
    cols = v2_columns(t, floors_of(board.rows))
    main = [i for i, c in enumerate(cols) if not c[3]]
    lines = [
        f"% {t.ref}: generated by `dglbench leaderboard render`; cite dglbench and the track (references.bib).",
        r"\begin{table}[t]",
        r"\centering\small",
        rf"\caption{{{_tex(t.title)} (\texttt{{{_tex(t.ref)}}}). Ranked by mean per-victim worst-case leakage over the "
        rf"attack suite and the defense's adaptive attacks (the larger of "
        + " and ".join(_tex(METRIC_LABELS[m]) for m in t.ranking.leakage)
        + r" as the fraction of the way from the blind guess, the data set's mean image, to a perfect "
        rf"reconstruction), among entries within {t.ranking.max_accuracy_drop:g} accuracy points of no defense; "
        r"[95\% bootstrap interval]; overlapping intervals share a rank; Acc.\ drop = undefended minus defended "
        r"accuracy in points.}",
        rf"\label{{tab:dglbench-{t.id}-v{t.version}}}",
        r"\begin{tabular}{" + "l" * 3 + "r" * (len(main) - 3) + "}",
        r"\toprule",
        " & ".join(_tex(cols[i][0]) for i in main) + r" \\",
        r"\midrule",
    ]
    for row in board.rows:
        cells = v2_cells(t, row)
        lines.append(" & ".join(_tex(cells[i][0]) for i in main) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def latex_table(board: Board) -> str:
    """A booktabs LaTeX table of one track (``\\usepackage{booktabs}``)."""
    t = board.track
    if t.protocol == 2:
        return _latex_v2(board)
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


def _strips(root: Path, all_boards: list[Board]) -> dict[str, str]:
    """Base64 PNG strips of reconstructions stored beside protocol-2 entries, by entry id."""
    import base64

    from dglbench.leaderboard.strip import strip_path

    out = {}
    for board in all_boards:
        t = board.track
        for row in board.rows:
            e = row.entry
            path = strip_path(root / f"v{t.version}" / "entries" / t.id / f"{e.entry_id.split('/', 1)[1]}.json")
            if path.exists():
                out[e.entry_id] = base64.b64encode(path.read_bytes()).decode("ascii")
    return out


def render_all(root: str | Path | None = None, repo_root: str | Path | None = None) -> list[Path]:
    """Write every generated file inside ``root`` (and ``CITATION.cff`` into ``repo_root`` when given)."""
    from dglbench import __version__
    from dglbench.leaderboard.cite import bibtex, citation_cff

    root = Path(root or default_root())
    repo_root = Path(repo_root) if repo_root else None
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
    released = max(dates) if dates else None  # from the entries, never the clock: rendering is deterministic
    tracks = [b.track for b in all_boards]
    bib = bibtex(
        version=__version__,
        year=(released or "")[:4],
        tracks=tracks,
        entries=[r.entry for b in all_boards for r in b.rows],
    )
    written.append(atomic_write_text(root / "references.bib", bib))
    if repo_root is not None:  # CITATION.cff lives outside the leaderboard root: written only when asked
        written.append(atomic_write_text(repo_root / "CITATION.cff", citation_cff(__version__, released)))
    written.append(atomic_write_text(root / "index.html", html_page(all_boards, _strips(root, all_boards))))
    written += write_schemas(root / f"v{SCHEMA_VERSION}" / "schema")  # v1/schema keeps schema v1 as published
    return written
