"""``twins-np info``: versions, backend and GPU."""

from __future__ import annotations

import argparse
import platform
from typing import Any

import numpy as np

from .. import __version__
from ..backend import cupy_version, gpu_description

# how to add CuPy to an install made from the clone (`make demo`, `pip install -e .`)
GPU_EXTRA_HINT = 'not installed (pip install -e ".[gpu]" in the twins-np folder adds it)'


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="print versions, the array backend and the GPU",
        description="Print the versions of twins-np, Python, NumPy, SciPy and CuPy, the GPU if one is visible, "
        "and the array backends that can be used.",
    )
    p.set_defaults(func=run)


def info_dict() -> dict[str, str]:
    d = {"twins-np": __version__, "python": platform.python_version(), "numpy": np.__version__}
    try:
        import scipy

        d["scipy"] = scipy.__version__
    except ImportError:
        d["scipy"] = "not installed"
    d["cupy"] = cupy_version() or GPU_EXTRA_HINT
    gpu = gpu_description()
    d["gpu"] = gpu or "none found (NumPy only)"
    d["backends"] = "numpy (cpu), cupy (gpu)" if gpu else "numpy (cpu)"
    return d


def run(args: argparse.Namespace) -> int:
    for k, v in info_dict().items():
        print(f"{k:<10} {v}")
    return 0
