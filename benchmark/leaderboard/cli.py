"""``dglbench leaderboard submit | validate | verify | render | tracks``.

Registered by :mod:`dglbench.cli` as one command with its own subcommands. User errors (unknown
track or defense, bad parameter, invalid entry) are one line and exit status 2.

Examples::

    dglbench leaderboard tracks
    dglbench leaderboard submit --track digits-convnet5 --defense gaussian --param sigma=0.001
    dglbench leaderboard validate                      # every stored entry (CI runs this via the tests)
    dglbench leaderboard verify leaderboards/v1/entries/digits-convnet5/gaussian-<hash>.json --victims 2
    dglbench leaderboard render
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

__all__ = ["register"]


def _submit(args: argparse.Namespace) -> int:
    from dglbench.cli import parse_params
    from dglbench.leaderboard.submit import submit

    start = time.perf_counter()
    result = submit(
        args.track, args.defense, parse_params(args.param), devices=args.devices, accelerator=args.accelerator,
        root=args.root, work_dir=args.work_dir, reference=args.reference, description=args.description,
        progress=args.progress, data_root=args.data_root,
    )  # fmt: skip
    if result is None:  # a non-zero DDP rank
        return 0
    e = result.entry
    fed = e.utility.fedsgd
    print(f"entry   {result.entry_path}")
    print(f"victims {result.victims_path}")
    for s in e.privacy:
        shown = ", ".join(f"{m} {st.mean:.4g}" for m, st in s.metrics.items() if st.mean is not None)
        print(f"  {s.attack}: {shown} ({s.failures}/{s.victims} failed)")
    if e.i2f is not None:
        print(f"  I2F lower bound {e.i2f.lower_bound.mean}, exact {[st.mean for st in e.i2f.exact.values()]}")
    print(f"  FedSGD test accuracy {fed.test_accuracy:.2f}% (undefended {fed.undefended_test_accuracy:.2f}%)")
    elapsed = time.perf_counter() - start
    print(f"done in {elapsed:.1f} s; next: dglbench leaderboard validate && dglbench leaderboard render")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from dglbench.leaderboard.store import entry_files
    from dglbench.leaderboard.validate import validate_paths

    problems = validate_paths(args.paths, root=args.root)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"dglbench: error: {len(problems)} problem(s)", file=sys.stderr)
        return 2
    count = len(args.paths) if args.paths else len(entry_files(args.root))
    print(f"ok: {count} entr{'y' if count == 1 else 'ies'} valid")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from dglbench.leaderboard.verify import verify_entry

    checks = verify_entry(
        args.entry, args.victims, devices=args.devices, accelerator=args.accelerator, utility=args.utility,
        root=args.root, work_dir=args.work_dir, data_root=args.data_root,
    )  # fmt: skip
    from dglbench.leaderboard.submit import process_rank

    if process_rank() != 0:  # the other DDP ranks only helped re-run the victims
        return 0
    bad = [c for c in checks if not c.ok]
    for c in bad if not args.all else checks:
        where = f"victim {c.victim}" if c.victim is not None else c.trial
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.trial} {where} {c.quantity}: stored {c.stored!r}, re-run {c.rerun!r} "
              f"({c.tolerance})")  # fmt: skip
    print(f"{len(checks) - len(bad)}/{len(checks)} numbers reproduced within the track's tolerances")
    return 1 if bad else 0


def _render(args: argparse.Namespace) -> int:
    from dglbench.leaderboard.render import render_all

    for path in render_all(args.root, args.repo_root):
        print(path)
    return 0


def _tracks(args: argparse.Namespace) -> int:
    from dglbench.leaderboard.track import list_tracks, load_track

    for ref in list_tracks(args.root):
        t = load_track(ref, args.root)
        print(f"{ref:28s} {t.scale:3s}  {t.title}")
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``leaderboard`` command (with subcommands) to the ``dglbench`` parser."""

    def dispatch(args: argparse.Namespace) -> int:
        return args.leaderboard_handler(args)

    parser = add("leaderboard", dispatch, "leaderboards: submit a defense, validate, verify, render tables")
    sub = parser.add_subparsers(dest="leaderboard_command", required=True, metavar="SUBCOMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(leaderboard_handler=handler)
        p.add_argument("--root", default=None, help="leaderboard data folder (default: leaderboards/)")
        return p

    def hardware(p: argparse.ArgumentParser) -> None:
        p.add_argument("--devices", type=int, default=1, help="Lightning devices (victims shard across them)")
        p.add_argument("--accelerator", default="cpu", help="cpu, gpu or auto (default cpu)")
        p.add_argument("--work-dir", default="runs/leaderboard", help="where trial records are kept (resume)")
        p.add_argument("--data-root", default=None, help="folder of the dataset's files (not for embedded data)")

    p = command("submit", _submit, "measure a defense on a track and write its entry")
    p.add_argument(
        "--track", required=True, help="track id, id@version or YAML path (list: dglbench leaderboard tracks)"
    )
    p.add_argument("--defense", required=True, help="registered name, package.module:Class, or entry point")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="defense parameter (repeatable)")
    p.add_argument("--out", dest="root", help="leaderboard data folder to write into (same as --root)")
    p.add_argument("--reference", default=None, help="URL or DOI of the defense's paper or code")
    p.add_argument("--description", default=None, help="one line about the defense")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    hardware(p)

    p = command("validate", _validate, "check entries: schema, consistency, recomputed aggregates (exit 2 on problems)")
    p.add_argument("paths", nargs="*", help="entry files or folders (default: every stored entry and track)")

    p = command("verify", _verify, "re-run K victims of an entry and compare within the track's tolerances")
    p.add_argument("entry", help="the entry JSON file")
    p.add_argument("--victims", type=int, default=2, help="victims to re-run (default 2)")
    p.add_argument("--utility", action="store_true", help="also re-run the FedSGD utility protocol")
    p.add_argument("--all", action="store_true", help="print every compared number, not only failures")
    hardware(p)
    p.set_defaults(work_dir=None)

    p = command("render", _render, "write README tables, CSV, LaTeX, BibTeX, CITATION.cff, index.html, schemas")
    p.add_argument("--repo-root", default=None, help="where CITATION.cff goes (default: the parent of --root)")

    command("tracks", _tracks, "list the tracks")
