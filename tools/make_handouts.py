"""Write the docs site's handout pages, docs/handouts/*.md, from the course config.

    python tools/make_handouts.py          # write them
    python tools/make_handouts.py --check  # exit 1 if a page is out of date

The pages come from ``twins_np/course/course.toml`` (assignments, points, hours, questions) and
the solution markers (the files to edit); a student copy gets its own, made by
``twins-np assignment build`` with the instructor's ``assignment.toml`` applied.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twins_np.course.build import write_handout_pages  # noqa: E402

FOLDER = ROOT / "docs" / "handouts"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report out-of-date pages")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = write_handout_pages(pathlib.Path(tmp), ROOT)
        stale = [p.name for p in fresh if not (FOLDER / p.name).exists() or (FOLDER / p.name).read_text() != p.read_text()]
        if args.check:
            if stale:
                print("out of date (run `python tools/make_handouts.py`):", ", ".join(stale))
                return 1
            return 0
        write_handout_pages(FOLDER, ROOT)
    print(f"{len(fresh)} handout pages written to {FOLDER.relative_to(ROOT)} ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
