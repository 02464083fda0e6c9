"""The ``twins-np`` command line: ``twins-np <command> --help`` for each command.

Each command lives in its own module under :mod:`twins_np.commands` and provides
``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# importing twins_np has already tuned glibc malloc; main's call is a no-op kept for clarity
from ._malloc import tune_malloc as _tune_malloc

# command name -> module in twins_np.commands
COMMANDS = {
    "info": "info",
    "gradcheck": "gradcheck",
    "flops": "flops",
    "assignment": "assignment",
    "convert": "convert",
    "predict": "predict",
    "train": "train",
    "evaluate": "evaluate",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twins-np", description="Twins vision transformers in NumPy/CuPy.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, mod in COMMANDS.items():
        module = importlib.import_module(f"twins_np.commands.{mod}")
        module.add_parser(sub, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _tune_malloc()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, KeyError) as e:
        print(f"twins-np {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
