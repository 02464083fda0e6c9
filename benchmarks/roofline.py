"""A roofline of the layer benchmark: each layer's arithmetic against this machine's limits.

    python -m benchmarks.roofline --measure   # memory bandwidth and BLAS peak -> benchmarks/results/machine.json
    python -m benchmarks.roofline             # figure + table from results/cpu.json (run_all --only ops) and machine.json

A layer that does F floating-point operations and must move at least Q bytes to and from
memory cannot run faster than max(F / peak, Q / bandwidth): the roofline. Its arithmetic
intensity F / Q (operations per byte) says which limit applies. GELU, LayerNorm, softmax and
the PEG do a few to a few dozen operations per 4-byte element, far left of the ridge point
(peak / bandwidth, about 10 operations per byte here): they are bound by memory traffic,
and the only way to run them faster is to move fewer bytes. That is what fusion does: the
NumPy twin reads and writes whole arrays once per operation (the GELU's rational function is
about 25 passes), a fused kernel once in all.

F and Q are counted here, per layer, from the kernels' formulas and the twins' data: Q is
what any implementation with the twins' caches must move at least (inputs read once, outputs
and caches written once; float32), F the operations of the kernel's loop (exp counted as
21, the operations of ``cpu_common.exp``). torch's layers are put at the same F and Q, although
they keep smaller caches (its GELU does not store Phi(x), for one). The measured times come
from ``benchmarks/results/cpu.json`` (``python -m benchmarks.run_all --only ops``); the figure
plots forward + backward, and the table also gives each time as a multiple of the roofline's:
for a layer bound by memory, the number of passes over its Q bytes that the time would allow.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
FIGURE = ROOT / "docs" / "_static" / "roofline.png"
EXP_FLOPS = 21  # cpu_common.exp: the reduction (4), eight Horner steps (16), the scaling (1)


def measure(threads: int) -> dict[str, Any]:
    """Memory bandwidth (a STREAM-style triad, 1 and ``threads`` threads) and the BLAS float32 peak.

    With one thread the times are the process's CPU time, as ``run_all --clock cpu`` takes
    them (on a shared machine the wall clock also counts the waits for a core); with more,
    the wall clock. The best of several runs is kept: the machine's limit, not its average.
    """
    import numba

    @numba.njit(parallel=True, fastmath=False)
    def triad(a: Any, b: Any, c: Any, s: Any) -> None:  # c = a + s b: reads 2, writes 1
        for i in numba.prange(a.size):
            c[i] = a[i] + s * b[i]

    n = 1 << 25  # 3 arrays of 128 MiB: far beyond any cache
    a, b, c = np.ones(n, np.float32), np.ones(n, np.float32), np.empty(n, np.float32)
    s = np.float32(0.5)
    out: dict[str, Any] = {"threads": threads}
    for t in sorted({1, threads}):
        clock = time.process_time if t == 1 else time.perf_counter
        numba.set_num_threads(t)
        triad(a, b, c, s)
        times = []
        for _ in range(9):
            t0 = clock()
            triad(a, b, c, s)
            times.append(clock() - t0)
        out[f"bandwidth_gbs_{t}"] = 3 * 4 * n / min(times) / 1e9  # bytes counted as STREAM counts them
    m = 2048
    x, w = np.ones((m, m), np.float32), np.ones((m, m), np.float32)
    x @ w
    clock = time.process_time if threads == 1 else time.perf_counter
    times = []
    for _ in range(7):
        t0 = clock()
        x @ w
        times.append(clock() - t0)
    out["blas_peak_gflops"] = 2 * m**3 / min(times) / 1e9  # with the BLAS threads the environment sets
    return out


def layer_counts(op: str, B: int, side: int, C: int, heads: int, sr: int) -> dict[str, tuple[float, float]]:
    """(operations, bytes) of the forward and of forward + backward of one layer of the benchmark."""
    N = B * side * side  # tokens
    f32 = 4
    if op == "gelu":  # on the MLP's hidden layer, 4C wide
        n = N * 4 * C
        fwd = (27 * n, 12 * n)  # rational Phi (25), x Phi (1), + 1/2 (1); read x, write y and Phi
        bwd = ((6 + EXP_FLOPS) * n, 16 * n)  # read dout, x, Phi; write dx
    elif op == "layernorm":
        n = N * C
        fwd = (7 * n, 12 * n + f32 * N)  # read x; write y, xhat (and inv_std per row)
        bwd = (11 * n, 12 * n + f32 * N)  # read dout, xhat (and inv_std); write dx
    elif op == "softmax":  # B * 64 windows x heads rows of 49 scores
        n = B * 64 * heads * 49 * 49
        fwd = ((4 + EXP_FLOPS) * n, 8 * n)
        bwd = (4 * n, 12 * n)
    elif op == "peg":  # conv + bias + residual; the cache is the zero-padded input
        n = N * C
        pad = B * (side + 2) ** 2 * C * f32
        fwd = (19 * n, 8 * n + pad)  # read x; write y and xpad
        bwd = (38 * n, 8 * n + pad)  # read dout, xpad; write dx (dW, db are C-sized)
    elif op in ("lsa", "gsa"):  # projections and attention: 2 operations per multiply-add
        from benchmarks.run_all import _predicted_macs

        macs = B * _predicted_macs(op, side, C, heads, 7 if op == "lsa" else sr)
        keys = 49 if op == "lsa" else (side // sr) ** 2  # a 7x7 window, or the sub-sampled map
        probs = f32 * N * keys * heads  # the attention probabilities, kept for the backward
        act = f32 * N * C
        fwd = (2 * macs, 2 * act + probs)  # read x, write the output and the probabilities
        bwd = (4 * macs, 2 * act + probs)  # read dout and the probabilities, write dx
    else:
        raise ValueError(op)
    return {"forward": fwd, "forward_backward": (fwd[0] + bwd[0], fwd[1] + bwd[1])}


LABELS = {"gelu": "GELU", "layernorm": "LayerNorm", "softmax": "softmax", "peg": "PEG", "lsa": "LSA", "gsa": "GSA"}


def table(ops: list[dict[str, Any]], machine: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per layer and pass: intensity, and per implementation GFLOP/s, share of the roof and passes."""
    bw = machine[f"bandwidth_gbs_{machine['threads']}"] * 1e9
    peak = machine["blas_peak_gflops"] * 1e9
    rows = []
    for row in ops:
        counts = layer_counts(row["op"], row["batch"], row["side"], row["dim"], 2, 8)
        for task in ("forward", "forward_backward"):
            flops, nbytes = counts[task]
            roof_s = max(flops / peak, nbytes / bw)
            entry = {"op": row["op"], "task": task, "intensity": flops / nbytes, "roof_ms": 1e3 * roof_s}
            entry["bound"] = "memory" if nbytes / bw >= flops / peak else "arithmetic"
            res = row[task]
            for name, key in (("kernels", "twins_np_s"), ("twins", "twins_np_twins_s"), ("torch", "torch_s")):
                if key in res:
                    t = res[key]
                    entry[name] = {"ms": 1e3 * t, "gflops": flops / t / 1e9, "x_roof": t / roof_s}
            rows.append(entry)
    return rows


def figure(rows: list[dict[str, Any]], machine: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bw, peak = machine[f"bandwidth_gbs_{machine['threads']}"], machine["blas_peak_gflops"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    xs = np.logspace(-1.3, 3.2, 200)
    ax.plot(xs, np.minimum(peak, bw * xs), color="black", lw=1.5)
    ax.text(0.3, bw * 0.3 * 1.6, f"memory bandwidth: {bw:.0f} GB/s", fontsize=8, ha="right")
    ax.text(300, peak * 1.08, f"BLAS peak: {peak:.0f} GFLOP/s", fontsize=8, ha="center")
    styles = {"twins": ("NumPy twins", "o", "tab:orange"), "kernels": ("CPU kernels", "s", "tab:blue"),
              "torch": ("torch", "^", "tab:gray")}  # fmt: skip
    seen = set()
    for r in rows:
        if r["task"] != "forward_backward":
            continue
        for name, (label, marker, color) in styles.items():
            if name in r:
                ax.scatter(r["intensity"], r[name]["gflops"], marker=marker, color=color, s=36, zorder=3,
                           label=label if name not in seen else None)  # fmt: skip
                seen.add(name)
        ys = [r[n]["gflops"] for n in styles if n in r]
        ax.vlines(r["intensity"], min(ys), max(ys), color="lightgray", lw=1, zorder=1)  # one layer's three points
        shift = {"gsa": -10, "lsa": 10}.get(r["op"], 0)
        ax.annotate(LABELS[r["op"]], (r["intensity"], max(ys)), textcoords="offset points", xytext=(shift, 7), ha="center",
                    fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (floating-point operations per byte of minimal traffic)")
    ax.set_ylabel("GFLOP/s achieved")
    threads = machine["threads"]
    plural = "s" if threads > 1 else ""
    ax.set_title(f"Stage-1 layers of SVT-S at batch 8, forward + backward, {threads} thread{plural}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", action="store_true", help="measure bandwidth and BLAS peak, write results/machine.json")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                   help="threads, as the benchmark ran with (default: OMP_NUM_THREADS, else 1)")  # fmt: skip
    p.add_argument("--results", type=pathlib.Path, default=RESULTS / "cpu.json")
    p.add_argument("--figure", type=pathlib.Path, default=FIGURE)
    args = p.parse_args(argv)
    if args.measure:
        runs = [measure(args.threads) for _ in range(3)]
        machine = {k: (statistics.median(r[k] for r in runs) if k != "threads" else args.threads) for k in runs[0]}
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "machine.json").write_text(json.dumps(machine, indent=2))
        print(json.dumps(machine, indent=2))
        return 0
    machine = json.loads((RESULTS / "machine.json").read_text())
    ops = json.loads(args.results.read_text())["ops"]
    rows = table(ops, machine)
    figure(rows, machine, args.figure)
    threads = machine["threads"]
    bw, peak = machine[f"bandwidth_gbs_{threads}"], machine["blas_peak_gflops"]
    print(f"memory bandwidth {bw:.1f} GB/s, BLAS peak {peak:.0f} GFLOP/s ({threads} thread{'s' if threads > 1 else ''}); "
          f"ridge point {peak / bw:.1f} operations per byte")  # fmt: skip
    print("\n| layer | pass | operations / byte | bound by | roofline ms | CPU kernels ms (x roofline) | "
          "NumPy twins ms (x roofline) | torch ms (x roofline) |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        cells = [f"{r[n]['ms']:.1f} ({r[n]['x_roof']:.1f})" if n in r else "n/a" for n in ("kernels", "twins", "torch")]
        head = [LABELS[r["op"]], r["task"].replace("_", " + "), f"{r['intensity']:.2f}", r["bound"], f"{r['roof_ms']:.2f}"]
        print("| " + " | ".join(head + cells) + " |")
    print(f"\n(figure: {args.figure})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
