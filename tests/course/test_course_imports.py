"""The course package's place in the import graph: "sealed" is a property of the imports.

Read from the sources (an AST walk of every module, imports inside functions included), not
from what happens to be imported at run time:

- the grader imports only the runner and the manifest reader, and through them only the
  message format: never the task table, the markers, the checks, the builder or the
  reference process, and no module of the library (where the solutions are);
- nothing in the library imports the course package (only ``commands/assignment.py`` and
  ``cli.py`` may, and the tests);
- the course package does not import the training code or the command line;
- the scripts run in and around the sandbox (``worker.py``, ``warden.py``) import no twins_np.

(Importing ``twins_np.course.grader`` runs the ``twins_np`` package's ``__init__``, as any
submodule import does; the grader uses nothing of it.)
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "twins_np"


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every module a source imports, anywhere in it, as absolute names (``from . import x`` gives
    ``pkg.x`` when ``x`` is a module, else ``pkg``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            modules = [f"{mod}.{a.name}" for a in node.names if _is_module(f"{mod}.{a.name}")]
            out.update(modules)
            if len(modules) < len(node.names):  # names from the module itself (not only its submodules)
                out.add(mod)
    return out


def _is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): {m for m in _imports(p) if m == "twins_np" or m.startswith("twins_np.")}
            for p in PACKAGE.rglob("*.py")}  # fmt: skip


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(graph.get(m, ()))
    return seen


def test_the_grader_imports_only_the_runner_and_the_manifest_reader():
    graph = _graph()
    assert graph["twins_np.course.grader"] == {"twins_np.course.runner", "twins_np.course.manifest"}
    reach = _closure(graph, "twins_np.course.grader")
    course = {f"twins_np.course.{m}" for m in ("grader", "runner", "manifest", "wire")}
    assert reach == course, reach
    for forbidden in ("tasks", "checks", "reference", "build", "student", "autograder"):
        assert f"twins_np.course.{forbidden}" not in reach


def test_the_library_never_imports_the_course():
    graph = _graph()
    allowed = {"twins_np.commands.assignment", "twins_np.cli"}
    offenders = sorted(m for m, deps in graph.items() if not m.startswith("twins_np.course") and m not in allowed
                       and any(d == "twins_np.course" or d.startswith("twins_np.course.") for d in deps))  # fmt: skip
    assert offenders == [], offenders


def test_the_course_does_not_import_training_or_the_command_line():
    graph = _graph()
    for module, deps in graph.items():
        if module.startswith("twins_np.course"):
            bad = {d for d in deps if d.split(".")[1:2] in (["training"], ["commands"], ["cli"])}
            assert not bad, (module, bad)


def test_the_sandbox_scripts_import_no_twins_np():
    for script in ("worker.py", "warden.py", "wire.py"):
        deps = _imports(PACKAGE / "course" / script)
        assert not any(d.startswith("twins_np") for d in deps), (script, deps)
    stdlib = {"__future__", "ctypes", "json", "os", "resource", "signal", "sys", "time"}
    assert _imports(PACKAGE / "course" / "warden.py") <= stdlib


def test_the_import_walk_sees_function_level_imports():
    """The walk itself: a lazy import inside a function counts (the build imports the grader so)."""
    assert "twins_np.course.grader" in _imports(PACKAGE / "course" / "build.py")
    assert "twins_np.course.runner" in _graph()["twins_np.commands.assignment"]
