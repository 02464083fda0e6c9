"""glibc malloc tuning, applied once when ``twins_np`` is imported.

NumPy chains allocate and free large temporaries (a (B, N, 3C) qkv array, a GELU input, the
attention probabilities). Above glibc's dynamic mmap threshold each such block is its own
``mmap``: every free unmaps it and the next allocation faults the same pages in again (a
twins_svt_small training step at batch 32, 224², spent about 2 s of system time on ~69,000
page faults that way; ``python -m benchmarks.malloc``). Raising the mmap and trim thresholds
keeps the freed memory in the process for the next temporary.

The tuning is skipped:

- where the C library is not glibc (macOS, Windows, musl);
- when the environment already tunes malloc (any ``MALLOC_*`` variable, or ``GLIBC_TUNABLES``
  naming ``glibc.malloc``): the user's settings win;
- when ``TWINS_NP_NO_MALLOC_TUNING=1`` (the opt-out), e.g. in a long-lived process that
  should hand memory back to the system after a large model is freed.

The cost: freed memory stays with the process (up to the largest working set it has had)
instead of going back to the operating system.
"""

from __future__ import annotations

import os

__all__ = ["OPT_OUT", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_malloc", "malloc_tuned"]

OPT_OUT = "TWINS_NP_NO_MALLOC_TUNING"
# blocks below 1 GiB come from the heap (reused) instead of a fresh mmap (unmapped on free)
MMAP_THRESHOLD = 1 << 30
# the heap top is returned to the OS only once 2 GiB of it are free
TRIM_THRESHOLD = 1 << 31
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters from <malloc.h>

_tuned = False


def _skip_reason() -> str | None:
    """Why the tuning is not applied here, or None."""
    if os.environ.get(OPT_OUT, "").strip() not in ("", "0"):
        return f"{OPT_OUT} is set"
    user = sorted(k for k in os.environ if k.startswith("MALLOC_"))
    if user:
        return f"{user[0]} is set"
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets glibc.malloc"
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # defined by glibc only
            return "the C library is not glibc"
    except (AttributeError, ValueError, OSError):  # no confstr (Windows) or no such name (macOS, musl)
        return "the C library is not glibc"
    return None


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds unless skipped (see the module docstring).

    Returns whether the thresholds are now set by twins-np. Calling it again does nothing more.
    """
    global _tuned
    if _tuned or _skip_reason() is not None:
        return _tuned
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        # mallopt returns 1 on success; a glibc that refuses the values leaves its defaults
        mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        _tuned = mmap_ok and trim_ok
    except (OSError, AttributeError):
        _tuned = False
    return _tuned


def malloc_tuned() -> bool:
    """Whether importing twins-np (or a call of :func:`tune_malloc`) set the thresholds."""
    return _tuned
