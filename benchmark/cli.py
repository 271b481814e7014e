"""``dglbench``: the command line.

Every user error (bad config, unknown name, missing data, corrupt file, unusable hardware or output
folder) is printed as one line ``dglbench: error: ...`` with exit status 2, checked before work starts;
nothing is left half-written. Ctrl-C prints ``dglbench: interrupted; re-run the same command to
resume`` and exits 130 (finished victims and trials are kept); SIGTERM (``kill``, a batch scheduler's
pre-emption) stops the same way, says ``terminated``, and exits 143. Output into a closed pipe
(``dglbench models | head``) stops quietly with status 141, as a process killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from dglbench.errors import ConfigError, DglbenchError

if TYPE_CHECKING:
    from dglbench.record import VictimRecord

Handler = Callable[[argparse.Namespace], int | None]


def parse_params(pairs: Sequence[str]) -> dict[str, object]:
    """``["sigma=0.1", "ranks=top"]`` → ``{"sigma": 0.1, "ranks": "top"}`` (:func:`dglbench.params.parse_cli_value`)."""
    from dglbench.params import parse_cli_value

    out: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"parameter {pair!r} must look like key=value, e.g. --param sigma=0.01")
        key, value = pair.split("=", 1)
        out[key.strip()] = parse_cli_value(value)
    return out


def _table(rows: list[dict[str, object]], columns: Sequence[str]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join([line, sep, *body])


# ------------------------------------------------------------------------------------------------ listing
def _cmd_models(args: argparse.Namespace) -> None:
    import timm
    from dglbench import models  # noqa: F401

    names = timm.list_models(args.pattern)
    print("\n".join(names) if names else f"no model matches {args.pattern!r}")


def _cmd_datasets(args: argparse.Namespace) -> None:
    from dglbench.datamodules import DATAMODULES

    print("\n".join(DATAMODULES.list(args.pattern)))


def _cmd_inits(args: argparse.Namespace) -> None:
    from dglbench.models.init import INITIALIZATIONS

    print("\n".join(INITIALIZATIONS.list(args.pattern)))


def _cmd_attacks(args: argparse.Namespace) -> None:
    from dglbench.attacks import ATTACKS

    print("\n".join(ATTACKS.list(args.pattern)))


def _cmd_defenses(args: argparse.Namespace) -> None:
    from dglbench.defenses import list_defenses

    print("\n".join(list_defenses(args.pattern)))  # built-ins and installed entry points (names only: nothing imported)


def _cmd_zoo(args: argparse.Namespace) -> None:
    from dglbench.models.zoo import ZOO, capability_matrix, format_table

    print(format_table(capability_matrix(ZOO, pattern=args.pattern)))


# ------------------------------------------------------------------------------------------------ runs
def load_config_file(path: str) -> dict[str, object]:
    """A YAML/JSON trial config file as a dict; a missing, malformed, non-UTF-8 or empty file is one clear line.

    An empty file is an error, not the defaults: a config that says nothing is more likely a mistake (a
    file truncated, the wrong path) than a request for the paper's settings, which take minutes to run.
    """
    from dglbench.io import load_yaml_mapping

    return load_yaml_mapping(path, "config")


def _overrides(extra: Sequence[str]) -> dict[str, object]:
    """``--key=value`` / ``--key value`` pairs (as W&B agents pass them) → dotted-key overrides.

    Each value is parsed once, here, as a YAML scalar (:func:`dglbench.params.parse_cli_value`): the
    command line is the one place where text becomes numbers.
    """
    from dglbench.params import parse_cli_value

    out: dict[str, object] = {}
    items = list(extra)
    while items:
        item = items.pop(0)
        if not item.startswith("--"):
            raise ConfigError(f"unexpected argument {item!r}; overrides look like --defense_params.sigma=0.1")
        key, sep, value = item[2:].partition("=")
        if not sep:
            if not items:
                raise ConfigError(f"override --{key} has no value")
            value = items.pop(0)
        out[key.replace("-", "_") if "." not in key else key] = parse_cli_value(value)
    return out


def _summary_rows(records: list[VictimRecord]) -> list[dict[str, object]]:
    rows = []
    for r in records:
        row: dict[str, object] = {"victim": r.victim_id, "status": r.status}
        est = r.estimate
        if est is not None:
            row.update({"JtDelta": est.jt_delta, "MaxEigenValue": est.max_eigenvalue})
            if not est.exact_lower_bound:  # a record made before the damped bounds: Eq. 5 is the bound at eps = 0
                row["I2F_lb(eps=0)"] = est.lower_bound
            for k, v in est.exact.items():
                if k in est.exact_lower_bound:
                    row[f"lb(eps={_eps_label(k)})"] = est.exact_lower_bound[k]
                row[f"I2F(eps={_eps_label(k)})"] = v
            flagged = [_eps_label(k) for k, bad in est.exact_ill_conditioned.items() if bad]
            if flagged:
                row["ill-conditioned"] = ",".join(flagged)
        if r.metrics:
            row.update({"||x^-x||": r.metric("l2_error"), "PSNR": r.metric("psnr"), "SSIM": r.metric("ssim")})
            if len(r.attacks) > 1:  # the worst case over the suite: name the attack each number came from
                row["worst of"] = ",".join(sorted({r.worst.source.get(m, "") for m in ("l2_error", "psnr")} - {""}))
        if not r.ok:
            row["reason"] = r.reason
        rows.append(row)
    return rows


def _eps_label(key: str) -> str:
    """``"0.1"`` → ``0.1``; ``"rel:0.001"`` (ε = 0.001 λ_max) → ``0.001*lmax``."""
    return f"{key[4:]}*lmax" if key.startswith("rel:") else key


def _print_records(records: list[VictimRecord]) -> None:
    rows = _summary_rows(records)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    print(_table(rows, columns))
    if any(r.estimate is not None and r.estimate.exact_lower_bound for r in records):
        print(
            "lb(eps=e) = ||K^T delta|| / (lambda_max + e) is the lower bound of I2F(eps=e), the same damped quantity; "
            "e*lmax is a damping relative to each victim's lambda_max. ill-conditioned: the eps = 0 solve did not "
            "converge or its smallest Ritz value is too small to trust."
        )


def _cmd_run(args: argparse.Namespace) -> None:
    from dglbench.hardware import check_hardware
    from dglbench.io import check_output_dir
    from dglbench.layout import RunLayout
    from dglbench.runner import run_trial
    from dglbench.trial import TrialConfig

    base = load_config_file(args.config) if args.config else {}
    config = TrialConfig.from_dict(base).with_overrides(_overrides(args.overrides))
    check_hardware(args.devices, args.accelerator, args.num_nodes)
    check_output_dir(args.out)
    logger = _make_logger(args.logger, args.out, config)
    records = run_trial(config, devices=args.devices, accelerator=args.accelerator, output_dir=args.out,
                        num_nodes=args.num_nodes,
                        progress=not args.quiet, logger=logger)  # fmt: skip
    if records:
        _print_records(records)
        print(f"records: {RunLayout(args.out).trial_record(config.trial_id)}")


def _make_logger(kind: str, out: str, config: object) -> object:
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(out, name="logs")
    if kind == "wandb":
        import os

        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_MODE", "offline")  # works with no account; `wandb sync` uploads later
        return WandbLogger(project="dglbench", save_dir=out, config=config.to_dict())  # type: ignore[attr-defined]
    raise ConfigError(f"unknown logger {kind!r}; use csv, wandb or none")


def _cmd_i2f(args: argparse.Namespace) -> None:
    from dglbench.runner import run_trial
    from dglbench.trial import TrialConfig

    config = TrialConfig(
        dataset=args.dataset, model=args.model, init=args.init, init_seed=args.seed, seed=args.seed,
        defense=args.defense, defense_params=parse_params(args.param), attack=None,
        eps=None if args.eps is None else tuple(args.eps),
        eps_relative=None if args.eps_relative is None else tuple(args.eps_relative),
        dataset_params={"num_victims": args.victims, **({"image_size": args.image_size} if args.image_size else {})},
    )  # fmt: skip
    _print_records(run_trial(config, progress=False))


_COMMAND_MODULES = ("dglbench.sweep.cli", "dglbench.leaderboard.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dglbench", description="Deep Gradient Leakage benchmark")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    for name, handler, what in (
        ("models", _cmd_models, "list models in timm's registry (classic DGL nets included)"),
        ("datasets", _cmd_datasets, "list victim datasets"),
        ("inits", _cmd_inits, "list initialization schemes"),
        ("attacks", _cmd_attacks, "list attacks"),
        ("defenses", _cmd_defenses, "list built-in defenses and installed entry-point defenses"),
        ("zoo", _cmd_zoo, "print the zoo capability matrix (forward, double backward, I2F)"),
    ):
        add(name, handler, what).add_argument("pattern", nargs="?", default="*", help="wildcard, e.g. 'cifar_*'")

    p = add("i2f", _cmd_i2f, "I2F estimate (lower bound and exact) for a few victims, as a table")
    p.add_argument("--model", default="convnet5")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--victims", type=int, default=4)
    p.add_argument("--init", default="uniform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--defense", default="gaussian")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="defense parameter")
    p.add_argument("--eps", type=float, nargs="+", default=None, help="absolute damping values of exact I2F")
    p.add_argument(
        "--eps-relative", type=float, nargs="+", default=None,
        help="damping values as fractions of each victim's lambda_max (default with no --eps: 0.001, beside eps 0)",
    )  # fmt: skip
    p.add_argument("--image-size", type=int, default=None)

    p = add("run", _cmd_run, "run one trial (defense → I2F → attack → metrics) over its victims")
    p.add_argument("--config", help="YAML file with trial keys (see benchmark/trial.py)")
    p.add_argument("--devices", type=int, default=1, help="Lightning devices; >1 uses DDP")
    p.add_argument("--num-nodes", type=int, default=1, help="machines (torchrun / SLURM launch the processes)")
    p.add_argument("--accelerator", default="cpu", help="cpu, gpu, auto")
    p.add_argument("--out", default="runs", help="output folder (records/, parts/, logs/)")
    p.add_argument("--logger", default="csv", choices=["csv", "wandb", "none"], help="wandb runs offline by default")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(accepts_overrides=True)  # --key=value trial overrides, e.g. --defense_params.sigma=0.1

    import importlib

    for module in _COMMAND_MODULES:  # larger command groups register themselves
        importlib.import_module(module).register(add)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, as Ctrl-C raises :class:`KeyboardInterrupt`."""


_terminated = False


def _on_sigterm(signum: int, frame: object) -> None:
    # Lightning's Trainer only logs SIGTERM and runs on (it calls a handler installed before it, this one);
    # unwinding as Ctrl-C does keeps every finished victim and trial, and nothing half-written
    global _terminated
    _terminated = True
    raise _Terminated


def _stop_on_sigterm() -> None:
    """SIGTERM stops the command as Ctrl-C does (an ignored SIGTERM, the caller's choice, stays ignored)."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def quiet_dependency_warnings() -> None:
    """Silence warnings from inside dependencies that name nothing a user of the command can change."""
    import warnings

    warnings.filterwarnings("ignore", message=".*(treespec|torch.jit.script).*")  # deprecations inside dependencies
    # Opacus' RDP accountant when the best order is the grid's smallest (DP-SGD at small sigma): the epsilon it
    # returns is still a valid, conservative upper bound (dglbench.defenses.dp_sgd.RDP_ORDERS)
    warnings.filterwarnings("ignore", message="Optimal order is the (smallest|largest) alpha")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dglbench`` command; returns the exit status."""
    quiet_dependency_warnings()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    if argv is None:  # the command itself, not a caller of main([...]) that owns its process's signals
        _stop_on_sigterm()
    try:
        code = args.handler(args)
        sys.stdout.flush()
    except DglbenchError as exc:
        print(f"dglbench: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the runner turns Lightning's exit after an interrupt back into this
        if _terminated:
            print("dglbench: terminated; re-run the same command to resume", file=sys.stderr)
            return 128 + signal.SIGTERM
        print("dglbench: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dglbench models | head`: the reader left; stop quietly, as a killed `cat` would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
        return 128 + signal.SIGPIPE
    return int(code or 0)


def _one_line(exc: BaseException) -> str:
    """An error's message on one line (a message quoting a file's text may hold newlines)."""
    return " ".join(str(exc).split("\n")).strip() or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
