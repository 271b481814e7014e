"""``dglbench``: the command line.

Every user error (bad config, unknown name, missing data, corrupt file) is printed as one line
``dglbench: error: ...`` with exit status 2; nothing is left half-written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from benchmark.errors import ConfigError, DglbenchError

Handler = Callable[[argparse.Namespace], int | None]


def parse_params(pairs: Sequence[str]) -> dict[str, object]:
    """``["sigma=0.1", "ranks=top"]`` → ``{"sigma": 0.1, "ranks": "top"}`` (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"parameter {pair!r} must look like key=value, e.g. --param sigma=0.01")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value else ""
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

    import models  # noqa: F401

    names = timm.list_models(args.pattern)
    print("\n".join(names) if names else f"no model matches {args.pattern!r}")


def _cmd_datasets(args: argparse.Namespace) -> None:
    from datamodules import DATAMODULES

    print("\n".join(DATAMODULES.list(args.pattern)))


def _cmd_inits(args: argparse.Namespace) -> None:
    from models.init import INITIALIZATIONS

    print("\n".join(INITIALIZATIONS.list(args.pattern)))


def _cmd_attacks(args: argparse.Namespace) -> None:
    from benchmark.attacks import ATTACKS

    print("\n".join(ATTACKS.list(args.pattern)))


def _cmd_defenses(args: argparse.Namespace) -> None:
    from benchmark.defenses import DEFENSES

    print("\n".join(DEFENSES.list(args.pattern)))


def _cmd_zoo(args: argparse.Namespace) -> None:
    from models.zoo import ZOO, capability_matrix, format_table

    print(format_table(capability_matrix(ZOO, pattern=args.pattern)))


# ------------------------------------------------------------------------------------------------ I2F
def _cmd_i2f(args: argparse.Namespace) -> None:
    from benchmark.estimate import estimate_table

    rows = estimate_table(
        model=args.model, dataset=args.dataset, victims=args.victims, init=args.init, seed=args.seed,
        defense=args.defense, params=parse_params(args.param), eps=args.eps, image_size=args.image_size,
    )  # fmt: skip
    print(_table(rows, list(rows[0])))


_COMMAND_MODULES = ("benchmark.sweep.cli", "benchmark.leaderboard.cli")


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
        ("defenses", _cmd_defenses, "list built-in defenses"),
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
    p.add_argument("--eps", type=float, default=0.1, help="damping of exact I2F")
    p.add_argument("--image-size", type=int, default=None)

    import importlib

    for module in _COMMAND_MODULES:  # larger command groups register themselves
        try:
            importlib.import_module(module).register(add)
        except ModuleNotFoundError as exc:
            if not (exc.name and module.startswith(exc.name)):
                raise
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except DglbenchError as exc:
        print(f"dglbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dglbench: interrupted; finished results are kept, re-run to resume", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
