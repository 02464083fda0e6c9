"""CPU seconds of each notebook with the fused CPU kernels on and off (``python -m benchmarks.notebooks``).

Each notebook's jupytext source (``notebooks/NN_*.py``) runs as a script in a process of its
own, with one BLAS thread, once with ``TWINS_NP_CPU_KERNELS=1`` and once with ``=0``,
interleaved; the figure is the child's CPU time (user + system), which a busy machine inflates
far less than the wall clock. The kernels are compiled before the first timed run (the disk
cache), so a notebook's time is what a student's second session costs.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def warm() -> None:
    """Compile every CPU kernel for float32 and float64 into numba's disk cache (untimed)."""
    code = "import numpy as np; from benchmarks.worker import load_cpu_kernels; load_cpu_kernels((np.float32, np.float64))"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "TWINS_NP_CPU_KERNELS": "1"})


def run(path: pathlib.Path, kernels: bool) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one notebook run as a script; raises if it fails."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TQDM_DISABLE": "1", "MPLBACKEND": "Agg", "TWINS_NP_CPU_KERNELS": "1" if kernels else "0"}  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # the notebooks write their outputs beside them
        proc = subprocess.run([sys.executable, str(path)], cwd=tmp, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{path.name} failed (kernels {'on' if kernels else 'off'}):\n{proc.stderr[-3000:]}")
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="numbers, e.g. 01 04 (default: all)")
    args = parser.parse_args(argv)
    paths = sorted(ROOT.glob("notebooks/[0-9][0-9]_*.py"))
    if args.notebooks:
        paths = [p for p in paths if p.name[:2] in args.notebooks]
    print("| notebook | CPU s: kernels | NumPy twins | twins / kernels | wall s: kernels | NumPy twins |")
    print("|---|---|---|---|---|---|")
    warm()
    total = [0.0, 0.0]
    for path in paths:
        (cpu_on, wall_on), (cpu_off, wall_off) = run(path, True), run(path, False)
        total[0] += cpu_on
        total[1] += cpu_off
        cells = [path.stem, f"{cpu_on:.1f}", f"{cpu_off:.1f}", f"{cpu_off / cpu_on:.2f}", f"{wall_on:.1f}", f"{wall_off:.1f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
    print(f"| all | {total[0]:.1f} | {total[1]:.1f} | {total[1] / total[0]:.2f} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
