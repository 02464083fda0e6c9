"""The ``twins-np`` command line: ``twins-np <command> --help`` for each command.

Each command lives in its own module under :mod:`twins_np.commands` and provides
``add_parser(subparsers)`` and ``run(args) -> int``.

Exit codes: 0 success; 2 bad input or environment (a bad option, a missing, damaged or
hostile file, an unreadable image, a read-only or full disk, a folder where a file is
expected or the other way round, an output folder in use by another run), always with one
line ``twins-np COMMAND: error: MESSAGE`` on stderr; 1 only when a training run stopped on
a NaN/Inf (and when ``gradcheck`` finds a failing layer); 130 after Ctrl-C and 143 after
SIGTERM, which ends a command as Ctrl-C does (one line on stderr; a checkpoint being
written is discarded and the last one stays intact).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import pickle
import signal
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any

from . import __version__  # importing twins_np also tuned glibc malloc (twins_np/_malloc.py)

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
    parser.add_argument("--version", action="version", version=f"twins-np {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, mod in COMMANDS.items():
        module = importlib.import_module(f"twins_np.commands.{mod}")
        module.add_parser(sub, name)
    return parser


def _os_error(err: OSError) -> str:
    """One line for a file-system fault: the file, what went wrong, what to do."""
    where = f"{err.filename}: " if err.filename else ""
    hint = {
        errno.ENOSPC: "the disk is full; free some space or write elsewhere",
        errno.EROFS: "the file system is read-only; write elsewhere",
        errno.EACCES: "permission denied",
        errno.EISDIR: "a folder where a file is expected",
        errno.ENOTDIR: "a file where a folder is expected",
        errno.ENOENT: "no such file or folder",
    }.get(err.errno or 0)
    return f"{where}{hint or err.strerror or err}"


# what to try when memory runs out and a command names no knob of its own (OUT_OF_MEMORY)
_MEMORY_ADVICE = "close other programs, or run on a machine with more memory"


def _memory_advice(command: str | None) -> str:
    """The knobs ``command`` has against running out of memory (its module's ``OUT_OF_MEMORY``)."""
    if command not in COMMANDS:
        return _MEMORY_ADVICE
    module = importlib.import_module(f"twins_np.commands.{COMMANDS[command]}")
    return str(getattr(module, "OUT_OF_MEMORY", _MEMORY_ADVICE))


def _message(err: BaseException, command: str | None = None) -> str:
    from .commands._common import flag

    if hasattr(err, "spelled"):  # a training setting named by its field: the library's facts, our flags
        return " ".join(err.spelled(flag).split())
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]  # str(KeyError) would quote the message
    if isinstance(err, MemoryError):  # advice with the flags this command has (predict has no --batch-size)
        return " ".join(f"out of memory{': ' + str(err) if str(err) else ''}; {_memory_advice(command)}".split())
    if isinstance(err, OSError) and err.errno is not None:  # from the OS, not a message of ours
        return _os_error(err)
    text = " ".join(str(err).split())  # one line
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``twins-np ARGV``; returns the exit code (see the module docstring), never raises SystemExit."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse printed its message (or the help / the version)
        return 0 if e.code in (0, None) else 2
    from .commands._common import CommandError

    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except (CommandError, ValueError, TypeError, RuntimeError, KeyError, ImportError, OSError, EOFError) as e:
        error: BaseException = e
    except (zipfile.BadZipFile, tarfile.TarError, pickle.UnpicklingError, MemoryError) as e:
        error = e  # a damaged archive, a refused pickle (a hostile CIFAR-10 batch), too large a model
    except Terminated:
        print(f"twins-np {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM  # 143, the shell's code for a process ended by SIGTERM
    except KeyboardInterrupt:
        print(f"twins-np {args.command}: interrupted", file=sys.stderr)
        return 130  # the shell's code for a process ended by SIGINT
    print(f"twins-np {args.command}: error: {_message(error, args.command)}", file=sys.stderr)
    return 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a job scheduler's stop, a closing container), raised where the
    program was, as Ctrl-C raises KeyboardInterrupt: the same clean-up runs (an atomic write
    in progress is discarded, the last checkpoint stays as it was), then one line and exit 143."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while a command runs (the main thread only can)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
