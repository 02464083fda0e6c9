"""The committed notebooks/*.ipynb are exactly what their jupytext sources generate."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
jupytext = pytest.importorskip("jupytext")
import sync_notebooks  # noqa: E402

SOURCES = sync_notebooks.sources()


def test_there_are_notebooks():
    assert SOURCES, "notebooks/NN_*.py sources are missing"


@pytest.mark.parametrize("src", SOURCES, ids=[s.name for s in SOURCES])
def test_ipynb_in_sync(src):
    target = src.with_suffix(".ipynb")
    assert target.exists(), f"{target.name} missing: run `make notebooks`"
    assert target.read_text() == sync_notebooks.render(src), f"{target.name} is out of date: run `make notebooks`"


@pytest.mark.parametrize("src", SOURCES, ids=[s.name for s in SOURCES])
def test_notebook_has_goals_and_exercises(src):
    text = src.read_text()
    assert "Learning goals" in text, "each notebook states its learning goals at the top"
    assert "Exercises" in text, "each notebook ends with exercises"
    assert "assert" in text, "notebooks assert what they claim"
