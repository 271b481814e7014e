"""Every stored track and entry: parses, validates (schema, consistency, recomputed aggregates), is rendered.

This is how CI runs ``dglbench leaderboard validate``: ``make test`` runs this file.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from dglbench.defenses import DEFENSES
from dglbench.leaderboard.cells import several_images
from dglbench.leaderboard.migrate import migrate_entry
from dglbench.leaderboard.render import render_all
from dglbench.leaderboard.schema import Entry
from dglbench.leaderboard.store import entry_files, load_entry, read_json, victims_path
from dglbench.leaderboard.track import default_root, list_tracks, load_track
from dglbench.leaderboard.typed import from_dict
from dglbench.leaderboard.validate import validate_paths

ROOT = default_root()
REPO = ROOT.parent
ENTRIES = entry_files(ROOT)


def test_every_stored_track_and_entry_is_valid():
    assert validate_paths([], root=ROOT) == []


@pytest.mark.parametrize("path", ENTRIES, ids=[p.stem for p in ENTRIES])
def test_every_stored_entry_parses(path):
    entry = from_dict(Entry, migrate_entry(read_json(path)))
    assert victims_path(path).exists()
    assert entry.entry_id.endswith(path.stem)


def test_the_embedded_track_has_baselines_for_every_builtin_defense():
    entries = [load_entry(p) for p in ENTRIES]
    embedded = [e for e in entries if e.track == "digits-convnet5@1"]
    settings: dict[str, set[str]] = {}
    for e in embedded:
        assert e.defense.source == "builtin"
        settings.setdefault(e.defense.name, set()).add(e.provenance.config_hash)
    assert set(settings) == set(DEFENSES.list())
    for name, hashes in settings.items():
        assert name == "none" or len(hashes) >= 2, f"{name}: baselines need two or more strengths"


def _strip_svg(text: str) -> str:
    return re.sub(r"<svg.*?</svg>", "<svg/>", text, flags=re.S)  # plots depend on the matplotlib version


def test_rendered_files_are_up_to_date(tmp_path: Path):
    copy = tmp_path / "leaderboards"
    # victims files are not needed to render, except on tracks whose victims hold a batch (the share of its
    # images recovered is counted from them); the work folder is never read
    batch_tracks = {t.id for t in (load_track(r, ROOT) for r in list_tracks(ROOT)) if several_images(t)}

    def skip(folder: str, names: list[str]) -> list[str]:
        keep = Path(folder).name in batch_tracks
        return [n for n in names if n == "work" or (n.endswith(".victims.json") and not keep)]

    shutil.copytree(ROOT, copy, ignore=skip)
    for p in ENTRIES:
        assert (copy / p.relative_to(ROOT)).exists()
    render_all(copy, tmp_path)
    stale = []
    for generated in sorted(copy.rglob("*")):
        if not generated.is_file() or generated.suffix not in (".md", ".csv", ".tex", ".bib", ".html", ".json"):
            continue
        stored = ROOT / generated.relative_to(copy)
        if stored.name.endswith(".victims.json"):
            continue
        fresh, old = generated.read_text(), stored.read_text() if stored.exists() else ""
        if generated.suffix == ".html":
            fresh, old = _strip_svg(fresh), _strip_svg(old)
        if fresh != old:
            stale.append(str(stored.relative_to(REPO)))
    citation = REPO / "CITATION.cff"
    if not citation.exists() or (tmp_path / "CITATION.cff").read_text() != citation.read_text():
        stale.append("CITATION.cff")
    assert not stale, f"run `dglbench leaderboard render`; out of date: {stale}"


def test_tracks_are_listed():
    assert {"digits-convnet5@1", "mnist-convnet5@1", "cifar10-cifar_resnet18@1", "imagenet-resnet50@1"} <= set(
        list_tracks(ROOT)
    )


def test_the_tracks_command_lists_current_tracks_first_with_their_entry_counts(capsys):
    from dglbench.cli import main

    assert main(["leaderboard", "tracks", "--root", str(ROOT)]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    refs = [ln.split()[0] for ln in lines]
    assert refs.index("natural-convnet5@2") < refs.index("natural-convnet5-trained@2") < refs.index("digits-convnet5@1")
    for ln in lines:
        ref, _, count = ln.split()[:3]
        track_id, version = ref.rsplit("@", 1)
        on_disk = [p for p in (ROOT / f"v{version}" / "entries" / track_id).glob("*.json")
                   if not p.name.endswith(".victims.json")]  # fmt: skip
        assert int(count) == len(on_disk), ln
        assert ("superseded" in ln) == (version == "1")


def test_every_builtin_baseline_was_made_with_the_defenses_current_code():
    """An entry id hashes its defense's source file, so editing a built-in defense (or base.py, home of `none`)
    turns its committed baselines stale: baselines.sh would re-run them as new entries beside the old ones.
    Re-make them in the same change, or leave the file alone."""
    from dglbench.defenses import create_defense
    from dglbench.leaderboard.submit import code_hash

    stale = []
    for path in ENTRIES:
        e = load_entry(path)
        if e.defense.source != "builtin" or e.defense.code_hash is None:
            continue  # v1 entries migrated without a hash
        if code_hash(create_defense(e.defense.name)) != e.defense.code_hash:
            stale.append(e.entry_id)
    assert not stale, stale
