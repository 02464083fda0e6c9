"""What the malloc tuning at ``import twins_np`` saves: page faults and system time per step.

    python -m benchmarks.malloc                  # twins_svt_small, batch 8 and 32, 224², 3 steps
    python -m benchmarks.malloc --batch 32 --steps 5

Each setting runs in a fresh process, once as a user imports twins-np (tuned) and once with
``TWINS_NP_NO_MALLOC_TUNING=1`` (glibc's defaults). Minor page faults and system time per
training step are counted by the kernel (``getrusage``), so unlike wall time they do not
depend on what else the machine runs; the figures are medians over the steps after one
warm-up step, with one BLAS thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_STEP = """
import json, resource, sys, time
import numpy as np
import twins_np
from twins_np._malloc import malloc_tuned

batch, steps = int(sys.argv[1]), int(sys.argv[2])
model = twins_np.create_model("twins_svt_small")
rng = np.random.default_rng(0)
x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
y = rng.integers(0, 1000, batch)
model.train()


def step():
    model.zero_grad()
    model.loss(x, y)
    model.backward_loss()


step()  # warm-up: the first step allocates everything once
rows = []
for _ in range(steps):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    step()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    rows.append(dict(wall_s=t1 - t0, user_s=r1.ru_utime - r0.ru_utime, sys_s=r1.ru_stime - r0.ru_stime,
                     minor_faults=r1.ru_minflt - r0.ru_minflt))
print(json.dumps(dict(tuned=malloc_tuned(), **{k: float(np.median([r[k] for r in rows])) for k in rows[0]})))
"""


def measure(batch: int, steps: int, tuned: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TWINS_NP_NO_MALLOC_TUNING"}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if not tuned:
        env["TWINS_NP_NO_MALLOC_TUNING"] = "1"
    cmd = [sys.executable, "-c", _STEP, str(batch), str(steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    print("| batch | malloc | minor faults / step | system s / step | user s / step | wall s / step |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch:
        for tuned in (True, False):
            r = measure(batch, args.steps, tuned)
            label = "tuned (import twins_np)" if r["tuned"] else "glibc defaults"
            print(f"| {batch} | {label} | {r['minor_faults']:,.0f} | {r['sys_s']:.3f} | {r['user_s']:.2f} | {r['wall_s']:.2f} |")


if __name__ == "__main__":
    main()
