"""The layering of twins-np is a contract: no import circle, no import that reaches up a layer.

`make lint` runs the import-linter contracts of setup.cfg; these tests prove that they hold
and that they can fail: an upward import planted in a copy of the package breaks them, and
the report names the offending import. docs/architecture.md explains the layers.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

grimp = pytest.importorskip("grimp", reason="import-linter (with grimp) is in the dev extra")


def _lint_imports() -> pathlib.Path | None:
    script = pathlib.Path(sys.executable).with_name("lint-imports")
    return script if script.exists() else None


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return groups


def _module_graph() -> dict[str, set[str]]:
    """Every module of twins_np and the twins_np modules it imports, function-level and type-only imports included.

    A package's ``__init__`` importing its own submodules (re-exports) is not an edge: a submodule
    that imports its parent package for a sibling is what would close a circle, and that shows
    as an edge from the submodule.
    """
    g = grimp.build_graph("twins_np", cache_dir=None)
    out: dict[str, set[str]] = {}
    for m in g.modules:
        if not m.startswith("twins_np"):
            continue
        imported = {i for i in g.find_modules_directly_imported_by(m) if i.startswith("twins_np")}
        out[m] = {i for i in imported if not i.startswith(m + ".")}
    return out


def test_no_import_circle():
    circles = [group for group in _strongly_connected(_module_graph()) if len(group) > 1]
    assert circles == [], f"modules that import each other (directly or through others): {circles}"


def test_the_circle_check_finds_a_circle():
    """The checker itself: a planted two-module circle is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [g for g in _strongly_connected(graph) if len(g) > 1] == [["a", "b", "c"]]


@pytest.mark.skipif(_lint_imports() is None, reason="lint-imports (import-linter, dev extra) is not installed")
def test_contracts_hold_and_an_upward_import_breaks_them(tmp_path: pathlib.Path):
    script = _lint_imports()
    assert script is not None
    ok = subprocess.run([str(script), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 broken" in ok.stdout

    # the same contracts on a copy of the package where a functional op reaches up to the models
    shutil.copytree(ROOT / "twins_np", tmp_path / "twins_np", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    victim = tmp_path / "twins_np" / "functional" / "linear.py"
    victim.write_text(victim.read_text() + "\n\ndef _reach_up():\n    from ..models import Twins  # noqa: F401\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    cmd = [str(script), "--no-cache", "--no-logo"]
    bad = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode != 0
    assert "BROKEN" in bad.stdout
    assert "twins_np.functional.linear -> twins_np.models" in bad.stdout, bad.stdout
