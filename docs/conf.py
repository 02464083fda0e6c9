"""Sphinx configuration for the twins-np documentation (``make docs``)."""

from __future__ import annotations

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import twins_np  # noqa: E402

project = "twins-np"
author = "the twins-np developers"
copyright = "2026, the twins-np developers"
release = version = twins_np.__version__

extensions = [
    "myst_nb",  # Markdown pages and notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # Google-style docstrings
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]

# A student copy (`twins-np assignment build` writes its assignment.json): no [source] pages,
# and pages are not executed, since the stubs raise NotImplementedError until the tasks are done.
STUDENT_COPY = (ROOT / "assignment.json").exists()
if STUDENT_COPY:
    extensions.remove("sphinx.ext.viewcode")

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
math_numfig = True

# Notebooks: `make docs` copies into docs/notebooks/ the executed copies made by `make pytest`
# (nbmake --overwrite) or committed in notebooks/rendered/; any notebook that arrives without
# outputs is executed here.
nb_execution_mode = "auto"
# `make docs` names the notebooks it copied executed in TWINS_NP_NOTEBOOKS_EXECUTED (file names
# separated by spaces; "1" means all): they are shown as they are (auto mode would run them
# again, since cells that print nothing count as unexecuted). Pages with code cells (e.g.
# derivations/gradcheck) still run.
_executed = os.environ.get("TWINS_NP_NOTEBOOKS_EXECUTED", "").split()
if _executed == ["1"]:
    nb_execution_excludepatterns = ["notebooks/*"]
elif _executed:
    nb_execution_excludepatterns = [f"notebooks/{name}" for name in _executed]
if STUDENT_COPY:
    nb_execution_mode = "off"
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_merge_streams = True
# Markdown that code cells display (the tables computed at build time) is parsed as MyST,
# so pipe tables and $math$ in it render like the page around it.
nb_render_markdown_format = "myst"

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_typehints = "description"
autodoc_mock_imports = ["cupy", "cupyx"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, so dataclass members are not documented twice
autosummary_generate = False

exclude_patterns = ["_build", "conf.py", "**.ipynb_checkpoints", "derivations/README.md"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

html_theme = "sphinx_book_theme"
html_title = "twins-np"
html_static_path = ["_static"] if (pathlib.Path(__file__).parent / "_static").is_dir() else []
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,
    # one search box, the sidebar's: the pydata header would repeat it above the page
    "navbar_persistent": [],
}
html_css_files = ["custom.css"]

# MathJax 3 is served from the built site itself (fetched from npm by `make docs` into
# docs/_static/mathjax), so formulas render without reaching the internet at view time.
_mathjax = pathlib.Path(__file__).parent / "_static" / "mathjax" / "tex-svg.js"
if _mathjax.exists() or os.environ.get("TWINS_NP_DOCS_OFFLINE"):
    mathjax_path = "mathjax/tex-svg.js"

# short names such as `x` in docstrings match several NamedTuple fields; they are prose, not links
suppress_warnings = ["mystnb.unknown_mime_type", "ref.python"] + (["myst-nb.lexer"] if STUDENT_COPY else [])
