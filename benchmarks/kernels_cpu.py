"""Each CPU kernel against its NumPy twin, on the layer benchmark's shapes: equal? how much faster?

    python -m benchmarks.kernels_cpu            # float32, one thread, 9 repeats
    python -m benchmarks.kernels_cpu --threads 2

For every kernel (GELU, LayerNorm, softmax, the PEG's depthwise conv, each forward and
backward, and one AdamW update of 2.4 M parameters) it runs the twin (``cpu_kernels(False)``)
and the kernel on the same inputs, says whether the results are the same bits (or the largest
difference, relative to the largest value), and gives the median time of each. Times are the
process's CPU time when one thread runs (steadier than the wall clock on a shared machine),
and wall-clock time with more threads. tests/test_kernels_cpu.py holds the bounds that are
asserted; this is the one command that shows them next to the speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _timed(fn: Callable[[], Any], repeats: int, clock: Callable[[], float]) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def _arrays(res: Any) -> list[np.ndarray]:
    items = res if isinstance(res, (tuple, list)) else [res]
    out: list[np.ndarray] = []
    for a in items:
        if isinstance(a, np.ndarray):
            out.append(a)
        elif isinstance(a, tuple):
            out += _arrays(a)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = p.parse_args(argv)

    import twins_np.functional as F
    from twins_np import backend
    from twins_np.nn.module import Parameter
    from twins_np.optim import AdamW

    if not backend.cpu_kernels_available():
        print("numba is not installed: there are no CPU kernels to compare (pip install numba)")
        return 1
    backend.cpu_kernel_threads(args.threads)
    dtype = np.dtype(args.dtype).type
    rng = np.random.default_rng(0)
    n = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    B, side, C = 8, 56, 64  # stage 1 of twins_svt_small at batch 8, as in the layer benchmark
    x, d = n(B, side * side, C), n(B, side * side, C)
    h, dh = n(B, side * side, 4 * C), n(B, side * side, 4 * C)
    s, ds = n(B * 64, 2, 49, 49), n(B * 64, 2, 49, 49)
    g, b, w = 1.0 + n(C), n(C), n(C, 1, 3, 3)
    param, grad = n(2_359_296), n(2_359_296)  # the largest weight of twins_svt_small (768 x 3072)

    def adamw() -> Any:
        prm = Parameter(param.copy())
        prm.grad = grad
        opt = AdamW([prm], lr=1e-3, weight_decay=0.05)
        opt.step()
        return prm.data

    cases: dict[str, Callable[[], Any]] = {}

    def case(name: str, fwd: Callable[[], Any], bwd: Callable[[Any], Any]) -> None:
        cases[name] = fwd
        cases[name + " backward"] = lambda: bwd(fwd()[1])

    case("GELU", lambda: F.gelu_forward(h), lambda cache: F.gelu_backward(dh, cache))
    case("LayerNorm", lambda: F.layernorm_forward(x, g, b, 1e-6), lambda cache: F.layernorm_backward(d, cache))
    case("softmax", lambda: F.softmax_forward(s), lambda cache: F.softmax_backward(ds, cache))
    case("PEG", lambda: F.peg_forward(x, (side, side), w, b), lambda cache: F.peg_backward(d, cache))
    cases["AdamW update"] = adamw

    clock = time.thread_time if args.threads == 1 else time.perf_counter
    print(f"{args.dtype}, {args.threads} thread(s), medians of {args.repeats}"
          f" ({'CPU' if args.threads == 1 else 'wall-clock'} time); backward rows include the forward\n")  # fmt: skip
    print("| kernel | NumPy twin ms | CPU kernel ms | speed-up | results |\n|---|---|---|---|---|")
    for name, fn in cases.items():
        results, times = [], []
        for on in (False, True):
            backend.cpu_kernels(on)
            results.append(_arrays(fn()))
            times.append(_timed(fn, args.repeats, clock))
        same = all(np.array_equal(a, k, equal_nan=True) for a, k in zip(*results))
        if same:
            verdict = "the same bits"
        else:
            rel = max(float(np.abs(k.astype(np.float64) - a).max() / max(np.abs(a).max(), 1e-300)) for a, k in zip(*results))
            verdict = f"max difference {rel:.1e} of the largest value"
        print(f"| {name} | {1e3 * times[0]:.2f} | {1e3 * times[1]:.2f} | {times[0] / times[1]:.1f}x | {verdict} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
