"""``dglbench leaderboard submit | validate | verify | render | tracks``.

Registered by :mod:`dglbench.cli` as one command with its own subcommands. User errors (unknown
track or defense, bad parameter, invalid entry) are one line and exit status 2.

Examples::

    dglbench leaderboard tracks
    dglbench leaderboard submit --track natural-convnet5@2 --defense gaussian --param sigma=0.01
    dglbench leaderboard validate                      # every stored entry (CI runs this via the tests)
    dglbench leaderboard verify leaderboards/v2/entries/natural-convnet5/gaussian-<hash>.json --victims 2
    dglbench leaderboard verify ENTRY --seed 1234             # repeat a draw; --all re-runs every victim
    dglbench leaderboard render
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["register"]


def existing_root(root: str | None) -> Path:
    """The leaderboard folder ``--root`` names (default ``leaderboards/``); one error line when it is missing."""
    from dglbench.leaderboard.track import existing_root as check

    return check(root)


def _submit(args: argparse.Namespace) -> int:
    from dglbench.cli import parse_params
    from dglbench.leaderboard.submit import submit

    if not str(args.track).endswith((".yaml", ".yml")):  # the track is read from the leaderboard folder
        existing_root(args.root)
    start = time.perf_counter()
    result = submit(
        args.track, args.defense, parse_params(args.param), devices=args.devices, accelerator=args.accelerator,
        root=args.root, work_dir=args.work_dir, reference=args.reference, description=args.description,
        progress=args.progress, data_root=args.data_root, skip_existing=args.skip_existing,
    )  # fmt: skip
    if result is None:  # a non-zero DDP rank
        return 0
    if result.skipped:
        print(f"entry   {result.entry_path} exists; skipped (--skip-existing)")
        return 0
    e = result.entry
    fed = e.utility.fedsgd
    print(f"entry   {result.entry_path}")
    print(f"victims {result.victims_path}")
    for s in e.privacy:
        shown = ", ".join(f"{m} {st.mean:.4g}" for m, st in s.metrics.items() if st.mean is not None)
        print(f"  {s.attack}: {shown} ({s.failures}/{s.victims} failed)")
    if e.i2f is not None:
        exact = ", ".join(f"{st.mean:.4g} (ε={eps})" for eps, st in e.i2f.exact.items())
        print(f"  I2F lower bound {e.i2f.lower_bound.mean:.4g}, exact {exact} (means over the victims)")
    print(f"  FedSGD test accuracy {fed.test_accuracy:.2f}% (undefended {fed.undefended_test_accuracy:.2f}%)")
    elapsed = time.perf_counter() - start
    print(f"done in {elapsed:.1f} s; next: dglbench leaderboard validate && dglbench leaderboard render")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from dglbench.leaderboard.store import entry_files
    from dglbench.leaderboard.validate import untrusted_notes, validate_paths

    root = existing_root(args.root)
    problems = validate_paths(args.paths, root=root)
    for note in untrusted_notes(args.paths, root=root):
        print(note, file=sys.stderr)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"dglbench: error: {len(problems)} problem(s)", file=sys.stderr)
        return 2
    count = len(args.paths) if args.paths else len(entry_files(root))
    print(f"ok: {count} entr{'y' if count == 1 else 'ies'} valid")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from dglbench.leaderboard.submit import process_rank
    from dglbench.leaderboard.verify import InvalidEntryError, catch_probability, verify_entry

    root = existing_root(args.root)
    if args.trust_code:  # name the third-party code before anything imports it
        from dglbench.leaderboard.store import load_entry
        from dglbench.leaderboard.trust import code_source

        source = code_source(load_entry(args.entry).defense)
        if not source.trusted:
            print(f"--trust-code: re-running imports {source.describe()}", flush=True)
    try:
        result = verify_entry(
            args.entry, args.victims, seed=args.seed, all_victims=args.all, trust_code=args.trust_code,
            devices=args.devices, accelerator=args.accelerator, utility=args.utility, root=root,
            work_dir=args.work_dir, data_root=args.data_root,
        )  # fmt: skip
    except InvalidEntryError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"dglbench: error: {len(exc.problems)} problem(s) found by validate; not re-run", file=sys.stderr)
        return 2
    if process_rank() != 0:  # the other DDP ranks only helped re-run the victims
        return 0
    n, m = result.num_victims, len(result.victims)
    if result.seed is None:
        print(f"victims: all {n}")
    else:
        print(f"victims: {', '.join(map(str, result.victims))} of 0..{n - 1} (seed {result.seed}; repeat with "
              f"--seed {result.seed})")  # fmt: skip
        ks = sorted({1, 2, max(1, n // 4), max(1, n // 2)} & set(range(1, n + 1)))
        shown = ", ".join(f"k={k}: {catch_probability(n, k, m):.3f}" for k in ks)
        print(f"a draw of {m} of {n} victims catches an entry with k edited victims with probability "
              f"1 - C(n-k, m)/C(n, m): {shown}")  # fmt: skip
    bad = [c for c in result.checks if not c.ok]
    for c in result.checks if args.show_all else bad:
        where = f"victim {c.victim}" if c.victim is not None else c.trial
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.trial} {where} {c.quantity}: stored {c.stored!r}, re-run {c.rerun!r} "
              f"({c.tolerance})")  # fmt: skip
    print(f"{len(result.checks) - len(bad)}/{len(result.checks)} numbers reproduced within the track's tolerances")
    return 1 if bad else 0


def _render(args: argparse.Namespace) -> int:
    from dglbench.leaderboard.render import render_all

    for path in render_all(existing_root(args.root), args.repo_root):
        print(path)
    return 0


def _tracks(args: argparse.Namespace) -> int:
    """One line per track: current (protocol 2) first, with its device, entry count and title."""
    from collections import Counter

    from dglbench.leaderboard.store import entry_files
    from dglbench.leaderboard.track import list_tracks, load_track

    root = existing_root(args.root)
    counts = Counter(f"{p.parent.name}@{p.parents[2].name[1:]}" for p in entry_files(root))  # v2/entries/<id>/x
    tracks = [load_track(ref, root) for ref in list_tracks(root)]
    tracks.sort(key=lambda t: t.order_key)
    print(f"{'track':28s} {'device':6s} {'entries':>7s}  title")
    for t in tracks:
        note = "  [superseded by version 2]" if t.superseded else ""
        print(f"{t.ref:28s} {t.scale:6s} {counts[t.ref]:7d}  {t.title}{note}")
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
        p.add_argument(
        "--root", default=None,
        help="leaderboard data folder (default: $DGLBENCH_LEADERBOARDS, else leaderboards/ of the source tree)",
    )  # fmt: skip
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
    p.add_argument(
        "--skip-existing", action="store_true", help="do nothing when the entry file exists (resumable baselines)"
    )
    hardware(p)

    p = command("validate", _validate, "check entries: schema, consistency, recomputed aggregates (exit 2 on problems)")
    p.add_argument("paths", nargs="*", help="entry files or folders (default: every stored entry and track)")

    p = command(
        "verify",
        _verify,
        "validate an entry, then re-run m of its n victims drawn at random and compare within the track's "
        "tolerances. An entry with k edited victims is caught with probability 1 - C(n-k, m)/C(n, m) "
        "(natural-convnet5@2, n=64, m=2: 0.031 for k=1, 0.44 for k=16, 0.75 for k=32); --all re-runs every victim.",
    )
    p.add_argument("entry", help="the entry JSON file")
    p.add_argument("--victims", type=int, default=2, metavar="M", help="victims drawn at random, m (default 2)")
    p.add_argument("--seed", type=int, default=None, help="seed of the draw (default: fresh from the OS, printed)")
    p.add_argument("--all", action="store_true", help="re-run every victim instead of a random sample")
    p.add_argument(
        "--trust-code", action="store_true",
        help="allow importing the defense's third-party code (an installed entry point or module path); "
        "without it, verify stops and names the package it would import",
    )  # fmt: skip
    p.add_argument("--utility", action="store_true", help="also re-run the FedSGD utility protocol")
    p.add_argument("--show-all", action="store_true", help="print every compared number, not only failures")
    hardware(p)
    p.set_defaults(work_dir=None)

    p = command("render", _render, "write README tables, CSV, LaTeX, BibTeX, CITATION.cff, index.html, schemas")
    p.add_argument("--repo-root", default=None, help="where CITATION.cff goes (default: the parent of --root)")

    command("tracks", _tracks, "list the tracks")
