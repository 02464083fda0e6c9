"""How long mmsegmentation's evaluation of a Twins segmenter takes: one whole-image inference, timed.

    python -m benchmarks.mmseg_eval                      # CPU, 2 threads, the two small models
    python -m benchmarks.mmseg_eval --device gpu         # on a GPU (CuPy)
    python -m benchmarks.mmseg_eval --models twins_svt_base_uperhead_ade20k --threads 4

ADE20K's validation split has 2,000 images; mmsegmentation's test pipeline rescales each to
fit 2048x512, which brings the shorter side to 512 unless the longer would exceed 2048: a
4:3 image becomes 512x683. The evaluation's time
is then about 2,000 times one forward at 512x683 (reading and resizing an image, and the
per-image resize of the 150-class logits, add a little: both are timed here too, as
``post``). The script times ``Segmenter.inference`` under ``no_grad`` in float32 (a warm-up,
then the median of ``--repeats`` runs) and prints, per model, the seconds per image, the
multiply-adds (``twins_np.analysis.count_flops``), the rate they imply, and that time x 2,000.
For models not timed, ``--estimate`` adds rows scaled by their multiply-adds from the rate
measured on the timed model with the same head (FPN or UPerNet: their layers run at
different rates): estimates, marked as such. Results are also written to
``benchmarks/results/mmseg_eval_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
SIZE = (512, 683)
ADE20K_VAL = 2000
TIMED = ["twins_pcpvt_small_fpn_ade20k", "twins_svt_small_uperhead_ade20k"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--threads", type=int, default=2, help="BLAS threads on the CPU (default 2)")
    p.add_argument("--models", nargs="+", default=TIMED)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--estimate", action="store_true", help="add estimated rows for the other *_ade20k models")
    args = p.parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before NumPy is imported

    import numpy as np

    import twins_np
    from twins_np import functional as F
    from twins_np.analysis import count_flops
    from twins_np.backend import to_device
    from twins_np.models import create_segmenter, list_segmenters

    def sync() -> None:
        if args.device == "gpu":
            import cupy

            cupy.cuda.runtime.deviceSynchronize()

    x = to_device(np.random.default_rng(0).standard_normal((1, 3, *SIZE)).astype(np.float32), args.device)
    rows = []
    for name in args.models:
        seg = create_segmenter(name).eval()
        seg.to_device(args.device)
        times, post = [], []
        for i in range(args.repeats + 1):
            with twins_np.no_grad():
                sync()
                t0 = time.perf_counter()
                logits = seg.inference(x)
                sync()
                t1 = time.perf_counter()
                # the per-image postprocessing of the evaluation: logits to a label map of another size, argmax
                resized, _ = F.bilinear_resize_forward(logits.transpose(0, 2, 3, 1), (SIZE[0] + 1, SIZE[1] + 1))
                resized.argmax(axis=-1)
                sync()
                t2 = time.perf_counter()
            if i:  # the first run is the warm-up
                times.append(t1 - t0)
                post.append(t2 - t1)
        macs = count_flops(seg, SIZE).total
        s = statistics.median(times) + statistics.median(post)
        rows.append(dict(model=name, measured=True, seconds=s, forward=statistics.median(times), post=statistics.median(post),
                         gmacs=macs / 1e9, rate=macs / 1e9 / statistics.median(times)))  # fmt: skip
        del seg
    rates = {_head(r["model"]): r["rate"] for r in rows}  # G multiply-adds per second of the forward, per head
    rate = statistics.median(rates.values())
    if args.estimate:
        post = statistics.median(r["post"] for r in rows)
        for name in list_segmenters():
            if name.endswith("_ade20k") and name not in args.models:
                gmacs = count_flops(name, SIZE).total / 1e9
                r = rates.get(_head(name), rate)
                rows.append(dict(model=name, measured=False, seconds=gmacs / r + post, forward=gmacs / r, post=post,
                                 gmacs=gmacs, rate=r))  # fmt: skip
    where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores" if args.device == "cpu" else "GPU"
    print(f"{where}; {args.device}, {args.threads} threads; float32; one 512x683 image")
    print("| model | measured or estimated | G MACs | G MACs/s | s per image | ADE20K val (2,000 images) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        kind = "measured" if r["measured"] else "**estimate** (scaled by MACs)"
        total = r["seconds"] * ADE20K_VAL
        print(f"| {r['model']} | {kind} | {r['gmacs']:.1f} | {r['rate']:.1f} | {r['seconds']:.2f} | {total / 3600:.1f} h |")
    out = HERE / "results" / f"mmseg_eval_{args.device}.json"
    out.parent.mkdir(exist_ok=True)
    meta = dict(device=args.device, threads=args.threads, size=SIZE, python=sys.version.split()[0], numpy=np.__version__)
    out.write_text(json.dumps(dict(meta=meta, rates_gmacs_per_s=rates, rows=rows), indent=1) + "\n")
    return 0


def _head(name: str) -> str:
    return "uper" if "_uperhead" in name else "fpn"


if __name__ == "__main__":
    raise SystemExit(main())
