"""The worker: runs one task's student code in the sandbox and answers the grader's calls.

Started by ``warden.py`` (never imported by the grader) as ``python -I -S -B worker.py
IN_FD OUT_FD SITE_DIRS`` (the folders NumPy comes from, ``os.pathsep``-separated), in an empty
working folder, with ``wire.py`` beside it. Before any student
code runs it reads its setup from the grader: the library folder (the student copy's
``twins_np``, with every task stripped), the student's files of this task (found first by
an import hook), and the functions of the *other* tasks it
may need (LSA needs the attention core's backward and the window functions). Those are
replaced, in every loaded module, by proxies that ask the grader; the grader answers only
the calls the reference solution makes on this check's inputs, from values the trusted
reference process computed, so no other task's reference can be called from here.

Then it serves the grader's calls: decode the inputs, make the call (:func:`wire.perform`),
send back the result as plain arrays, or the exception's type, message and line.

Nothing here is a protection: the student's code runs in this process and can change all of
it. What a student can do from here is limited by the sandbox (another user, no network,
hidden folders, limits) and by the grader, which trusts nothing it reads from this process.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import inspect
import os
import sys
import traceback
from typing import Any

# the blocked modules: grading must not depend on PyTorch or autodiff being installed
BLOCKED = ("torch", "torchvision", "timm", "functorch", "jax", "jaxlib", "autograd", "tensorflow", "cupy", "cupyx",
           "numba", "twins_np.gradcheck", "twins_np.gradcheck_suite", "twins_np.course")  # fmt: skip


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{name} is not available when grading")
        return None


class _Overlay(importlib.abc.MetaPathFinder):
    """The student's files of this task, found before the library's stubs of them."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name in self.files:
            return importlib.util.spec_from_file_location(name, self.files[name])
        return None


def _resolve(name: str) -> Any:
    """``"module:Qual.name"`` of the library, imported."""
    module, _, qual = name.partition(":")
    if not module.startswith("twins_np.") or not qual:
        raise ValueError(f"not a library name: {name!r}")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def _where(tb: Any, files: set[str]) -> str:
    """``file, line N`` of the deepest frame in the student's files (else the deepest frame)."""
    frames = traceback.extract_tb(tb)
    mine = [f for f in frames if f.filename in files] or frames[-1:]
    if not mine:
        return ""
    f = mine[-1]
    return f"{os.path.basename(f.filename)}, line {f.lineno}"


def _error(e: BaseException, files: set[str]) -> dict[str, Any]:
    if isinstance(e, SyntaxError) and e.filename:
        where = f"{os.path.basename(e.filename)}, line {e.lineno}"
    else:
        where = _where(e.__traceback__, files)
    return {"op": "error", "type": type(e).__name__, "message": str(e)[:4000], "where": where}


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    stdlib = [p for p in sys.path if p.startswith(sys.base_prefix)]
    site = [p for p in sys.argv[3].split(os.pathsep) if p]
    sys.path[:] = [here, *site, *stdlib]
    sys.meta_path.insert(0, _Block())
    import numpy  # noqa: F401  # before any student code
    import wire  # type: ignore[import-not-found]  # wire.py, beside this file

    fd_in, fd_out = int(sys.argv[1]), int(sys.argv[2])
    rfile = os.fdopen(fd_in, "rb", buffering=0)

    def read_exact(n: int) -> bytes:
        chunks, left = [], n
        while left:
            b = rfile.read(left)
            if not b:
                raise EOFError("the grader closed the pipe")
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)

    setup, _ = wire.read_message(read_exact, 1 << 20)
    sys.path[:] = [setup["library"], *site, *stdlib]

    student_files = set(setup["overlay"].values())
    sys.meta_path.insert(1, _Overlay(setup["overlay"]))
    try:
        for module in setup["modules"]:
            importlib.import_module(module)
    except BaseException as e:  # noqa: BLE001 - a SyntaxError, an ImportError, a SystemExit at import ...
        wire.write_message(fd_out, {**_error(e, student_files), "phase": "import"})
        return
    _install_proxies(setup["proxies"], wire, read_exact, fd_out)
    wire.write_message(fd_out, {"op": "ready"})
    while True:
        try:
            header, arrays = wire.read_message(read_exact, 1 << 34)
        except EOFError:  # the grader is done
            return
        if header.get("op") != "call":
            return
        try:
            args = wire.decode(header["args"], arrays, _resolve)
            kwargs = wire.decode(header["kwargs"], arrays, _resolve)
            value = wire.perform(header, args, kwargs, _resolve)
            out: list[Any] = []
            tree = wire.encode(value, out)
        except BaseException as e:  # noqa: BLE001 - every failure of student code is a result
            wire.write_message(fd_out, _error(e, student_files))
            continue
        wire.write_message(fd_out, {"op": "result", "value": tree}, out)


def _install_proxies(names: list[str], wire: Any, read_exact: Any, fd_out: int) -> None:
    """Replace each other task's function, wherever a loaded module holds it, by a proxy."""
    for name in names:
        try:
            stub = _resolve(name)
        except (ImportError, AttributeError, ValueError):
            continue
        proxy = _proxy(name, stub, wire, read_exact, fd_out)
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("twins_np"):
                for attr, value in list(vars(module).items()):
                    if value is stub:
                        setattr(module, attr, proxy)


def _proxy(name: str, stub: Any, wire: Any, read_exact: Any, fd_out: int) -> Any:
    signature = inspect.signature(stub)

    def proxy(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arrays: list[Any] = []
        tree = wire.encode(dict(bound.arguments), arrays)
        wire.write_message(fd_out, {"op": "dep", "fn": name, "args": tree}, arrays)
        header, got = wire.read_message(read_exact, 1 << 34)
        if header.get("op") != "dep_result":
            raise RuntimeError(header.get("message", f"{name}: no answer"))
        return wire.decode(header["value"], got, _resolve)

    proxy.__name__ = proxy.__qualname__ = stub.__name__
    proxy.__doc__ = stub.__doc__
    return proxy


if __name__ == "__main__":
    main()
