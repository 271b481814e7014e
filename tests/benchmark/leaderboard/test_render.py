"""``render``: README blocks, CSV, LaTeX, BibTeX, CITATION.cff and the HTML page (checked in headless Chromium)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dglbench.leaderboard.render import render_all
from dglbench.leaderboard.store import entry_files, load_entry

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture
def rendered(lb_root, synthetic_entry):
    for i, (name, params, psnr, acc) in enumerate(
        [("none", {}, 75.0, 80.0), ("gaussian", {"sigma": 0.01}, 25.0, 78.5), ("gaussian", {"sigma": 1e3}, 4.0, 10.0)]
    ):
        synthetic_entry(lb_root, name, params, psnr=psnr, accuracy=acc, seed=i)
    (lb_root / "README.md").write_text("# My leaderboards\n\nHand-written intro.\n")
    repo = lb_root.parent
    written = render_all(lb_root, repo)
    return lb_root, repo, written


def test_render_writes_every_output_and_is_deterministic(rendered):
    root, repo, written = rendered
    names = {p.name for p in written}
    assert {"README.md", "digits-convnet5.csv", "digits-convnet5.tex", "references.bib", "CITATION.cff",
            "index.html", "entry.schema.json", "victims.schema.json"} <= names  # fmt: skip
    before = {p: p.read_bytes() for p in written}
    render_all(root, repo)
    assert {p: p.read_bytes() for p in written} == before


def test_readme_block_between_markers_keeps_the_rest(rendered):
    root, _, _ = rendered
    text = (root / "README.md").read_text()
    assert text.startswith("# My leaderboards\n\nHand-written intro.\n")
    block = text.split("<!-- leaderboard-digits-convnet5-v1:begin -->")[1].split(
        "<!-- leaderboard-digits-convnet5-v1:end -->"
    )[0]
    table = [line for line in block.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3  # header + one row per entry
    assert table[1].startswith("| 1 | gaussian | sigma=0.01 ")
    assert table[-1].startswith("| – | gaussian | sigma=1000.0 ")  # destroyed utility: unranked, last


def test_csv_holds_the_entries_numbers(rendered):
    root, _, _ = rendered
    rows = list(csv.DictReader(io.StringIO((root / "v1" / "tables" / "digits-convnet5.csv").read_text())))
    entries = {e.entry_id: e for e in map(load_entry, entry_files(root))}
    assert len(rows) == len(entries) == 3
    for row in rows:
        e = entries[row["entry_id"]]
        assert float(row["test_accuracy"]) == e.utility.fedsgd.test_accuracy
        assert float(row["inverting_gradients.psnr.mean"]) == e.summary("inverting_gradients").metrics["psnr"].mean
        assert int(row["dlg.victims"]) == 8


def test_latex_bibtex_and_citation_files(rendered):
    root, repo, _ = rendered
    tex = (root / "v1" / "tables" / "digits-convnet5.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and tex.count(r"\\") == 1 + 3
    assert "**" not in tex and "★" not in tex
    bib = (root / "references.bib").read_text()
    keys = re.findall(r"^@\w+\{([\w]+),", bib, flags=re.M)
    assert {"dglbench", "zhang2023i2f", "zhu2019dlg", "geiping2020inverting"} <= set(keys)
    assert bib.count("{") == bib.count("}")
    cff = yaml.safe_load((repo / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["title"].startswith("dglbench") and cff["authors"]
    assert cff["references"][0]["title"] == "Understanding Deep Gradient Leakage via Inversion Influence Functions"


def test_html_page_is_self_contained(rendered):
    root, _, _ = rendered
    page = (root / "index.html").read_text()
    assert "<svg" in page and "<script" in page and '<table class="leaderboard"' in page
    assert not re.search(r"""(src|href)=["']https?:""", page)  # nothing loaded from the network


def _dump_dom(url: str, tmp_path: Path) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'chrome'}"]  # fmt: skip
    done = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_html_tables_render_and_sort_in_headless_chromium(rendered, tmp_path):
    root, _, _ = rendered
    url = (root / "index.html").resolve().as_uri()
    dom = _dump_dom(url, tmp_path)
    assert 'data-script="ran"' in dom and 'data-sortable="ready"' in dom
    assert len(re.findall(r"<tr class=\"(?:un)?ranked", dom)) == 3
    dom = _dump_dom(url + "#sort=accuracy-desc", tmp_path)
    assert 'data-sorted-by="accuracy-desc"' in dom
    table = dom.split('<table class="leaderboard"')[1].split("</table>")[0]
    rows = re.findall(r"<tr class=[^>]*>(.*?)</tr>", table, flags=re.S)
    accuracy = [float(re.findall(r'<td data-value="([^"]*)"', r)[1]) for r in rows]  # rank, accuracy, ...
    assert accuracy == sorted(accuracy, reverse=True) and len(accuracy) == 3
    dom = _dump_dom(url + "#sort=rank-asc", tmp_path)
    table = dom.split('<table class="leaderboard"')[1].split("</table>")[0]
    ranks = [
        re.findall(r'<td data-value="([^"]*)"', r)[0]
        for r in re.findall(r"<tr class=[^>]*>(.*?)</tr>", table, flags=re.S)
    ]
    assert ranks == ["1", "2", ""]  # unranked last


def _v2_root(tmp_path: Path) -> Path:
    """A leaderboard root with the natural-convnet5@2 track and three entries made from a stored one."""
    from dataclasses import replace

    from dglbench.io import atomic_write_json
    from dglbench.leaderboard.schema import WorstCaseSummary
    from dglbench.leaderboard.stats import summarize
    from dglbench.leaderboard.track import default_root
    from dglbench.leaderboard.typed import to_dict

    root = tmp_path / "lb"
    (root / "v2" / "tracks").mkdir(parents=True)
    shutil.copy(default_root() / "v2" / "tracks" / "natural-convnet5.yaml", root / "v2" / "tracks")
    base = load_entry(entry_files(default_root())[0])
    for name, leak, low, high, acc in (("none", 0.9, 0.85, 0.95, 60.0), ("gaussian", 0.4, 0.3, 0.5, 58.0),
                                       ("laplace", 0.45, 0.35, 0.55, 57.0)):  # fmt: skip
        stat = summarize([leak - 0.01, leak + 0.01])
        w = WorstCaseSummary(64, 0, {"dlg": 0}, {"psnr": summarize([30.0, 31.0]), "ssim": stat},
                             {"psnr": 13.58, "ssim": 0.33}, {}, ["psnr", "ssim"], stat, low, high)  # fmt: skip
        fed = replace(base.utility.fedsgd, test_accuracy=acc, undefended_test_accuracy=60.0)
        defense = replace(base.defense, name=name, spec=name, params={"sigma": 0.1}, reference="https://example.org/x")
        e = replace(base, track="natural-convnet5@2", entry_id=f"natural-convnet5@2/{name}-0123456789ab",
                    defense=defense, worst_case=w, utility=replace(base.utility, fedsgd=fed))  # fmt: skip
        atomic_write_json(root / "v2" / "entries" / "natural-convnet5" / f"{name}-0123456789ab.json", to_dict(e))
    return root


def test_v2_board_states_its_rule_floors_and_shared_ranks(tmp_path):
    root = _v2_root(tmp_path)
    written = render_all(root)
    assert all(root in p.parents for p in written)  # nothing outside the root without --repo-root
    readme = (root / "README.md").read_text()
    assert "Rule: entries within 10 points" in readme and "floor 13.58" in readme and "How to cite" in readme
    assert "| 1-2 | gaussian" in readme and "| 1-2 | laplace" in readme and "| 3 | none" in readme
    assert "Acc. drop = undefended minus defended accuracy" in readme
    # the entries were scored on 359 test images: one image is 100/359 = 0.2786 points
    assert "on the 359 test images, so one image is 0.28 points" in readme
    assert "<https://example.org/x>" in readme
    rule = re.search(r"\*\*(Rule: .*?)\*\*", readme)  # the rule in one sentence, how it is applied after it
    assert rule and rule.group(1).count(". ") == 0 and rule.group(1).endswith(".")
    assert readme.index(rule.group(0)) < readme.index("How it is applied: a victim's leakage is the worst case")
    page = (root / "index.html").read_text()  # the per-attack (secondary) columns show the floor too
    assert '<details class="rule"><summary>How the rule is applied' in page
    assert "DLG PSNR (dB) (floor 13.58)" in page and "IG PSNR (dB) (floor 13.58)" in page
    tex = (root / "v2" / "tables" / "natural-convnet5.tex").read_text()
    assert "Leakage $\\downarrow$" in tex and "bootstrap interval" in tex and "1-2 & gaussian" in tex
    csv_text = (root / "v2" / "tables" / "natural-convnet5.csv").read_text()
    assert "leakage.bootstrap_low" in csv_text and "worst.psnr.floor" in csv_text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_v2_main_columns_fit_1366_pixels_in_headless_chromium(tmp_path):
    root = _v2_root(tmp_path)
    render_all(root)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1366,900",
             f"--user-data-dir={tmp_path / 'chrome'}"]  # fmt: skip
    url = (root / "index.html").resolve().as_uri()
    done = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert 'data-script="ran"' in dom and 'class="more"' in dom
    assert re.findall(r'class="scroll" data-overflow="(\w+)"', dom) == ["no"]  # main columns: no horizontal scroll


def test_strip_shows_each_victims_private_image_above_its_worst_case_reconstruction(tmp_path):
    import base64

    import numpy as np
    import torch
    from dglbench.layout import RunLayout, save_reconstructions
    from dglbench.leaderboard.strip import SCALE, strip_path, write_strip
    from PIL import Image

    folder = RunLayout(tmp_path / "run").images("t")
    gen = torch.Generator().manual_seed(0)
    saved = []
    for j in range(3):
        x, dlg, ig = (torch.rand(1, 1, 4, 5, generator=gen) for _ in range(3))
        save_reconstructions(folder.victim(j), x, {"dlg": dlg, "ig": ig}, worst="ig" if j == 1 else "dlg")
        saved.append((x, ig if j == 1 else dlg))
    root = _v2_root(tmp_path)
    entry = root / "v2" / "entries" / "natural-convnet5" / "gaussian-0123456789ab.json"
    path = write_strip(folder.directory, 64, strip_path(entry))
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == ((2 * 4 + 2) * SCALE, (3 * 5 + 2 * 2) * SCALE, 3)
    for j, (x, worst) in enumerate(saved):  # written out: column j at x0 = j * (5 + 2), rows 0..3 and 6..9
        x0 = j * 7 * SCALE
        want_top = (x[0, 0] * 255).round().to(torch.uint8).numpy().repeat(SCALE, 0).repeat(SCALE, 1)
        want_bottom = (worst[0, 0] * 255).round().to(torch.uint8).numpy().repeat(SCALE, 0).repeat(SCALE, 1)
        assert (pixels[: 4 * SCALE, x0 : x0 + 5 * SCALE, 0] == want_top).all()
        assert (pixels[6 * SCALE :, x0 : x0 + 5 * SCALE, 1] == want_bottom).all()
    render_all(root)
    page = (root / "index.html").read_text()
    assert base64.b64encode(path.read_bytes()).decode() in page and "worst PSNR" in page
    assert write_strip(tmp_path / "nothing", 64, tmp_path / "none.png") is None


def test_a_table_shows_each_defenses_strength_and_its_non_defaults_but_not_the_tracks_accounting():
    """By hand: dp_sgd's strength is sigma (shown at its default 1.0), clip 1.0 is a default; steps and
    sample_rate come from the track and are in ε. Gaussian shows sigma; a non-default value is shown."""
    from dglbench.leaderboard.cells import shown_params
    from dglbench.leaderboard.schema import DefenseInfo

    def info(name, params, formal=None):
        return DefenseInfo(name, name, params, "builtin", None, None, None, None, formal)

    dp = {"clip": 1.0, "sigma": 1.0, "delta": 1e-5, "steps": 200, "sample_rate": 0.876712328767}
    assert shown_params(info("dp_sgd", dp, {"epsilon": 139.0, "delta": 1e-5})) == "sigma=1.0"
    assert shown_params(info("dp_sgd", {**dp, "clip": 10.0}, {"epsilon": 9.0, "delta": 1e-5})) == "clip=10.0, sigma=1.0"
    # without a reported ε the accountant's values stay (what they give is not on the page otherwise)
    assert shown_params(info("dp_sgd", dp)) == "sample_rate=0.876712328767, sigma=1.0, steps=200"
    assert shown_params(info("gaussian", {"sigma": 0.01})) == "sigma=0.01"
    assert shown_params(info("quantization", {"bits": 2, "mode": "uniform", "rounding": "stochastic"})) == (
        "bits=2, rounding=stochastic"
    )


def test_the_committed_board_lists_v2_first_and_a_base_track_before_its_variants():
    from dglbench.leaderboard.render import boards

    refs = [b.track.ref for b in boards(Path(__file__).parents[3] / "leaderboards")]
    versions = [int(r.rsplit("@", 1)[1]) for r in refs]
    assert versions == sorted(versions, reverse=True)  # v2, the current protocol, above v1
    # the trained variant's description refers to the base track: the base comes first, as a reader needs
    assert refs.index("natural-convnet5@2") < refs.index("natural-convnet5-trained@2")
    assert refs.index("natural-imprint@2") < refs.index("natural-imprint-scaled@2")


def test_leakage_cells_have_three_fixed_decimals_other_metrics_go_scientific_when_tiny():
    from dglbench.leaderboard.cells import fmt_stat, v2_cells
    from dglbench.leaderboard.render import boards

    assert fmt_stat(4.151e-05, 0.0, 1.245e-04, 3) == "4.151e-05 [0.000, 1.245e-04]"  # an l2 error, say
    assert fmt_stat(4.151e-05, 0.0, 1.245e-04, 3, scientific=False) == "0.000 [0.000, 0.000]"
    assert fmt_stat(0.4279, 0.3056, 0.5496, 3, scientific=False) == "0.428 [0.306, 0.550]"
    cells = [v2_cells(b.track, r)[3][0] for b in boards(Path(__file__).parents[3] / "leaderboards")
             if b.track.protocol == 2 for r in b.rows]  # fmt: skip
    fixed = r"(\*\*)?[01]\.\d{3} \[[01]\.\d{3}, [01]\.\d{3}\](\*\*)?|–"  # "–": every victim failed
    assert cells and all(re.fullmatch(fixed, c) for c in cells), cells


def test_entries_whose_leakage_cells_read_alike_share_a_rank():
    """Ranks compare the intervals as the table shows them: on natural-imprint-scaled@2 six entries read
    "1.000 [1.000, 1.000]" (intervals apart only in the fifth decimal) and once got ranks 4-5, 6-7 and 8-9."""
    from dglbench.leaderboard.cells import v2_cells
    from dglbench.leaderboard.render import boards

    checked = 0
    for b in boards(Path(__file__).parents[3] / "leaderboards"):
        if b.track.protocol != 2:
            continue
        by_cell: dict[str, set[str]] = {}
        for r in b.rows:
            if r.rank is not None:
                by_cell.setdefault(v2_cells(b.track, r)[3][0], set()).add(r.rank_text)
        assert all(len(ranks) == 1 for ranks in by_cell.values()), (b.track.ref, by_cell)
        checked += sum(len(v) for v in by_cell.values())
    assert checked > 0


def test_batch_tracks_show_the_share_of_images_recovered_at_40_db():
    """On B = 32 tracks leakage saturates at 1.000 once a few images come back; the board shows how many did.
    Counted by hand here from the victims file of natural-imprint@2's undefended entry (a null PSNR is an exact
    copy): 885 of its 1152 images, the number the README reports."""
    from dglbench.leaderboard.render import boards

    root = Path(__file__).parents[3] / "leaderboards"
    victims = json.loads((root / "v2/entries/natural-imprint/none-36544bfeee8e.victims.json").read_text())
    psnrs = [p for r in victims["records"] for p in r["attacks"][0]["metrics"]["per_image"]["psnr"]]
    hits = sum(p is None or p >= 40 for p in psnrs)
    assert (hits, len(psnrs)) == (885, 1152)
    by_ref = {b.track.ref: b for b in boards(root)}
    (row,) = [r for r in by_ref["natural-imprint@2"].rows if r.entry.defense.name == "none"]
    assert row.image_share is not None and row.image_share[0] == pytest.approx(hits / len(psnrs))
    assert row.image_share[1] < row.image_share[0] < row.image_share[2]
    assert all(r.image_share is None for r in by_ref["natural-convnet5@2"].rows)  # one image per victim
    readme = (root / "README.md").read_text()
    faces = readme[
        readme.index("leaderboard-faces-convnet5-v2:begin") : readme.index("leaderboard-faces-convnet5-v2:end")
    ]
    imprint = readme[
        readme.index("leaderboard-natural-imprint-v2:begin") : readme.index("leaderboard-natural-imprint-v2:end")
    ]
    assert "Images ≥ 40 dB (%)" in imprint and "Images ≥ 40 dB" not in faces
    rows = list(csv.DictReader(io.StringIO((root / "v2/tables/natural-imprint.csv").read_text())))
    (none,) = [r for r in rows if r["defense"] == "none"]
    assert float(none["images_40db.mean"]) == pytest.approx(hits / len(psnrs))


def test_plot_labels_clear_each_other_and_the_markers_of_other_points():
    """The natural-convnet5@2 frontier as it stood: 2-bit quantization's label ran into Gaussian 0.1's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from dglbench.leaderboard.html import _lift_overlapping_labels
    from matplotlib.text import Text

    points = [(39.2, 0.0), (52.2, 0.031), (52.6, 0.083), (55.7, 0.030), (57.4, 0.350), (55.7, 0.924)]
    texts = ["dp_sgd sigma=0.1", "quantization bits=2", "topk ratio=0.1", "gaussian sigma=0.1", "soteria ratio=0.9",
             "none"]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.scatter([x for x, _ in points], [y for _, y in points])
    notes = [
        (
            ax.annotate(t, p, fontsize=6.5, xytext=(3, 3), textcoords="offset points", arrowprops={"arrowstyle": "-"}),
            {p},
        )
        for t, p in zip(texts, points)
    ]

    def clashes() -> list[tuple[str, str]]:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = [Text.get_window_extent(n, renderer) for n, _ in notes]
        out = [
            (texts[i], texts[j])
            for i in range(len(boxes))
            for j in range(i + 1, len(boxes))
            if boxes[i].overlaps(boxes[j])
        ]
        for i, box in enumerate(boxes):  # a marker's centre, 3 points around it, inside another point's label
            for j, (x, y) in enumerate(points):
                cx, cy = ax.transData.transform((x, y))
                r = 3 * fig.dpi / 72
                if j != i and box.x0 < cx + r and cx - r < box.x1 and box.y0 < cy + r and cy - r < box.y1:
                    out.append((texts[i], f"marker of {texts[j]}"))
        return out

    assert ("quantization bits=2", "gaussian sigma=0.1") in clashes()  # the case is real before the lift
    _lift_overlapping_labels(fig, ax, notes, points)
    assert clashes() == []
    assert all(n.xyann[1] <= 40 for n, _ in notes)  # lifted by a few lines at most, not off the axes
    plt.close(fig)


def test_plot_labels_stay_inside_the_axes():
    """natural-convnet5-trained@2 as it stood: every point at the largest accuracy, so each label ran past the
    axes' right edge; and a merged label of three lines at the highest point, which runs over the frame's top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from dglbench.leaderboard.html import _place_labels
    from matplotlib.text import Text

    points = [(55.7, 0.655), (55.7, 0.585), (55.7, 0.160), (55.7, 0.134)]
    texts = ["none\nquantization bits=8\neigen_noise scale=0.01", "eigen_noise scale=0.1", "gaussian sigma=0.01",
             "laplace scale=0.01"]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.scatter([x for x, _ in points], [y for _, y in points])
    ax.axvline(45.7)
    notes = [
        (ax.annotate(t, p, fontsize=6.5, xytext=(3, 3), textcoords="offset points", arrowprops={"arrowstyle": "-"}),
         {p})
        for t, p in zip(texts, points)
    ]  # fmt: skip

    def outside() -> list[str]:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        frame = ax.get_window_extent(renderer)
        boxes = [Text.get_window_extent(n, renderer) for n, _ in notes]
        return [t for t, b in zip(texts, boxes) if b.x0 < frame.x0 or b.x1 > frame.x1 or b.y1 > frame.y1]

    assert "eigen_noise scale=0.1" in outside() and texts[0] in outside()  # the case is real
    _place_labels(fig, ax, notes, points)
    assert outside() == []
    assert ax.get_ylim()[1] < 0.8  # the axis grew by a line's height, not more
    plt.close(fig)
