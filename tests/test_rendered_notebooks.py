"""notebooks/rendered/: executed copies of notebooks 01-08 that show their figures on the repository page.

Each copy must hold exactly the cells its jupytext source generates today (a stale copy would
show code that no longer exists), be executed without errors, and stay small.
"""

from __future__ import annotations

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
import render_notebooks  # noqa: E402

SOURCES = render_notebooks.rendered_sources()
MAX_BYTES = 400_000  # one notebook
MAX_TOTAL = 1_600_000  # all of them: the repository stays small


def test_the_short_notebooks_have_copies_and_nothing_else_is_there():
    assert [s.name[:2] for s in SOURCES] == list(render_notebooks.RENDERED)
    present = sorted(p.name for p in render_notebooks.RENDERED_DIR.glob("*.ipynb"))
    assert present == sorted(render_notebooks.target(s).name for s in SOURCES)


@pytest.mark.parametrize("src", SOURCES, ids=[s.name for s in SOURCES])
def test_copy_matches_its_source(src):
    problem = render_notebooks.stale(src)
    assert problem is None, f"{problem}: run `python tools/render_notebooks.py {src.name[:2]}`"


@pytest.mark.parametrize("src", SOURCES, ids=[s.name for s in SOURCES])
def test_copy_is_executed_and_shows_figures(src):
    path = render_notebooks.target(src)
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "every code cell was executed"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "in order, top to bottom, once"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "a rendered copy is for its figures"
    assert path.stat().st_size < MAX_BYTES


def test_copies_stay_small_together():
    assert sum(render_notebooks.target(s).stat().st_size for s in SOURCES) < MAX_TOTAL
