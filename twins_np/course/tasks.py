"""Authoring: the task table and the solution markers.

The solution code lives in the library between two marker comments, each alone on its
line: ``# BEGIN SOLUTION <task-id>`` before the body a student writes and
``# END SOLUTION`` after it (``% BEGIN SOLUTION <task-id>`` / ``% END SOLUTION`` in the
MyST pages of ``docs/``, around code that would give the answer away).

:func:`strip_source` replaces each region by a ``TODO`` line saying what to compute, return
or write, and ``raise NotImplementedError("<task>: ...")``, at the same indentation, so
signatures, docstrings with shapes and the comments around the region stay;
:mod:`twins_np.course.build` applies it to the whole project. Each task has a pytest marker
(added by ``tests/conftest.py`` from :data:`ASSIGNMENT_TASKS`), so ``pytest -m lsa_backward``
runs one task's tests; :mod:`twins_np.course.checks` holds how the grader checks it.

There is no second copy of the code to keep in sync: change the library, rebuild.
"""

from __future__ import annotations

import ast
import pathlib
import re
import textwrap
from dataclasses import dataclass

__all__ = [
    "ASSIGNMENT_TASKS",
    "EXERCISES",
    "Task",
    "kernel_files",
    "kernels_of",
    "regions_in",
    "solution_files",
    "strip_source",
    "task_functions",
    "task_of_test",
]


@dataclass(frozen=True)
class Task:
    """One assignment task: what to implement and which tests grade it."""

    title: str
    doc: str  # the derivation page a student should read
    tests: tuple[str, ...]  # test selectors: "file" or "file::substring" (matched on the test id)
    # points, hours and the assignment a task belongs to: course.toml (twins_np.course.assignments)


ASSIGNMENT_TASKS: dict[str, Task] = {
    "layernorm_backward": Task(
        "LayerNorm backward (three-term dx, dgamma, dbeta)", "docs/derivations/layernorm.md",
        ("tests/functional/test_f_layernorm.py", "tests/test_gradcheck_suite.py::layernorm"),
    ),
    "gelu_backward": Task(
        "exact GELU backward", "docs/derivations/gelu.md",
        ("tests/functional/test_f_activation.py", "tests/test_gradcheck_suite.py::gelu"),
    ),
    "attention_backward": Task(
        "softmax Jacobian-vector product and the attention core's dq, dk, dv", "docs/derivations/attention.md",
        ("tests/functional/test_f_softmax.py", "tests/functional/test_f_attention.py",
         "tests/test_gradcheck_suite.py::softmax", "tests/test_gradcheck_suite.py::attention core"),
    ),
    "windows": Task(
        "window partition / reverse with right-bottom zero padding and crop", "docs/derivations/windows.md",
        ("tests/functional/test_f_windows.py", "tests/test_gradcheck_suite.py::window"),
    ),
    "lsa_backward": Task(
        "locally-grouped self-attention backward", "docs/derivations/lsa.md",
        ("tests/functional/test_f_lsa.py", "tests/test_gradcheck_suite.py::LSA",
         "tests/test_gradcheck_suite.py::LocallyGroupedAttn"),
    ),
    "gsa_backward": Task(
        "global sub-sampled attention backward (two paths into dx)", "docs/derivations/gsa.md",
        ("tests/functional/test_f_gsa.py", "tests/test_gradcheck_suite.py::GSA",
         "tests/test_gradcheck_suite.py::GlobalSubSampleAttn"),
    ),
    "peg_backward": Task(
        "depthwise 3x3 conv backward and the PEG residual", "docs/derivations/conv.md",
        ("tests/functional/test_f_peg.py", "tests/functional/test_f_depthwise_conv.py",
         "tests/test_gradcheck_suite.py::depthwise conv 3x3", "tests/test_gradcheck_suite.py::PEG",
         "tests/test_gradcheck_suite.py::PosConv"),
    ),
    "ffn_backward": Task(
        "FFN (fc1 -> GELU -> fc2) backward", "docs/derivations/mlp.md",
        ("tests/functional/test_f_mlp.py", "tests/test_gradcheck_suite.py::FFN"),
    ),
    "adamw_step": Task(
        "one AdamW update with decoupled weight decay", "twins_np/optim.py",
        ("tests/test_optim.py::adamw",),
    ),
    # the dense head's layers; BatchNorm's backward shares GroupNorm's two helpers, so its tests grade them too
    "group_norm_backward": Task(
        "GroupNorm backward (three-term dx per image and group, dgamma, dbeta)", "docs/derivations/norm2d.md",
        ("tests/functional/test_f_norm2d.py", "tests/nn/test_nn_dense.py::norm",
         "tests/test_gradcheck_suite.py::GroupNorm", "tests/test_gradcheck_suite.py::BatchNorm"),
    ),
    # resize_backward is shared by bilinear and nearest resizing: only the matrices differ
    "bilinear_resize_backward": Task(
        "bilinear (and nearest) resize backward: the transposed interpolation matrices", "docs/derivations/resize.md",
        ("tests/functional/test_f_resize.py", "tests/nn/test_nn_resize.py",
         "tests/test_gradcheck_suite.py::resize"),
    ),
}  # fmt: skip

# Notebook exercises: solutions in the instructor's jupytext sources, stripped in the copy;
# not graded by the autograder (each notebook checks its exercise when run)
EXERCISES: dict[str, str] = {
    "nb01_wrong_softmax": "notebook 01, exercise 1: a softmax backward that forgets the factor y",
    "nb02_rmsnorm": "notebook 02, exercise 2: RMSNorm forward and backward",
    "nb03_attention": "notebook 03, exercise 1: the attention core's backward from the formulas",
    "nb04_masked_lsa": "notebook 04, exercise 1: LSA with padded keys masked out",
    "nb05_avgpool": "notebook 05, exercise 1: average pooling as GSA's sub-sampler",
}

BEGIN = re.compile(r"^(?P<indent>[ \t]*)(?P<c>#|%) BEGIN SOLUTION (?P<task>[\w-]+)\s*$")
END = re.compile(r"^[ \t]*(#|%) END SOLUTION\s*$")
def task_of_test(nodeid: str) -> list[str]:
    """The tasks whose selectors match a pytest node id (used by tests/conftest.py)."""
    path, _, rest = nodeid.partition("::")
    found = []
    for name, task in ASSIGNMENT_TASKS.items():
        for sel in task.tests:
            f, _, sub = sel.partition("::")
            if path.endswith(f) and (not sub or sub.lower() in rest.lower()):
                found.append(name)
                break
    return found


def regions_in(text: str) -> list[str]:
    """The task ids of the solution regions in a source, in order."""
    return [m["task"] for m in map(BEGIN.match, text.splitlines()) if m]


def _hint(region: list[str], after: list[str]) -> str:
    """What the stub's TODO line asks for: what to return, write in place or compute.

    Read from the region's code (its last ``return``, the arrays it updates in place, the
    names the lines after it use), so every region says it without a hand-written hint.
    """
    try:
        body = ast.parse(textwrap.dedent("".join(region)))
    except SyntaxError:
        return "your code here"
    if body.body and isinstance(body.body[-1], ast.Return) and body.body[-1].value is not None:
        value = body.body[-1].value
        items = value.elts if isinstance(value, ast.Tuple) else [value]
        if all(isinstance(e, ast.Name) for e in items):
            return "compute and return " + ", ".join(e.id for e in items if isinstance(e, ast.Name))
        return "compute and return the result (see the docstring's Returns)"
    augmented = {id(n.target) for n in ast.walk(body) if isinstance(n, ast.AugAssign)}
    assigned = {
        n.id for n in ast.walk(body) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and id(n) not in augmented
    }
    in_place = []
    for node in sorted(ast.walk(body), key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0))):
        target: ast.expr | None = node.target if isinstance(node, ast.AugAssign) else None
        if isinstance(node, ast.keyword) and node.arg == "out":
            target = node.value
        if target is not None:
            text = ast.unparse(target)
            if text.split(".")[0].split("[")[0] not in assigned and text not in in_place:
                in_place.append(text)
    if "out" in {n.id for n in ast.walk(body) if isinstance(n, ast.Name)}:
        return "write the result into `out` in place (nothing to return)"
    if in_place:
        return f"update {', '.join(in_place)} in place (nothing to return)"
    later = " ".join(after)
    used = [n for n in sorted(assigned) if re.search(rf"\b{re.escape(n)}\b", later)]
    if used:
        return f"compute {', '.join(used)} (used after this block)"
    return "your code here"


def _returns_section(doc: str) -> str:
    """The first paragraph of a Google-style docstring's ``Returns:`` section, on one line."""
    m = re.search(r"^\s*Returns:\s*\n((?:[ \t]+\S.*\n?)+)", doc + "\n", re.M)
    return " ".join(m[1].split()) if m else ""


def _cache_fields(tree: ast.Module, lines: list[str], name: str) -> str:
    """What a NamedTuple cache class of the module holds: ``field (its comment)`` for each field."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            fields = []
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    note = lines[stmt.lineno - 1].partition("#")[2].strip()
                    kind = ast.unparse(stmt.annotation)
                    fields.append(f"{stmt.target.id} ({note})" if note else stmt.target.id if kind == "Any" else
                                  f"{stmt.target.id} ({kind})")  # fmt: skip
            return "; ".join(fields)
    return ""


def _contract(tree: ast.Module | None, lines: list[str], begin: int, region: list[str], after: list[str]) -> list[str]:
    """The stub's TODO lines: what the function takes, what it returns (its docstring's
    Returns), what its cache holds (the cache class's fields), or what it updates in place.

    ``begin`` is the 0-based line of the region's BEGIN marker in ``lines``; ``tree`` the
    parsed source (None when it is not Python: a notebook's or page's region gets the
    region-based hint alone).
    """
    hint = _hint(region, after)
    fn = None
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.lineno <= begin + 1 <= (node.end_lineno or 0):
                if fn is None or node.lineno > fn.lineno:
                    fn = node  # the innermost
    if fn is None:
        return [hint]
    args = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs) if a.arg != "self"]
    doc = ast.get_docstring(fn) or ""
    returns = _returns_section(doc)
    given = " and ".join([", ".join(args[:-1]), args[-1]] if len(args) > 1 else args)
    if hint.startswith("compute and return"):
        named = hint[len("compute and return ") :]
        what = returns or (doc.splitlines()[0] if doc and "(see " in named else named)
        out = [f"return {what.rstrip('.')}", f"computed from {given}: the docstring above gives the shapes and the Math"]
    else:
        out = [hint, f"from {given}: the docstring above gives the shapes and the Math"]
    for a in (*fn.args.args, *fn.args.kwonlyargs):
        kind = ast.unparse(a.annotation) if a.annotation is not None else ""
        if kind.endswith("Cache"):
            held = _cache_fields(tree, lines, kind) if tree is not None else ""
            if held:
                out.append(f"`{a.arg}` is the forward's {kind}, which holds: {held}")
    return out


def strip_source(text: str, tasks: set[str] | None = None) -> tuple[str, list[str]]:
    """Replace solution regions by a TODO line and ``raise NotImplementedError``.

    In Markdown (``%`` markers) a region becomes a note naming the task instead.

    Args:
        text: a Python source file, jupytext notebook or MyST page.
        tasks: the tasks to strip; None strips every marked region. Regions of other
            tasks keep their code (their markers are removed).

    Returns:
        (new text, the tasks stripped in this file).

    Raises:
        ValueError: on an unknown task id or unbalanced markers (with the line number).
    """
    out: list[str] = []
    stripped: list[str] = []
    lines = text.splitlines(keepends=True)
    try:
        tree: ast.Module | None = ast.parse(text)
    except (SyntaxError, ValueError):
        tree = None  # a page, or a notebook with magics: the region's own hint only
    plain = [ln.rstrip("\n") for ln in lines]
    i = 0
    while i < len(lines):
        m = BEGIN.match(lines[i])
        if not m:
            if END.match(lines[i]):
                raise ValueError(f"line {i + 1}: 'END SOLUTION' without a BEGIN")
            out.append(lines[i])
            i += 1
            continue
        task, indent = m["task"], m["indent"]
        if task not in ASSIGNMENT_TASKS and task not in EXERCISES:
            raise ValueError(f"line {i + 1}: unknown task {task!r}; known: {', '.join([*ASSIGNMENT_TASKS, *EXERCISES])}")
        j = i + 1
        while j < len(lines) and not END.match(lines[j]):
            if BEGIN.match(lines[j]):
                raise ValueError(f"line {j + 1}: nested BEGIN SOLUTION inside {task!r}")
            j += 1
        if j == len(lines):
            raise ValueError(f"line {i + 1}: BEGIN SOLUTION {task} has no END SOLUTION")
        if tasks is None or task in tasks:
            known = ASSIGNMENT_TASKS.get(task)
            title, doc = (known.title, known.doc) if known else (EXERCISES[task], "")
            if m["c"] == "%":  # a MyST page: the code is the exercise
                note = f"This part of the derivation is left out of your copy: it is the assignment task `{task}` ({title})."
                out.append(f"```{{note}}\n{note}\n```\n")
            else:
                after = []
                for line in lines[j + 1 :]:
                    if line.strip() and not line.startswith(indent):
                        break
                    after.append(line)
                msg = f"{task}: implement {title}" + (f" (see {doc})" if doc else "")
                todo = _contract(tree, plain, i, lines[i + 1 : j], after)
                for k, piece in enumerate(textwrap.wrap(f"TODO({task}): {todo[0]}", 110)):
                    out.append(f"{indent}# {'    ' if k else ''}{piece}\n")
                for extra in todo[1:]:
                    for k, piece in enumerate(textwrap.wrap(extra, 110)):
                        out.append(f"{indent}# {'    ' if k else ''}{piece}\n")
                out.append(f"{indent}raise NotImplementedError({msg!r})\n")
            stripped.append(task)
        else:
            out.extend(lines[i + 1 : j])
        i = j + 1
    return "".join(out), stripped




def solution_files(root: pathlib.Path) -> dict[str, list[str]]:
    """task -> the library files (paths relative to ``root``) holding its solution regions."""
    out: dict[str, list[str]] = {}
    for path in sorted((root / "twins_np").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("twins_np/course/"):
            continue  # the markers in this package's docstrings are not regions
        for task in dict.fromkeys(regions_in(path.read_text())):
            out.setdefault(task, []).append(rel)
    return out


def task_functions(text: str) -> dict[str, list[str]]:
    """task -> the public module-level functions of a source that run its solution regions.

    A function runs a task's region when it holds one, or names (calls, passes on) a function
    of the same file that does: ``gelu_backward`` hands ``_gelu_backward_block`` to
    ``map_blocks``, ``batch_norm_backward`` calls GroupNorm's two helpers. Module-level aliases
    (``bilinear_resize_backward = resize_backward``) are listed too. These are the names a
    task's grading replaces, in every other task's worker, by a proxy to the trusted side.
    """
    tree = ast.parse(text)
    spans: list[tuple[int, str]] = []
    for i, line in enumerate(text.splitlines(), start=1):
        m = BEGIN.match(line)
        if m:
            spans.append((i, m["task"]))
    funcs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    reach = {
        name: {task for line, task in spans if node.lineno <= line <= (node.end_lineno or node.lineno)}
        for name, node in funcs.items()
    }
    names = {name: {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & set(funcs) for name, node in funcs.items()}
    changed = True
    while changed:  # the closure over "names a function that runs the region"
        changed = False
        for name in funcs:
            for other in names[name]:
                if not reach[other] <= reach[name]:
                    reach[name] |= reach[other]
                    changed = True
    out: dict[str, list[str]] = {}
    for name in funcs:
        for task in sorted(reach[name]):
            if not name.startswith("_"):
                out.setdefault(task, []).append(name)
    for node in tree.body:  # aliases: NAME = function
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id in funcs:
            for target in node.targets:
                if isinstance(target, ast.Name) and not target.id.startswith("_"):
                    for task in reach[node.value.id]:
                        out.setdefault(task, []).append(target.id)
    return out


def _function_reach(tree: ast.Module, spans: list[tuple[int, str]]) -> list[tuple[ast.AST, set[str]]]:
    """Every function and method of a module with the tasks whose regions it runs: those it
    holds, and those of the module-level functions it names (the closure of :func:`task_functions`)."""
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    top = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    direct = {id(n): {task for line, task in spans if n.lineno <= line <= (n.end_lineno or n.lineno)} for n in funcs}
    names = {id(n): {m.id for m in ast.walk(n) if isinstance(m, ast.Name)} & set(top) for n in funcs}
    reach = {k: set(v) for k, v in direct.items()}
    changed = True
    while changed:
        changed = False
        for n in funcs:
            for other in names[id(n)]:
                extra = reach[id(top[other])] - reach[id(n)]
                if extra:
                    reach[id(n)] |= extra
                    changed = True
    return [(n, reach[id(n)]) for n in funcs]


def kernels_of(text: str) -> dict[str, set[str]]:
    """task -> the fused kernels that a function running its regions may take instead of them.

    An op picks a fused kernel with ``use_fused(array, "NAME")`` (``twins_np.backend``); a
    kernel named so in a function (or method) that runs a task's region computes that
    task's answer: ``gelu_backward`` names ``"gelu"``, ``AdamW._update`` names ``"adamw"``.
    """
    tree = ast.parse(text)
    spans = [(i, m["task"]) for i, line in enumerate(text.splitlines(), start=1) if (m := BEGIN.match(line))]
    out: dict[str, set[str]] = {}
    for node, tasks in _function_reach(tree, spans):
        for call in ast.walk(node):
            if not (isinstance(call, ast.Call) and len(call.args) >= 2 and isinstance(call.args[1], ast.Constant)):
                continue
            f = call.func
            if (f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "") == "use_fused":
                for task in tasks:
                    out.setdefault(task, set()).add(str(call.args[1].value))
    return out


def kernel_files(root: pathlib.Path) -> dict[str, list[str]]:
    """task -> the files of ``twins_np/kernels/`` that implement its kernels (paths relative to ``root``).

    A kernel NAME's files are those ``twins_np.backend.KERNEL_FILES`` names for any device
    (``NAME.cu``, ``NAME_cpu.py``) that exist: an instructor-only part of the project when
    the task is an assignment's, since running the kernel gives the answer.
    """
    from ..backend import KERNEL_FILES

    folder = root / "twins_np" / "kernels"
    present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    out: dict[str, list[str]] = {}
    for task, rels in solution_files(root).items():
        names: set[str] = set()
        for rel in rels:
            names |= kernels_of((root / rel).read_text()).get(task, set())
        files = sorted({pattern % n for n in names for pattern in KERNEL_FILES.values()} & present)
        if files:
            out[task] = [f"twins_np/kernels/{f}" for f in files]
    return out

