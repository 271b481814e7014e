"""``dglbench sweep run|report|list`` and ``dglbench demo``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from dglbench.errors import ConfigError
from dglbench.hardware import is_global_zero

DEMO_SPEC = "demo"


def _cmd_sweep(args: argparse.Namespace) -> None:
    if args.sweep_command == "list":
        from dglbench.io import load_yaml_mapping
        from dglbench.sweep.spec import _CONFIG_DIR

        for path in sorted(_CONFIG_DIR.glob("*.yaml")):
            print(f"{path.stem:28s} {load_yaml_mapping(path, 'sweep spec').get('description', '')}")
        return
    if args.sweep_command == "run":
        from dglbench.hardware import check_hardware
        from dglbench.sweep.runner import run_sweep

        _check_bootstrap(args.bootstrap)
        check_hardware(args.devices, args.accelerator, args.num_nodes)
        res = run_sweep(args.spec, args.out, devices=args.devices, accelerator=args.accelerator,
                        progress=not args.quiet, max_trials=args.max_trials, num_nodes=args.num_nodes,
                        force=args.force)  # fmt: skip
        if not is_global_zero():  # under DDP every rank runs the sweep; rank 0 reports
            return
        print(f"sweep: {res.trials} trials, {res.ran} ran, {res.skipped} already done, "
              f"{res.failed_victims} failed victims; records in {res.out_dir / 'records'}")  # fmt: skip
        if not args.no_report and res.ran + res.skipped == res.trials:
            _report(args.out, args.bootstrap)
        return
    _report(args.dir, args.bootstrap, args.attack)


def _check_bootstrap(bootstrap: int) -> None:
    if bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0 (resamples for the 95% intervals; 0: none), got {bootstrap}")


def _report(folder: str | Path, bootstrap: int, attack: str = "worst", headline: bool = False) -> dict[str, Any]:
    from dglbench.checks import validate_record_file
    from dglbench.layout import RunLayout
    from dglbench.sweep.report import write_report

    _check_bootstrap(bootstrap)
    for path in RunLayout(folder).trial_records():  # a bad file is one line naming it, first
        validate_record_file(path)
    rep = write_report(folder, bootstrap=bootstrap, attack=attack)
    if headline:  # the findings in words, then where the full report is
        print("\n".join(f"- {line}" for line in rep["headline"]))
        print(f"\nfull report: {rep['paths']['markdown']}")
    else:
        print(rep["markdown"])
        print()
    for kind, path in rep["paths"].items():
        if not headline or kind != "markdown":
            print(f"{kind:9s} {path}")
    return rep


def _cmd_demo(args: argparse.Namespace) -> None:
    from dglbench.hardware import check_hardware
    from dglbench.sweep.runner import run_sweep

    check_hardware(args.devices, "cpu")
    start = time.perf_counter()
    if is_global_zero():  # a DDP launcher re-runs this command on the other ranks
        print(f"dglbench demo: experiment 1 (Gaussian noise, I2F vs attack error) on embedded digits -> {args.out}")
    run_sweep(DEMO_SPEC, args.out, devices=args.devices, progress=True)
    if not is_global_zero():
        return
    _report(args.out, 1000, headline=True)
    print(
        f"\ndemo finished in {time.perf_counter() - start:.0f} s; plots and tables are in {Path(args.out) / 'report'}"
    )


def register(add: Any) -> None:
    p = add("sweep", _cmd_sweep, "run sweeps (W&B sweep format) and report I2F vs attack error correlations")
    sub = p.add_subparsers(dest="sweep_command", required=True, metavar="SUBCOMMAND")
    r = sub.add_parser("run", help="run (or resume) a sweep: SPEC is a YAML path or a shipped spec name")
    r.add_argument("spec")
    r.add_argument("--out", required=True, help="sweep folder (records/, report/)")
    r.add_argument("--devices", type=int, default=1, help="Lightning devices per trial (DDP when > 1)")
    r.add_argument("--num-nodes", type=int, default=1, help="machines (torchrun / SLURM launch the processes)")
    r.add_argument("--accelerator", default="cpu")
    r.add_argument("--max-trials", type=int, default=None, help="stop after this many new trials")
    r.add_argument("--no-report", action="store_true")
    r.add_argument("--force", action="store_true", help="run a different spec into a folder that holds another sweep")
    r.add_argument("--bootstrap", type=int, default=1000, help="resamples for 95%% intervals (0: no intervals)")
    r.add_argument("--quiet", action="store_true")
    rep = sub.add_parser("report", help="correlation tables (Markdown, CSV, LaTeX) and plots of a sweep folder")
    rep.add_argument("dir")
    rep.add_argument("--bootstrap", type=int, default=1000, help="resamples for 95%% intervals (0: no intervals)")
    rep.add_argument("--attack", default="worst",
                     help="whose attack errors: 'worst' (per victim, the worst case over each trial's optimization "
                          "attacks, closed-form ones left out; the default) or one optimization attack")  # fmt: skip
    sub.add_parser("list", help="the shipped sweep specs")
    d = add("demo", _cmd_demo, "the main job on embedded data: experiment 1, correlation table and plots")
    d.add_argument("--out", default="demo_output")
    d.add_argument("--devices", type=int, default=1)
