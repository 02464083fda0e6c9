"""The documentation site: every page a toctree lists exists, and the built site works offline.

The build itself (``make docs``, Sphinx with warnings as errors) checks cross-references and
runs the pages' code cells. These tests check what the build cannot: toctree entries
against the files on disk before building, the gradient-check case names the derivation
pages quote, and, when ``docs/_build/html`` exists, that the built pages load MathJax from
the site itself and nothing from a CDN, so that formulas render without a network.
"""

from __future__ import annotations

import fnmatch
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HTML = DOCS / "_build" / "html"
MATHJAX = "_static/mathjax/tex-svg.js"
# where MathJax (or anything else) would come from if a page reached for the network
CDN_MARKERS = ("cdn.jsdelivr", "cdnjs.cloudflare", "unpkg.com", "mathjax@", "polyfill.io")
_TOCTREE = re.compile(r"^```\{toctree\}[^\n]*\n(.*?)^```", re.S | re.M)


def _sources() -> list[pathlib.Path]:
    """The Markdown pages of the site (the build output and copied notebooks excluded)."""
    return [p for p in sorted(DOCS.rglob("*.md")) if "_build" not in p.parts and p.name != "README.md"]


def _toctrees(page: pathlib.Path) -> list[tuple[list[str], bool]]:
    """(entries, glob) for every toctree directive of a page; options and blank lines dropped."""
    out = []
    for body in _TOCTREE.findall(page.read_text()):
        lines = [line.strip() for line in body.splitlines()]
        entries = [line for line in lines if line and not line.startswith(":")]
        # "Title <path>" entries point at path
        entries = [m[1] if (m := re.search(r"<([^>]+)>$", e)) else e for e in entries]
        out.append((entries, ":glob:" in lines))
    return out


def test_the_toctree_parser_sees_the_index():
    entries = [e for tree, _ in _toctrees(DOCS / "index.md") for e in tree]
    assert "derivations/index" in entries and "getting_started" in entries


def test_every_toctree_entry_exists():
    """An entry names a page by its path without suffix, relative to the page (or to docs/ with a leading /)."""
    missing = []
    for page in _sources():
        for entries, glob in _toctrees(page):
            for entry in entries:
                if entry.startswith(("http://", "https://")) or entry == "self":
                    continue
                base = DOCS if entry.startswith("/") else page.parent
                if glob and any(ch in entry for ch in "*?["):
                    # a pattern may name a folder ("notebooks/[0-9]*"): match its last part there
                    folder, _, pattern = entry.lstrip("/").rpartition("/")
                    base = base / folder
                    # the notebook pages are copied from notebooks/ by `make docs`; match either place
                    names = [p.stem for p in base.glob("*") if p.suffix in (".md", ".ipynb")]
                    if base == DOCS / "notebooks":
                        names += [p.stem for p in (ROOT / "notebooks").glob("*.ipynb")]
                    if not fnmatch.filter(names, pattern):
                        missing.append(f"{page.relative_to(DOCS)}: glob {entry!r} matches no page")
                    continue
                target = base / entry.lstrip("/")
                if not any(target.with_name(target.name + suffix).is_file() for suffix in (".md", ".ipynb")):
                    missing.append(f"{page.relative_to(DOCS)}: {entry}")
    assert not missing, "toctree entries without a page:\n" + "\n".join(missing)


def test_every_page_is_in_a_toctree():
    """A page outside every toctree is unreachable from the navigation (Sphinx would also warn)."""
    listed = {DOCS / "index"}
    for page in _sources():
        for entries, glob in _toctrees(page):
            for entry in entries:
                if not (glob and any(ch in entry for ch in "*?[")):
                    listed.add((DOCS if entry.startswith("/") else page.parent) / entry.lstrip("/"))
    orphans = [str(p.relative_to(DOCS)) for p in _sources() if p.with_suffix("") not in listed and p.parent != DOCS / "notebooks"]
    assert not orphans, f"pages in no toctree: {orphans}"


def test_gradcheck_cases_quoted_by_the_derivations_exist():
    """`case `NAME`` on a derivation page must name a case of twins_np.gradcheck_suite (renames break it)."""
    from twins_np.gradcheck_suite import cases

    names = {case.name for case in cases()}
    quoted = set()
    for page in sorted((DOCS / "derivations").glob("*.md")):
        text = re.sub(r"\s+", " ", page.read_text())
        quoted |= {(page.name, name) for name in re.findall(r"[Cc]ases? `([^`]+)`", text)}
        quoted |= {(page.name, name) for name in re.findall(r"[Cc]ases? `[^`]+` and `([^`]+)`", text)}
    assert quoted, "the pattern found no quoted case"
    unknown = sorted(f"{page}: {name}" for page, name in quoted if name not in names)
    assert not unknown, f"cases quoted but not in twins_np/gradcheck_suite.py: {unknown}"


def test_tests_and_test_files_quoted_by_the_docs_exist():
    """The "Checked by" sections name test files and test functions; renaming one must update the page."""
    # `test_loss`, `test_acc`, `test_miou`, ... are metric names, not tests
    from twins_np.training import METRIC_COLUMNS, SEGMENT_METRIC_COLUMNS

    defined = {name for p in (ROOT / "tests").rglob("*.py") for name in re.findall(r"def (test_\w+)", p.read_text())}
    missing = []
    for page in _sources():
        text = page.read_text()
        files = set(re.findall(r"`(tests/[\w/]+\.py)", text))
        missing += [f"{page.relative_to(DOCS)}: {f}" for f in sorted(files) if not (ROOT / f).is_file()]
        names = set(re.findall(r"`(test_\w+)`", text)) - set(METRIC_COLUMNS) - set(SEGMENT_METRIC_COLUMNS)
        missing += [f"{page.relative_to(DOCS)}: {n}" for n in sorted(names - defined)]
    assert not missing, "quoted but not found under tests/:\n" + "\n".join(missing)


# --- the built site ---------------------------------------------------------------------------


def _built_pages() -> list[pathlib.Path]:
    if not (HTML / "index.html").is_file():
        pytest.skip("docs not built (run `make docs`)")
    return sorted(p for p in HTML.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts)


def test_built_pages_load_mathjax_from_the_site():
    pages = _built_pages()
    assert (HTML / MATHJAX).is_file(), f"{MATHJAX} is missing from the built site"
    with_math = [p for p in pages if 'class="math' in p.read_text()]
    assert with_math, "no built page contains math: the check would be empty"
    wrong = []
    for page in with_math:
        prefix = "../" * (len(page.relative_to(HTML).parts) - 1)
        scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', page.read_text(), re.I)
        if not scripts or any(s.split("?")[0] != prefix + MATHJAX for s in scripts):
            wrong.append(f"{page.relative_to(HTML)}: {scripts}")
    assert not wrong, "pages with math that do not load the local MathJax:\n" + "\n".join(wrong)


def test_built_pages_use_no_cdn():
    found = []
    for page in _built_pages():
        text = page.read_text()
        found += [f"{page.relative_to(HTML)}: {m}" for m in CDN_MARKERS if m in text]
        found += [f"{page.relative_to(HTML)}: {u}" for u in re.findall(r'src="(https?://[^"]+)"', text)]
    assert not found, "built pages that reach for the network:\n" + "\n".join(found)
