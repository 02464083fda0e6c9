"""Run notebooks' jupytext sources on the CuPy stand-in, as the GPU check runs them on a GPU.

    python tools/standin_notebook.py notebooks/05_gsa_and_peg.py [more.py ...]

Each notebook runs in a fresh process with ``TWINS_NP_DEVICE=gpu``, ``tests/cupy_standin.py``
installed as ``cupy`` and the working directory a temporary folder (as ``tools/gpu_check.sh``
runs ``python notebook.py``). It proves device placement without a GPU: a host array mixed
into device work, or an implicit conversion, fails as on a GPU. Printed per notebook: the
result, the wall time on this CPU (the stand-in's arithmetic is NumPy's, plus its wrapping),
and the number of device arrays the notebook created, a count of the CuPy calls a GPU run
makes; with CuPy's per-call cost on the host (a few microseconds for a kernel launch) it
bounds the GPU run's time from below when the arrays are small.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUNNER = """
import runpy, sys
sys.path.insert(0, {tests!r})
import cupy_standin
assert cupy_standin.install(), "a real GPU is present: run the notebook itself"
try:
    runpy.run_path({path!r}, run_name="__main__")
finally:
    print(f"\\n[stand-in] device arrays created: {{cupy_standin.DEVICE_ARRAYS[0]:,}}", file=sys.stderr)
"""


def run(path: Path) -> tuple[int, float, str]:
    env = dict(os.environ, TWINS_NP_DEVICE="gpu", MPLBACKEND="Agg", TQDM_DISABLE="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")  # fmt: skip
    code = RUNNER.format(tests=str(ROOT / "tests"), path=str(path.resolve()))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, capture_output=True, text=True)
        dt = time.perf_counter() - t0
    count = next((line for line in res.stderr.splitlines()[::-1] if line.startswith("[stand-in]")), "")
    tail = (res.stdout + res.stderr).strip().splitlines()[-25:] if res.returncode else []
    return res.returncode, dt, "\n".join([count, *tail])


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    failed = 0
    for name in argv:
        rc, dt, info = run(Path(name))
        failed += rc != 0
        print(f"{Path(name).stem}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {dt:.0f} s | {info}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
