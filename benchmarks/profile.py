"""Where a twins-np forward pass or training step spends its time, by kind of layer.

    python -m benchmarks.profile --model twins_pcpvt_small --batch 8 --size 224 --task forward
    python -m benchmarks.profile --model twins_svt_teach32 --batch 64 --size 32 --kernels off

Runs a few steps under cProfile (after one untimed warm-up step, which also compiles or loads
the CPU kernels) and sums each function's own time into the kind of layer its file belongs to:
GELU, LayerNorm, softmax, the PEG, the matrix products of the linear layers and the attention
core, the patch-embedding and sub-sampling convolutions, reshapes (windows and heads), and the
rest. Time spent below a twins-np function in NumPy, SciPy or a compiled kernel (which cProfile
sees as its caller's own time, or as a built-in called from it) goes to that function's kind.
Prints a Markdown table of shares; the threads follow the environment (``OMP_NUM_THREADS`` and
``OPENBLAS_NUM_THREADS``, and ``--threads`` for the CPU kernels).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
from collections import defaultdict
from typing import Any

import numpy as np

# file name (in twins_np) -> kind of layer
KINDS = {
    "activation.py": "GELU",
    "normal_cdf.py": "GELU",
    "gelu_cpu.py": "GELU",
    "layernorm.py": "LayerNorm",
    "layernorm_cpu.py": "LayerNorm",
    "norm.py": "LayerNorm",
    "softmax.py": "softmax",
    "softmax_cpu.py": "softmax",
    "attention.py": "matrix products (attention core)",
    "linear.py": "matrix products (linear layers)",
    "mlp.py": "matrix products (linear layers)",
    "depthwise_conv.py": "PEG",
    "dwconv3x3_cpu.py": "PEG",
    "peg.py": "PEG",
    "patch_conv.py": "patch embedding and sub-sampling convs",
    "subsample.py": "patch embedding and sub-sampling convs",
    "conv2d.py": "patch embedding and sub-sampling convs",
    "windows.py": "reshapes (windows, heads, padding)",
    "lsa.py": "reshapes (windows, heads, padding)",
    "gsa.py": "reshapes (windows, heads, padding)",
    "blocks.py": "residual adds (the blocks)",
    "loss.py": "loss",
    "optim.py": "optimizer",
    "adamw_cpu.py": "optimizer",
}
PASS_THROUGH = {"cpu_common.py", "backend.py", "_checks.py"}  # their time belongs to whoever called them


def _kind(func: tuple[str, int, str], stats: dict[Any, Any], seen: frozenset[Any] = frozenset()) -> dict[str, float]:
    """Shares of ``func``'s own time per kind: its file's kind, or its callers' (weighted by their time) for helpers."""
    path, _, _ = func
    base = os.path.basename(path)
    if "twins_np" in path and base not in PASS_THROUGH:
        return {KINDS.get(base, "other twins-np code"): 1.0}
    callers = stats[func][4]
    total = sum(c[2] for c in callers.values())
    if not callers or total <= 0 or func in seen:
        return {"other": 1.0}
    shares: dict[str, float] = defaultdict(float)
    for caller, (_, _, tt, _) in callers.items():
        for kind, share in _kind(caller, stats, seen | {func}).items():
            shares[kind] += share * tt / total
    return shares


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="twins_pcpvt_small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--task", choices=["forward", "train"], default="forward")
    p.add_argument("--kernels", choices=["on", "off"], help="the fused CPU kernels (default: the library's setting)")
    p.add_argument("--threads", type=int, help="threads of the CPU kernels (default: the library's)")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)

    import twins_np
    from twins_np import backend

    if args.kernels is not None:
        backend.cpu_kernels(args.kernels == "on")
    if args.threads is not None:
        backend.cpu_kernel_threads(args.threads)
    model = twins_np.create_model(args.model, num_classes=10 if "teach" in args.model else 1000, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    y = rng.integers(0, model.num_classes, args.batch)

    def step() -> None:
        if args.task == "forward":
            model.eval()
            with twins_np.no_grad():
                model.forward(x)
        else:
            model.train()
            model.zero_grad()
            model.loss(x, y)
            model.backward_loss()

    step()  # warm-up: compiles (or loads) the kernels, fills the allocator
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        step()
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    by_kind: dict[str, float] = defaultdict(float)
    for func, (_, _, tt, _, _) in stats.items():
        for kind, share in _kind(func, stats).items():
            by_kind[kind] += tt * share
    total = sum(by_kind.values())
    path = "CPU kernels" if backend.cpu_kernels() else "NumPy twins"
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}, {args.task}, {path}: {total / args.steps:.3f} s per step")
    print("\n| kind | share |\n|---|---|")
    for kind, t in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {100 * t / total:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
