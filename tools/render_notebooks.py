"""Executed copies of the short notebooks, readable with their figures on the repository page.

    python tools/render_notebooks.py              # execute notebooks 01-08 into notebooks/rendered/
    python tools/render_notebooks.py 06 07        # only these
    python tools/render_notebooks.py --check      # exit 1 if a copy's cells differ from its source

The committed ``notebooks/NN_*.ipynb`` carry no outputs (they are generated from the jupytext
sources by ``tools/sync_notebooks.py``). This script executes the generated notebook, top to
bottom, in ``build/render/`` (one folder below the repository, as nbmake runs them in
``build/notebooks/``), with one BLAS thread, and writes the executed copy to
``notebooks/rendered/``. Figures are drawn at 72 dpi and their PNGs re-encoded losslessly
without the alpha channel, so that the eight copies stay under a megabyte in all.

Notebooks 09 and 10 train for minutes: they have no rendered copy (the documentation site
shows them executed). A copy goes stale when its source changes; ``--check`` (and
``tests/test_rendered_notebooks.py``) compare the cells of each copy with the notebook its
source generates, so rerun this script for the notebooks you edited.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import pathlib
import shutil
import sys
import time

import nbformat

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sync_notebooks  # noqa: E402

ROOT = sync_notebooks.ROOT
RENDERED_DIR = sync_notebooks.NOTEBOOKS / "rendered"
RUN_DIR = ROOT / "build" / "render"
# the notebooks that run in seconds; 09 and 10 train for minutes
RENDERED = ("01", "02", "03", "04", "05", "06", "07", "08")
# the settings of the executing kernel: one BLAS thread (several notebooks running on a shared
# machine would otherwise fight for the cores), no progress bars, the CPU
KERNEL_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
DPI = 72


def rendered_sources() -> list[pathlib.Path]:
    """The jupytext sources that have a rendered copy."""
    return [src for src in sync_notebooks.sources() if src.name[:2] in RENDERED]


def target(src: pathlib.Path) -> pathlib.Path:
    return RENDERED_DIR / src.with_suffix(".ipynb").name


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def stale(src: pathlib.Path) -> str | None:
    """Why the rendered copy of ``src`` is missing or out of date, or None when it is current."""
    path = target(src)
    if not path.is_file():
        return f"{path.relative_to(ROOT)} is missing"
    copy = nbformat.read(path, as_version=4)
    if _cells(copy) != _cells(nbformat.reads(sync_notebooks.render(src), as_version=4)):
        return f"{path.relative_to(ROOT)} differs from what {src.relative_to(ROOT)} generates"
    return None


def _smaller_png(data: str) -> str:
    """The same image as a losslessly re-encoded PNG (RGB when fully opaque), base64, if that is smaller."""
    from PIL import Image

    raw = base64.b64decode(data)
    image = Image.open(io.BytesIO(raw))
    if image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    smaller = buffer.getvalue()
    return base64.b64encode(smaller).decode("ascii") if len(smaller) < len(raw) else data


def render(src: pathlib.Path) -> tuple[pathlib.Path, float]:
    """Execute the notebook ``src`` generates and write its executed copy; returns (path, seconds)."""
    from nbclient import NotebookClient

    generated = nbformat.reads(sync_notebooks.render(src), as_version=4)
    nb = nbformat.reads(sync_notebooks.render(src), as_version=4)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", record_timing=False, resources={"metadata": {"path": str(RUN_DIR)}}
    )
    client.execute()
    seconds = time.perf_counter() - start
    nb.metadata = generated.metadata  # the kernel's versions would change the file on every machine
    for cell in nb.cells:
        cell.metadata = {}
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                output.data["image/png"] = _smaller_png(output.data["image/png"])
    nbformat.validate(nb)
    path = target(src)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(nb) + "\n")
    return path, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("numbers", nargs="*", metavar="NN", help=f"notebooks to render (default: {' '.join(RENDERED)})")
    parser.add_argument("--check", action="store_true", help="only report missing or out-of-date copies")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.numbers) - set(RENDERED))
    if unknown:
        parser.error(f"no rendered copy is kept for {', '.join(unknown)}; choose from {' '.join(RENDERED)}")
    sources = [src for src in rendered_sources() if not args.numbers or src.name[:2] in args.numbers]
    if args.check:
        problems = [p for p in map(stale, sources) if p]
        for problem in problems:
            print(f"{problem} (run `python tools/render_notebooks.py`)")
        return 1 if problems else 0

    os.environ.update(KERNEL_ENV)  # the kernel inherits this process's environment
    os.environ.pop("TWINS_NP_DEVICE", None)
    rc_dir = RUN_DIR / "matplotlibrc"
    rc_dir.mkdir(parents=True, exist_ok=True)
    (rc_dir / "matplotlibrc").write_text(f"figure.dpi: {DPI}\n")
    os.environ["MATPLOTLIBRC"] = str(rc_dir)
    try:
        for src in sources:
            path, seconds = render(src)
            print(f"{path.relative_to(ROOT)}: executed in {seconds:.1f} s, {path.stat().st_size // 1024} KB")
    finally:
        shutil.rmtree(RUN_DIR, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
