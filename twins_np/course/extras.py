"""What each course command needs beyond twins-np's own dependencies, said in one line.

``build`` runs the project's tests (pytest) and regenerates the student notebooks
(jupytext, nbformat): the ``course`` extra. A student's ``status`` runs the copy's tests:
pytest, in the ``student`` extra. Grading and the autograder need nothing more than
NumPy and SciPy. A command checks before it starts, so a missing package is named at once,
not discovered as "the reference tests did not run" a minute later.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRAS", "MissingPackages", "missing", "require"]

# the extra -> the modules its commands import (setup.cfg's [options.extras_require] lists the packages)
EXTRAS: dict[str, tuple[str, ...]] = {
    "course": ("pytest", "jupytext", "nbformat"),
    "student": ("pytest",),
}


class MissingPackages(RuntimeError):
    """A course command needs packages that are not installed (the message names the extra)."""


def missing(modules: tuple[str, ...]) -> list[str]:
    """Those of ``modules`` that this Python cannot import."""
    out = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingPackages` when a module of ``extra`` is missing.

    Args:
        extra: a key of :data:`EXTRAS`.
        what: what needs them ("assignment build"), the start of the message.
    """
    gone = missing(EXTRAS[extra])
    if gone:
        raise MissingPackages(
            f"{what} needs {', '.join(gone)}, not installed: install the `{extra}` extra "
            f'(pip install -e ".[{extra}]" in the twins-np folder, or make {extra})'
        )
