"""One benchmark measurement in a fresh process; prints one JSON line.

    python -m benchmarks.worker --lib twins-np --task train --model twins_svt_small --batch 8 --size 224

``--lib``: ``twins-np`` or ``torch`` (timm's Twins, or torch's own ops for ``--task op``).
``--task``: ``forward``, ``train`` (forward + cross-entropy + backward), ``segtrain`` (a
Semantic FPN segmenter, ``--model <twins model>_fpn``: forward + per-pixel cross-entropy with
ignored pixels + backward; the torch side is :mod:`benchmarks.torch_fpn`) or ``op`` (one layer,
``--op lsa|gsa|peg|layernorm|gelu|softmax``, forward only or forward + backward as
``--passes`` says; ``--op svt_block``, an LSA block followed by a GSA block as in SVT, is
twins-np only, for the scaling table).

Each library runs in its own process because NumPy's and torch's thread pools fight for
the cores when both are loaded. Times are medians over ``--repeats`` runs after
``--warmup`` runs, by the wall clock (``median_s``) and in CPU time (``median_cpu_s``).
Peak memory is the highest resident set size sampled during the runs minus the resident
size just before them (model, inputs and library already loaded),
measured the same way for both libraries: on the GPU it is host memory only.

On the GPU (``--device gpu``) each library synchronises before reading the clock, TF32 is
off on both sides (torch's flags here; CuPy only uses TF32 when ``CUPY_TF32=1``, which
run_all clears), and three more figures are reported after the timed runs: the host time
of one step (until the call returns, before synchronising: when it is close to the step
time the step is bound by launching kernels, not by the GPU), the kernels launched per
step (counted with torch's profiler, which sees every CUDA kernel of the process, CuPy's
included; null where it cannot count), and the GPU memory held (CuPy's memory pool, or
torch's peak allocation). ``--fused`` (twins-np) switches on the fused CUDA kernels.

On the CPU, ``--kernels on|off`` (twins-np) runs with the fused CPU kernels (numba) or the NumPy
twins; by default the library's own setting (on where numba is installed). ``--threads N``
sets both libraries' threads: torch's, and twins-np's BLAS (through the environment run_all
sets) and CPU kernels, as ``twins-np train --threads N`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


class _PeakRSS:
    """Samples the resident set size every millisecond in a thread; ``peak`` in MiB.

    NumPy and torch release the GIL inside their kernels, so the thread keeps sampling
    while the arrays of a step are alive.
    """

    def __init__(self) -> None:
        self.peak = _rss_now_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_now_mib())
            time.sleep(0.001)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_now_mib())


def _time(fn: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None]) -> tuple[list[float], list[float], float]:
    """Wall-clock and CPU times of each timed call of ``fn``, and the peak RSS growth over the RSS before the first call.

    The CPU time is the process's (every thread's, the memory sampler's included): on a machine
    shared with other work it counts the work done, where the wall clock also counts the waits
    for a core.
    """
    sync()
    base = _rss_now_mib()
    with _PeakRSS() as mem:
        for _ in range(warmup):
            fn()
        sync()
        times, cpu_times = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    return times, cpu_times, max(0.0, mem.peak - base)


def _seg_labels(rng: np.random.Generator, batch: int, size: int) -> np.ndarray:
    """(B, H, W) int64 labels in [0, 150) with about 10 % of the pixels ignored (255), as ADE20K."""
    y = rng.integers(0, 150, size=(batch, size, size))
    y[rng.random((batch, size, size)) < 0.1] = 255
    return y


# --- twins-np ---------------------------------------------------------------------------


def load_cpu_kernels(dtypes: tuple[Any, ...] = (np.float32,)) -> None:
    """Call every CPU kernel once on tiny arrays of each dtype: numba and the compiled kernels are loaded
    (compiled first, into numba's disk cache, where the cache does not have them yet).

    They load lazily, on a kernel's first call, and stay resident for the life of the process
    (about 120 MiB, measured): library code, as torch's own libraries, which ``import torch``
    loads. Loading them here, before the resident size is read, keeps them out of a step's
    peak memory, which is then the step's arrays for both libraries.
    """
    import twins_np.functional as F
    from twins_np.backend import cpu_kernels
    from twins_np.nn.module import Parameter
    from twins_np.optim import AdamW

    if not cpu_kernels():
        return
    for dtype in dtypes:
        x = np.ones((1, 2, 2, 8), dtype)
        w, b = np.ones((8, 1, 3, 3), dtype), np.ones(8, dtype)
        F.gelu_backward(x, F.gelu_forward(x)[1])
        F.layernorm_backward(x, F.layernorm_forward(x, b, b)[1])
        F.softmax_backward(x, F.softmax_forward(x)[1])
        F.depthwise_conv3x3_backward(x, F.depthwise_conv3x3_forward(x, w, b)[1])
        p = Parameter(b.copy())
        p.grad = b
        AdamW([p]).step()


def twins_np_task(args: argparse.Namespace) -> tuple[Callable[[], Any], Callable[[], None]]:
    import twins_np
    import twins_np.functional as F
    from twins_np.backend import synchronize, to_device

    # time the library as a user imports it: `import twins_np` applies its own malloc tuning
    # (unless TWINS_NP_NO_MALLOC_TUNING=1), nothing more is set here
    load_cpu_kernels()
    rng = np.random.default_rng(0)
    dev = args.device
    if args.task == "segtrain":
        seg = twins_np.create_segmenter(args.model, num_classes=150)
        seg.to_device(dev)
        x = to_device(rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32), dev)
        y = to_device(_seg_labels(rng, args.batch, args.size), dev)
        seg.train()

        def seg_step() -> None:
            seg.zero_grad()
            seg.loss(x, y)
            seg.backward_loss()

        return seg_step, synchronize
    if args.task in ("forward", "train"):
        model = twins_np.create_model(args.model, num_classes=1000 if "teach" not in args.model else 10)
        model.to_device(dev)
        x = to_device(rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32), dev)
        y = to_device(rng.integers(0, model.num_classes, args.batch), dev)
        if args.task == "forward":
            model.eval()

            def fwd() -> None:
                with twins_np.no_grad():  # as torch.no_grad() on the other side
                    model.forward(x)

            return fwd, synchronize

        def step() -> None:
            model.zero_grad()
            model.loss(x, y)
            model.backward_loss()

        model.train()
        return step, synchronize

    # single ops: (B, N, C) tokens on an H x W map
    B, H, C, heads = args.batch, args.size, args.dim, args.heads
    n = lambda *s: to_device(rng.standard_normal(s).astype(np.float32) * 0.1, dev)  # noqa: E731
    x = n(B, H * H, C)
    dout = n(B, H * H, C)
    fwd: Callable[[], Any]
    bwd: Callable[[Any], Any]
    if args.op == "lsa":
        p = [n(3 * C, C), n(3 * C), n(C, C), n(C)]
        fwd = lambda: F.lsa_forward(x, (H, H), *p, num_heads=heads, ws=7)[1]  # noqa: E731
        bwd = lambda cache: F.lsa_backward(dout, cache)  # noqa: E731
    elif args.op == "gsa":
        sr = args.sr
        p = [n(C, C), n(C), n(2 * C, C), n(2 * C), n(C, C), n(C)]
        sub = [(n(C, C, sr, sr), n(C)), n(C) + 1.0, n(C)] if sr > 1 else []
        fwd = lambda: F.gsa_forward(x, (H, H), *p, heads, sr, *sub)[1]  # noqa: E731
        bwd = lambda cache: F.gsa_backward(dout, cache)  # noqa: E731
    elif args.op == "peg":
        w, b = n(C, 1, 3, 3), n(C)
        fwd = lambda: F.peg_forward(x, (H, H), w, b)[1]  # noqa: E731
        bwd = lambda cache: F.peg_backward(dout, cache)  # noqa: E731
    elif args.op == "layernorm":
        g, b = n(C) + 1.0, n(C)
        fwd = lambda: F.layernorm_forward(x, g, b, 1e-6)[1]  # noqa: E731
        bwd = lambda cache: F.layernorm_backward(dout, cache)  # noqa: E731
    elif args.op == "gelu":
        xh, dh = n(B, H * H, 4 * C), n(B, H * H, 4 * C)
        fwd = lambda: F.gelu_forward(xh)[1]  # noqa: E731
        bwd = lambda cache: F.gelu_backward(dh, cache)  # noqa: E731
    elif args.op == "softmax":
        s, ds = n(B * 64, heads, 49, 49), n(B * 64, heads, 49, 49)
        fwd = lambda: F.softmax_forward(s)[1]  # noqa: E731
        bwd = lambda cache: F.softmax_backward(ds, cache)  # noqa: E731
    elif args.op == "svt_block":
        from twins_np.nn.blocks import Block

        blocks = [Block(C, heads, ws=7, rng=0), Block(C, heads, sr_ratio=args.sr, rng=1)]
        for blk in blocks:
            blk.to_device(dev)

        def fwd() -> None:
            h = x
            with twins_np.no_grad() if args.passes == "fwd" else contextlib.nullcontext():
                for blk in blocks:
                    h = blk(h, (H, H))

        def bwd(_: Any) -> None:
            d = dout
            for blk in reversed(blocks):
                d = blk.backward(d)
    else:
        raise SystemExit(f"unknown op {args.op}")

    def op() -> None:
        cache = fwd()
        if args.passes == "fwdbwd":
            bwd(cache)

    return op, synchronize


# --- torch / timm -----------------------------------------------------------------------


def torch_task(args: argparse.Namespace) -> tuple[Callable[[], Any], Callable[[], None]]:
    import torch

    torch.set_num_threads(args.threads)
    dev = "cuda" if args.device == "gpu" else "cpu"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    if args.task == "segtrain":
        from benchmarks.torch_fpn import build

        seg = build(args.model, 150).to(dev).train()
        rng = np.random.default_rng(0)
        x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(dev)
        y = torch.from_numpy(_seg_labels(rng, args.batch, args.size)).to(dev)

        def seg_step() -> None:
            seg.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(seg(x), y, ignore_index=255).backward()

        return seg_step, sync
    if args.task in ("forward", "train"):
        from timm.models.twins import Twins

        from twins_np.models import MODEL_CONFIGS

        cfg = dict(MODEL_CONFIGS[args.model])
        cfg.setdefault("num_classes", 1000)
        model = Twins(**cfg).to(dev)
        x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(dev)
        y = torch.randint(0, cfg["num_classes"], (args.batch,), generator=g).to(dev)
        if args.task == "forward":
            model.eval()

            def fwd() -> None:
                with torch.no_grad():
                    model(x)

            return fwd, sync

        model.train()

        def step() -> None:
            model.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()

        return step, sync

    from timm.models.twins import GlobalSubSampleAttn, LocallyGroupedAttn, PosConv

    B, H, C, heads = args.batch, args.size, args.dim, args.heads
    x = (torch.randn(B, H * H, C, generator=g) * 0.1).to(dev).requires_grad_(True)
    dout = (torch.randn(B, H * H, C, generator=g) * 0.1).to(dev)
    if args.op in ("lsa", "gsa", "peg"):
        if args.op == "lsa":
            m = LocallyGroupedAttn(C, heads, ws=7)
        elif args.op == "gsa":
            m = GlobalSubSampleAttn(C, heads, sr_ratio=args.sr)
        else:
            m = PosConv(C, C)
        m = m.to(dev)
        fn = lambda: m(x, (H, H))  # noqa: E731
    elif args.op == "layernorm":
        m = torch.nn.LayerNorm(C, eps=1e-6).to(dev)
        fn = lambda: m(x)  # noqa: E731
    elif args.op == "gelu":
        x = (torch.randn(B, H * H, 4 * C, generator=g) * 0.1).to(dev).requires_grad_(True)
        dout = (torch.randn(B, H * H, 4 * C, generator=g) * 0.1).to(dev)
        fn = lambda: torch.nn.functional.gelu(x)  # noqa: E731
    elif args.op == "softmax":
        x = (torch.randn(B * 64, heads, 49, 49, generator=g) * 0.1).to(dev).requires_grad_(True)
        dout = (torch.randn(B * 64, heads, 49, 49, generator=g) * 0.1).to(dev)
        fn = lambda: torch.softmax(x, dim=-1)  # noqa: E731
    else:
        raise SystemExit(f"unknown op {args.op}")

    def op() -> None:
        if args.passes == "fwd":
            with torch.no_grad():
                fn()
            return
        fn().backward(dout)
        x.grad = None

    return op, sync


def _gpu_extras(lib: str, fn: Callable[[], Any], sync: Callable[[], None]) -> dict[str, Any]:
    """Host time per step, kernels per step and GPU memory (best effort: None where unknown)."""
    host = []
    for _ in range(3):
        sync()
        t0 = time.perf_counter()
        fn()
        host.append(time.perf_counter() - t0)
        sync()
    extras: dict[str, Any] = {"host_s": statistics.median(host), "kernels": None, "gpu_mib": None}
    try:
        if lib == "torch":
            import torch

            extras["gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        else:
            import cupy  # the benchmark, not the package: twins_np imports cupy only in its backend

            extras["gpu_mib"] = cupy.get_default_memory_pool().total_bytes() / 2**20
    except Exception:  # noqa: BLE001 - a missing figure, not a failed benchmark
        pass
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile

        sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            sync()
        cuda = torch.autograd.DeviceType.CUDA
        extras["kernels"] = sum(
            1 for e in prof.events() if e.device_type == cuda and not e.name.startswith(("Memcpy", "Memset"))
        )
    except Exception:  # noqa: BLE001
        pass
    return extras


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lib", choices=["twins-np", "torch"], required=True)
    p.add_argument("--task", choices=["forward", "train", "segtrain", "op"], required=True)
    p.add_argument("--model", default="twins_svt_small")
    p.add_argument("--op", default="lsa")
    p.add_argument("--passes", choices=["fwd", "fwdbwd"], default="fwdbwd", help="for --task op")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224, help="image side (models) or token-map side (ops)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--sr", type=int, default=8)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--fused", action="store_true", help="twins-np: use the fused CUDA kernels (GPU only)")
    p.add_argument("--kernels", choices=["on", "off"], help="twins-np: the fused CPU kernels on or off (default: the library's)")
    args = p.parse_args(argv)
    if args.lib == "twins-np":
        from twins_np import backend

        backend.cpu_kernel_threads(args.threads)
        if args.kernels is not None:
            backend.cpu_kernels(args.kernels == "on")
    if args.fused:
        if args.lib != "twins-np" or args.device != "gpu":
            p.error("--fused is for --lib twins-np --device gpu")
        from twins_np.backend import fused_kernels

        fused_kernels(True)
    if args.device == "gpu" and args.lib == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False  # float32 on both sides, no TF32 rounding
        torch.backends.cudnn.allow_tf32 = False
    fn, sync = (twins_np_task if args.lib == "twins-np" else torch_task)(args)
    times, cpu_times, peak = _time(fn, args.warmup, args.repeats, sync)
    row: dict[str, Any] = {"lib": args.lib, "median_s": statistics.median(times), "times_s": times,
                           "median_cpu_s": statistics.median(cpu_times), "cpu_times_s": cpu_times, "peak_mib": peak}  # fmt: skip
    if args.lib == "twins-np":
        from twins_np import backend

        row["cpu_kernels"] = backend.cpu_kernels()
    if args.device == "gpu":
        row.update(_gpu_extras(args.lib, fn, sync))
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
