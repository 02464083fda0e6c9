"""How long the grader takes for one student: a full submission of every task.

    python -m benchmarks.grading                 # 3 rounds of: the reference solution, the untouched copy
    python -m benchmarks.grading --rounds 5 --no-namespaces

Builds the assignment of every task once (no student tests, no self-check: only the
manifest), then grades, in fresh ``twins-np assignment grade`` processes as an instructor
runs them, a submission holding the reference solution of every task (full marks) and the
untouched copy (0), alternately. Prints the wall time of each run, the CPU time of the
process and its children (``getrusage``), the machine's load average, and the sandbox used.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if r.returncode not in (0, 1):
        raise SystemExit(f"grading failed: {r.stderr.strip()}")
    return wall, cpu, r.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-namespaces", action="store_true", help="grade as where namespaces are not allowed")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from twins_np.course.build import build

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    if args.no_namespaces:
        env["TWINS_NP_NAMESPACES"] = "0"
    with tempfile.TemporaryDirectory(prefix="twins-np-bench-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        build(tmp / "student", root=ROOT, manifest=tmp / "manifest.json", freeze=False, selfcheck=False)
        manifest = json.loads((tmp / "manifest.json").read_text())
        for task in manifest["tasks"].values():
            for rel in task["files"]:
                (tmp / "reference" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / rel, tmp / "reference" / rel)
        checks = sum(len(t["checks"]) for t in manifest["tasks"].values())
        print(f"{len(manifest['tasks'])} tasks, {checks} checks; {os.cpu_count()} cores")
        rows: dict[str, list[tuple[float, float]]] = {"reference": [], "untouched": []}
        sandbox = ""
        for _ in range(args.rounds):
            for name, sub in (("reference", tmp / "reference"), ("untouched", tmp / "student")):
                load = os.getloadavg()[0]
                wall, cpu, out = _run([sys.executable, "-m", "twins_np", "assignment", "grade", str(sub),
                                       "--manifest", str(tmp / "manifest.json")], env)  # fmt: skip
                total = next(line for line in out.splitlines() if line.startswith("total"))
                sandbox = next(line for line in out.splitlines() if line.startswith("sandbox:"))
                print(f"{name:10s} {wall:6.1f} s wall {cpu:6.1f} s CPU  load {load:4.1f}  {' '.join(total.split()[1:4])}")
                rows[name].append((wall, cpu))
        for name, r in rows.items():
            print(f"{name:10s} median {statistics.median(w for w, _ in r):.1f} s wall, "
                  f"{statistics.median(c for _, c in r):.1f} s CPU over {len(r)} runs")  # fmt: skip
        print(sandbox)


if __name__ == "__main__":
    main()
