"""The command-line entry points, in one package: ``fedanchors <command> [args]``.

The only part of the library that imports the Flower layers (``server``, ``clients``): a
federated run, a sweep or benchmark over federated runs and the federated gate need them;
everything below is Flower-free (``pyproject.toml``, ``[tool.importlinter]``). Each command
also runs as ``python -m fedanchors.<command>`` (``fedanchors.gating.ablation`` for the
gate's ablation), so existing scripts keep working.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


# each command's module is imported when it runs (``fedanchors evaluate`` never imports Ray or
# flwr); written as plain imports, so that a reader (and import-linter) can follow them
def _simulate(argv: list[str]) -> int:
    from fedanchors.cli.simulate import main

    return main(argv)


def _evaluate(argv: list[str]) -> int:
    from fedanchors.evaluate import main

    return main(argv)


def _compare(argv: list[str]) -> int:
    from fedanchors.compare import main

    return main(argv)


def _sweep(argv: list[str]) -> int:
    from fedanchors.cli.sweep import main

    return main(argv)


def _benchmark(argv: list[str]) -> int:
    from fedanchors.cli.benchmark import main

    return main(argv)


def _gating(argv: list[str]) -> int:
    from fedanchors.cli.gating import main

    return main(argv)


def _gating_ablation(argv: list[str]) -> int:
    from fedanchors.cli.gating_ablation import main

    return main(argv)


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "simulate": (_simulate, "train a config, centralized or federated (--resume, --compare)"),
    "evaluate": (_evaluate, "metrics of a run's best or last checkpoint on a split"),
    "compare": (_compare, "put runs side by side: curves and a table"),
    "sweep": (_sweep, "a grid over config keys x seeds, resumable"),
    "benchmark": (_benchmark, "methods x learning rates x seeds on one setting"),
    "gating": (_gating, "train a gate over expert runs"),
    "gating-ablation": (_gating_ablation, "the gate's ablation table"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    return "usage: fedanchors <command> [args]   (fedanchors <command> --help)\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``fedanchors <command> [args]``: run ``command`` on ``args``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    return int(COMMANDS[name][0](rest) or 0)
