"""``import twins_np`` tunes glibc malloc (twins_np/_malloc.py) unless opted out.

Each case runs in a fresh interpreter, since the thresholds are process-wide and set once. The
effect is checked, not only the flag: after the tuning a 64 MiB ``malloc`` comes from the heap
(the program break moves up by most of it; free space at the heap top serves the rest); with
glibc's defaults it is its own ``mmap`` (the break does not move).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

try:
    _GLIBC = bool(os.confstr("CS_GNU_LIBC_VERSION"))
except (AttributeError, ValueError, OSError):
    _GLIBC = False

pytestmark = pytest.mark.skipif(not _GLIBC, reason="the tuning applies to glibc only")

_PROBE = """
import ctypes, json
import twins_np
from twins_np._malloc import malloc_tuned

libc = ctypes.CDLL("libc.so.6")
libc.sbrk.restype = ctypes.c_void_p
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
before = libc.sbrk(0)
p = libc.malloc(64 << 20)
grew = libc.sbrk(0) - before
libc.free(p)
print(json.dumps({"tuned": malloc_tuned(), "heap_grew_mib": grew / 2**20}))
"""


def _probe(**env: str) -> dict:
    ours = ("GLIBC_TUNABLES", "TWINS_NP_NO_MALLOC_TUNING")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ours}
    clean["PYTHONPATH"] = str(ROOT) + os.pathsep + clean.get("PYTHONPATH", "")
    cmd = [sys.executable, "-c", _PROBE]
    out = subprocess.run(cmd, env={**clean, **env}, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_applies_the_tuning():
    r = _probe()
    assert r["tuned"] is True
    assert r["heap_grew_mib"] > 32, f"a 64 MiB block was not taken from the heap: {r}"


_SKIPPED = [{"TWINS_NP_NO_MALLOC_TUNING": "1"}, {"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}]


@pytest.mark.parametrize("env", _SKIPPED)
def test_opt_out_and_user_settings_leave_glibc_defaults(env):
    r = _probe(**env)
    assert r["tuned"] is False
    assert r["heap_grew_mib"] < 32, f"the tuning was applied despite {env}: {r}"


def test_opt_out_zero_means_tuned():
    assert _probe(TWINS_NP_NO_MALLOC_TUNING="0")["tuned"] is True
