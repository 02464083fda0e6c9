"""Generate notebooks/*.ipynb from the jupytext sources notebooks/*.py, without outputs.

    python tools/sync_notebooks.py          # write the .ipynb files
    python tools/sync_notebooks.py --check  # exit 1 if any .ipynb is out of date

The conversion is deterministic, so a committed .ipynb can be compared byte for byte.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jupytext
import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def render(source: pathlib.Path) -> str:
    """The .ipynb text for one jupytext percent source: no outputs, fixed metadata."""
    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:03d}"  # nbformat would draw random ids: fixed ones keep the output deterministic
        cell.metadata = {}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def sources() -> list[pathlib.Path]:
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report out-of-date notebooks")
    args = parser.parse_args(argv)
    stale = []
    for src in sources():
        target = src.with_suffix(".ipynb")
        text = render(src)
        if target.exists() and target.read_text() == text:
            continue
        stale.append(target.name)
        if not args.check:
            target.write_text(text)
    if args.check and stale:
        print("out of date (run `make notebooks`):", ", ".join(stale))
        return 1
    if not args.check:
        print(f"{len(sources())} notebooks generated ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
