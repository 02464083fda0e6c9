"""The ``twins-np`` command line: ``twins-np <command> --help`` for each command.

Each command lives in its own module under :mod:`twins_np.commands` and provides
``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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


def _tune_malloc() -> None:
    """Keep glibc from returning big freed temporaries to the OS after every op.

    NumPy chains allocate and free large temporaries; with glibc's default dynamic
    mmap threshold each free can unmap and the next allocation fault the pages in again,
    which made such chains up to ~3x slower. Raising the trim and mmap thresholds keeps
    the memory in the process. No-op where glibc is absent.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 31)
    except (OSError, AttributeError):
        pass


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
