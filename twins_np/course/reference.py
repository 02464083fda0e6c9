"""The reference process: the trusted side that computes what a submission is compared with.

Started by the grader (through :mod:`twins_np.course.runner`) as a separate Python process
that imports the *instructor's* twins-np, the one with the solutions; the grader itself
never imports a solution. It reads one request (the tasks, the grading run's secret seed,
each task's functions) and writes one message per task, in the order asked:

- each case's **call** (the function and its inputs), as the worker will receive it;
- the **expected** outputs: the reference solution's, on the same inputs;
- the reference's **time** for the call (the best of a few runs);
- the **dependency calls**: every call the reference made, during the case, into another
  task's functions (LSA's backward calls the attention core's and the window functions),
  with its arguments and result. The grader answers a worker's proxy call only when it
  matches one of these, so a task can use another task's function only on the inputs the
  reference solution gives it.

The request comes on stdin, the messages go to the file descriptor given in ``argv``; the
format is :mod:`twins_np.course.wire`.
"""

from __future__ import annotations

import copy
import inspect
import os
import sys
import time
import traceback
from typing import Any

import numpy as np

from . import checks, wire

__all__ = ["main", "reference_packet"]


def _resolve(name: str) -> Any:
    import importlib

    module, _, qual = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


class _Recorder:
    """Replaces the given functions in every loaded twins_np module by wrappers that record
    their outermost calls (arguments as given, result), and puts them back."""

    def __init__(self, names: list[str]) -> None:
        self.calls: list[dict[str, Any]] = []
        self.originals: dict[int, tuple[Any, Any]] = {}
        self.depth = 0
        for name in names:
            fn = _resolve(name)
            if id(fn) not in self.originals:
                self.originals[id(fn)] = (fn, self._wrap(name, fn))
        self.patched: list[tuple[Any, str, Any]] = []

    def _wrap(self, name: str, fn: Any) -> Any:
        signature = inspect.signature(fn)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.depth:
                return fn(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            given = copy.deepcopy(dict(bound.arguments))
            self.depth += 1
            try:
                value = fn(*args, **kwargs)
            finally:
                self.depth -= 1
            self.calls.append({"fn": name, "args": given, "value": copy.deepcopy(value)})
            return value

        return wrapper

    def __enter__(self) -> _Recorder:
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("twins_np"):
                for attr, value in list(vars(module).items()):
                    if id(value) in self.originals and self.originals[id(value)][0] is value:
                        self.patched.append((module, attr, value))
                        setattr(module, attr, self.originals[id(value)][1])
        return self

    def __exit__(self, *exc: Any) -> None:
        for module, attr, value in self.patched:
            setattr(module, attr, value)
        self.patched.clear()


def _follow(value: Any, path: list[int]) -> Any:
    for i in path:
        value = value[i]
    return value


def reference_packet(task: str, seed: int, others: list[str], repeats: int = 3) -> tuple[dict[str, Any], list[np.ndarray]]:
    """One task's message: its cases with calls, expected outputs, times and dependency calls.

    Args:
        task: the task id.
        seed: the grading run's secret seed.
        others: the functions of the other tasks (``"module:function"``) whose calls are recorded.
        repeats: the reference is timed this many times per case (the best counts).
    """
    arrays: list[np.ndarray] = []
    out_cases = []
    for case in checks.cases(task, seed):
        call = {"fn": case.fn, "form": case.form,
                "args": wire.encode(list(case.args), arrays), "kwargs": wire.encode(case.kwargs, arrays)}  # fmt: skip
        how = {"fn": case.fn, "form": case.form}
        with _Recorder(others) as rec:  # once with the dependency calls recorded ...
            value = wire.perform(how, *copy.deepcopy((list(case.args), case.kwargs)), _resolve)
        deps, best = rec.calls, float("inf")
        for _ in range(repeats):  # ... then timed without the recording's copies
            args, kwargs = copy.deepcopy((list(case.args), case.kwargs))  # an optimizer step changes its inputs
            t0 = time.perf_counter()
            wire.perform(how, args, kwargs, _resolve)
            best = min(best, time.perf_counter() - t0)
        checks_out = []
        for name, path in case.outputs.items():
            expected = np.asarray(_follow(value, list(path)))
            if not np.any(expected) or not np.all(np.isfinite(expected)):
                raise ValueError(f"{task}: case {case.name!r}, output {name}: the reference gives zeros or non-finite values")
            tol = 0.0 if case.exact else (1e-4 if expected.dtype == np.float32 else 1e-10)
            checks_out.append({"name": f"{case.name}: {name}", "output": name, "path": list(path), "tol": tol,
                               "expected": wire.encode(expected, arrays)})  # fmt: skip
        out_cases.append({
            "name": case.name, "call": call, "describe": case.describe, "seconds": best, "checks": checks_out,
            "deps": [{"fn": d["fn"], "args": wire.encode(d["args"], arrays), "value": wire.encode(d["value"], arrays)}
                     for d in deps],
        })  # fmt: skip
    return {"task": task, "cases": out_cases}, arrays


def main() -> None:
    out_fd = int(sys.argv[1])
    stdin = sys.stdin.buffer

    def read_exact(n: int) -> bytes:
        data = stdin.read(n)
        if len(data) != n:
            raise EOFError("the grader closed the pipe")
        return data

    request, _ = wire.read_message(read_exact, 1 << 20)
    for task in request["tasks"]:
        try:
            header, arrays = reference_packet(task, int(request["seed"]), request["others"][task], int(request.get("repeats", 3)))
        except Exception as e:  # noqa: BLE001 - reported to the grader, which stops with it
            line = traceback.format_exception_only(type(e), e)[-1].strip()
            header, arrays = {"task": task, "error": line}, []
        wire.write_message(out_fd, header, arrays)
    os.close(out_fd)


if __name__ == "__main__":
    main()
