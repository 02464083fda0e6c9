"""Notebooks in a student copy, at any stage: a cell that needs an unwritten task says so and the notebook goes on.

An IPython extension. The student copy's notebooks load it in their first code cell
(``%load_ext twins_np.course.cells``; ``build`` adds the line). From then on every cell runs
as written, except that:

- when a task's stub raises its ``NotImplementedError`` (the message starts with the task id:
  ``"lsa_backward: implement ..."``), the cell stops there and prints one line instead of a
  traceback: which task it needs and the command that checks it. The names the cell assigns
  are remembered as depending on that task. When the stub is the notebook's own (a
  step-through of the task stripped from the cell itself, which the student writes there too),
  the line says so;
- a later cell that reads one of those names is not run; it prints the same kind of line (as
  does a cell that meets a name no cell defined, once a stub has stopped one: the stripped
  region of a step-through was to define it).

Any other exception (a bug in the student's code, a failed assertion) is raised as usual: a
task that is written but wrong shows its error. Nothing changes in a notebook that does not
load the extension, or where every task is written.
"""

from __future__ import annotations

import ast
import re
from typing import Any

__all__ = ["load_ipython_extension", "unload_ipython_extension"]

_STUB = re.compile(r"^(\w+): implement ")  # the stubs' message: "<task>: implement <title> (see ...)"
_GUARD = "__twins_np_cells__"
_LAST = "__twins_np_last__"


def _line(task: str, why: str = "") -> str:
    return (f"[skipped] this cell needs `{task}`, which is not written yet{why}; check it with "
            f"`python -m pytest -m {task}` (or `twins-np assignment status`), then run the notebook again")  # fmt: skip


def _in_library(error: BaseException) -> bool:
    """Whether the exception was raised in twins_np's code (a library stub), not in a cell."""
    import pathlib

    package = pathlib.Path(__file__).resolve().parents[1]
    tb = error.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    try:
        return last is not None and package in pathlib.Path(last).resolve().parents
    except (OSError, ValueError):
        return False


def _stores(tree: ast.AST) -> set[str]:
    """The names a cell assigns (variables, functions, classes, imports)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return out


def _loads(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


class Guard(ast.NodeTransformer):
    """Rewrites each cell: skipped when it reads a name of a cell that stopped at a stub, else run
    inside ``try`` with the stubs' ``NotImplementedError`` caught (the last expression is still shown)."""

    def __init__(self, tasks: set[str]) -> None:
        self.tasks = tasks  # the task ids a stub may name
        self.missing: dict[str, tuple[str, bool]] = {}  # name -> (the task a stopped cell needed, a notebook's own stub)
        self.step = 0  # the top-level statement of the cell now running
        self.stopped: list[tuple[str, bool]] = []  # (task, a notebook's own stub) of the stubs that stopped a cell

    # called from the rewritten cells --------------------------------------------------------
    def at(self, step: int) -> None:
        self.step = step

    def caught(self, error: BaseException, stores: list[list[str]]) -> None:
        """A stub stopped the cell at statement ``self.step``: what it and the statements after
        it assign was not computed (the statements before it ran)."""
        m = _STUB.match(str(error))
        if not m or m[1] not in self.tasks:
            raise error
        local = not _in_library(error)
        if local:  # the notebook's own step-through of the task, stripped here: the TODO is in this cell
            print(f"[skipped] this cell steps through `{m[1]}` by hand: write its TODO above (your `{m[1]}` is the "
                  "model), then run the notebook again")  # fmt: skip
        else:
            print(_line(m[1]))
        self.stopped.append((m[1], local))
        self._forget(stores[self.step :], m[1], local)

    def undefined(self, error: NameError, stores: list[list[str]]) -> None:
        """A name no cell defined: the code that would have defined it was a stub's region in an
        earlier cell that stopped (a stripped region assigns nothing). Else a plain NameError."""
        if not self.stopped:
            raise error
        task, local = self.stopped[-1]
        self._say(task, local, getattr(error, "name", None) or str(error))
        self._forget(stores[self.step :], task, local)

    def skip(self, task: str, local: bool, via: str, stores: list[str]) -> None:
        self._say(task, local, via)
        self._forget([stores], task, local)

    def _say(self, task: str, local: bool, via: str) -> None:
        if local:
            print(f"[skipped] this cell steps through `{task}` too: it reads `{via}`, which the step-through above computes")
        else:
            print(_line(task, f" (through `{via}`, from a cell that needed it)"))

    def _forget(self, stores: list[list[str]], task: str, local: bool) -> None:
        for names in stores:
            for name in names:
                self.missing[name] = (task, local)

    # the rewriting -------------------------------------------------------------------------
    def visit_Module(self, node: ast.Module) -> ast.Module:
        if not node.body:
            return node
        stores = sorted(_stores(node) - {_LAST, _GUARD})
        needed: list[str] = []
        assigned: set[str] = set()  # a name the cell assigns before it reads it is the cell's own
        for stmt in node.body:
            needed += sorted((_loads(stmt) & set(self.missing)) - assigned)
            assigned |= _stores(stmt)
        if needed:
            task, local = self.missing[needed[0]]
            call = f"{_GUARD}.skip({task!r}, {local!r}, {needed[0]!r}, {stores!r})"
            return ast.fix_missing_locations(ast.Module(body=ast.parse(call).body, type_ignores=[]))
        for name in stores:  # a cell that assigns a name again computes it anew
            self.missing.pop(name, None)
        statements = list(node.body)
        last = statements[-1] if isinstance(statements[-1], ast.Expr) else None
        if last is not None:
            statements[-1] = ast.Assign(targets=[ast.Name(_LAST, ast.Store())], value=last.value)
        else:
            statements.append(ast.parse(f"{_LAST} = None").body[0])
        per_step = [sorted(_stores(s) - {_LAST, _GUARD}) for s in statements]
        body: list[ast.stmt] = []
        for i, s in enumerate(statements):
            body += [*ast.parse(f"{_GUARD}.at({i})").body, s]
        handler = ast.parse(f"try:\n    pass\nexcept NotImplementedError as __e:\n    {_GUARD}.caught(__e, {per_step!r})\n"
                            f"    {_LAST} = None\nexcept NameError as __e:\n    {_GUARD}.undefined(__e, {per_step!r})\n"
                            f"    {_LAST} = None").body[0]  # fmt: skip
        assert isinstance(handler, ast.Try)
        handler.body = body
        new: list[ast.stmt] = [handler, *ast.parse(_LAST).body] if last is not None else [handler]
        return ast.fix_missing_locations(ast.Module(body=new, type_ignores=[]))


def load_ipython_extension(ip: Any) -> None:
    from .tasks import ASSIGNMENT_TASKS

    if any(isinstance(t, Guard) for t in ip.ast_transformers):
        return
    guard = Guard(set(ASSIGNMENT_TASKS))
    ip.push({_GUARD: guard})
    ip.ast_transformers.append(guard)


def unload_ipython_extension(ip: Any) -> None:
    ip.ast_transformers[:] = [t for t in ip.ast_transformers if not isinstance(t, Guard)]
