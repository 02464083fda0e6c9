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

A mistyped command, verb, choice or option gets a "did you mean" (``twins-np trian`` ->
``train``, ``--versoin`` -> ``--version``), as mistyped model names and dataset names do.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import pickle
import signal
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from . import __version__  # importing twins_np also tuned glibc malloc (twins_np/_malloc.py)
from .training.overrides import did_you_mean

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


class _Parser(argparse.ArgumentParser):
    """argparse with a "did you mean" for a mistyped command, verb or ``choices`` value.

    argparse (before Python 3.14's ``suggest_on_error``) lists the valid choices but not the
    closest one. Subparsers are made with the parent's class, so every level gets this.
    """

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is None or value in action.choices:
            return
        names = [str(c) for c in action.choices]
        # a command typed without its dashes ("version", "help") is closest to the option
        near = names + _long_options(self) if isinstance(action.choices, dict) else names
        raise argparse.ArgumentError(
            action, f"invalid choice: {value!r}{did_you_mean(str(value), near)}; choose from {', '.join(names)}"
        )


def _long_options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for o in parser._option_string_actions if o.startswith("--")]


def _subparser(parser: argparse.ArgumentParser, name: str | None) -> argparse.ArgumentParser | None:
    """The parser of the subcommand ``name`` of ``parser``, or None."""
    for action in parser._actions:
        if isinstance(action.choices, dict) and name in action.choices:
            return action.choices[name]
    return None


def _refuse_unknown_options(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> NoReturn:
    """argparse's "unrecognized arguments", said by the (sub)command that got them, with a suggestion."""
    chosen = parser
    for dest in ("command", "verb"):  # twins-np COMMAND [VERB]
        sub = _subparser(chosen, getattr(args, dest, None))
        if sub is None:
            break
        chosen = sub
    hint = ""
    for word in extras:
        if word.startswith("-") and (hint := did_you_mean(word.split("=", 1)[0], _long_options(chosen))):
            break
    chosen.error(f"unrecognized arguments: {' '.join(extras)}{hint}")


def _check_leading_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Options before the command must be twins-np's own (``--version``, ``--help``).

    argparse would first say that COMMAND is missing (``twins-np --versoin``), hiding the typo.
    No option of ``twins-np`` itself takes a value, so the command is the first word without a dash.
    """
    for word in argv:
        if not word.startswith("-"):
            return
        known = _long_options(parser)
        if word in parser._option_string_actions or (word.startswith("--") and any(o.startswith(word) for o in known)):
            continue  # argparse also accepts an unambiguous prefix (--vers)
        parser.error(f"unrecognized arguments: {word}{did_you_mean(word, known)}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="twins-np", description="Twins vision transformers in NumPy/CuPy.")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        _check_leading_options(parser, argv)
        args, extras = parser.parse_known_args(argv)
        if extras:
            _refuse_unknown_options(parser, args, extras)
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


class _StopSignals:
    """Ctrl-C and SIGTERM as exceptions raised where the program was, never lost.

    Python cannot raise out of a finalizer (a ``__del__``, a generator closed by the garbage
    collector, a ``zipfile`` closing itself): an exception raised there is printed as
    "Exception ignored in ..." and dropped, and the run would go on to its last epoch. So a
    swallowed stop reaches :meth:`unraisable` (installed as ``sys.unraisablehook``), which
    marks it pending; a helper thread sends the signal again until a handler has raised it
    outside the hook. Nothing is printed for it.
    """

    def __init__(self) -> None:
        self.pending: int | None = None  # the signal still to deliver
        self.active = True
        self.lock = threading.Lock()
        self.previous_hook = sys.unraisablehook

    def handle(self, signum: int, frame: Any) -> None:
        while frame is not None:  # inside our own hook: raising here would be swallowed too
            if frame.f_code is _StopSignals.unraisable.__code__:
                return  # still pending: the helper thread sends it again
            frame = frame.f_back
        self.pending = None
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    def unraisable(self, unraisable: Any) -> None:
        exc_type = unraisable.exc_type
        if exc_type is None or not issubclass(exc_type, KeyboardInterrupt):
            self.previous_hook(unraisable)
            return
        with self.lock:
            start = self.pending is None
            self.pending = signal.SIGTERM if issubclass(exc_type, Terminated) else signal.SIGINT
        if start:
            threading.Thread(target=self._send_again, daemon=True).start()

    def _send_again(self) -> None:
        while True:
            time.sleep(0.02)  # let the main thread leave the finalizer and the hook
            signum = self.pending
            if signum is None or not self.active:
                return
            os.kill(os.getpid(), signum)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while a command runs, and let neither it nor
    Ctrl-C be swallowed by a finalizer (see :class:`_StopSignals`; the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stop = _StopSignals()
    previous = signal.signal(signal.SIGTERM, stop.handle), signal.getsignal(signal.SIGINT)
    if previous[1] is signal.default_int_handler:  # not where Ctrl-C is ignored (``nohup``, a background job)
        signal.signal(signal.SIGINT, stop.handle)
    sys.unraisablehook = stop.unraisable
    try:
        yield
    finally:
        stop.active = False
        sys.unraisablehook = stop.previous_hook
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
