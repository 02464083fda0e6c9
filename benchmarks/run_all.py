"""Run the twins-np vs PyTorch benchmarks and print ratios measured in the same run.

    python -m benchmarks.run_all                 # everything on the CPU (about 15-25 minutes)
    python -m benchmarks.run_all --only models   # models | segmentation | ops | scaling
    python -m benchmarks.run_all --device gpu    # CuPy vs PyTorch eager CUDA (needs a GPU)
    python -m benchmarks.run_all --quick         # fewer rounds, for a smoke test

On the CPU (where numba is installed) twins-np runs twice in every round, with its fused CPU
kernels and with its NumPy twins, so each table has both against torch from the same run.

On the GPU the sizes are the GPU's (GPU_MODELS, GPU_OPS: batch 64 at 224x224 for the small
models, batch 256 for the teaching configs), float32 with TF32 off on both sides, and each
row adds the host time and the kernels launched per step; ops are timed unfused, fused
(when twins_np.backend has fused kernels) and in torch. Targets (a benchmark, never a
test): training step <= 1.5x PyTorch eager for the small models, <= 2x for the teaching
configs.

Each measurement runs in its own process (benchmarks/worker.py); the two libraries are
interleaved round by round (the machine's speed drifts over minutes, so back-to-back
pairs compare fairly), and the ratio is twins-np's median over torch's median.
Results are printed as Markdown and written to benchmarks/results/<device>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

MODELS = [
    # (name, batch, image size)
    ("twins_svt_small", 8, 224),
    ("twins_pcpvt_small", 8, 224),
    ("twins_svt_teach32", 64, 32),
    ("twins_pcpvt_teach32", 64, 32),
]
SEGMENTERS = [
    # (name, batch, image size): a training step of Semantic FPN (issue 13's two settings)
    ("twins_svt_teach64_fpn", 16, 64),
    ("twins_svt_small_fpn", 2, 512),
]
OPS = [
    # (op, batch, token-map side, channels, heads, sr): stage-1 sizes of twins_svt_small at batch 8
    ("lsa", 8, 56, 64, 2, 8),
    ("gsa", 8, 56, 64, 2, 8),
    ("peg", 8, 56, 64, 2, 8),
    ("layernorm", 8, 56, 64, 2, 8),
    ("gelu", 8, 56, 64, 2, 8),
    ("softmax", 8, 56, 64, 2, 8),
]
SCALING_SIZES = [28, 56, 112, 224]
GPU_MODELS = [
    ("twins_svt_small", 64, 224),
    ("twins_pcpvt_small", 64, 224),
    ("twins_svt_teach32", 256, 32),
    ("twins_pcpvt_teach32", 256, 32),
]
# stage-1 sizes of twins_svt_small at batch 64
GPU_OPS = [(op, 64, side, dim, heads, sr) for op, _, side, dim, heads, sr in OPS]


THREADS = 2  # BLAS / OpenMP threads per process, both libraries (set by --threads)
CLOCK_KEY = "median_s"  # the worker's wall-clock median; "median_cpu_s" with --clock cpu


def _worker(args: list[str]) -> dict:
    n = str(THREADS)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS=n, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, CUPY_TF32="0")  # fmt: skip
    args = [*args, "--threads", n]
    out = subprocess.run([sys.executable, "-m", "benchmarks.worker", *args], capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pair(common: list[str], rounds: int, np_extra: list[str] | None = None, twins: bool = False) -> dict:
    """Interleave the libraries for `rounds` rounds; medians of the per-round medians.

    With ``twins`` (the CPU, where numba is installed) twins-np runs twice per round, with
    its fused CPU kernels and with its NumPy twins (``--kernels on`` / ``off``), so the two
    paths and torch are measured side by side; the order rotates from round to round.
    """
    runs = {"twins-np": ["--lib", "twins-np", *(np_extra or [])], "torch": ["--lib", "torch"]}
    if twins:
        runs["twins-np"] += ["--kernels", "on"]
        runs["twins-np-twins"] = ["--lib", "twins-np", "--kernels", "off"]
    names = list(runs)
    res: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            res[name].append(_worker([*runs[name], *common]))
    t = {name: statistics.median(x[CLOCK_KEY] for x in res[name]) for name in names}
    m = {name: statistics.median(x["peak_mib"] for x in res[name]) for name in names}
    out = {"twins_np_s": t["twins-np"], "torch_s": t["torch"], "ratio": t["twins-np"] / t["torch"], "twins_np_mib": m["twins-np"],
           "torch_mib": m["torch"], "mem_ratio": (m["twins-np"] / m["torch"]) if m["torch"] > 0 else float("nan")}  # fmt: skip
    if twins:
        t_tw, m_tw = t["twins-np-twins"], m["twins-np-twins"]
        mem_ratio = (m_tw / m["torch"]) if m["torch"] > 0 else float("nan")
        out.update(twins_np_twins_s=t_tw, ratio_twins=t_tw / t["torch"], twins_np_twins_mib=m_tw, mem_ratio_twins=mem_ratio,
                   kernel_speedup=t_tw / t["twins-np"])  # fmt: skip
    for key in ("host_s", "kernels", "gpu_mib"):  # GPU only: from the first round
        if key in res["twins-np"][0]:
            out[f"twins_np_{key}"], out[f"torch_{key}"] = res["twins-np"][0][key], res["torch"][0][key]
    return out


def _cpu_kernels_available() -> bool:
    """True when twins-np's fused CPU kernels can run here (numba installed)."""
    out = subprocess.run([sys.executable, "-c", "from twins_np.backend import cpu_kernels_available as f; print(f())"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    return out.returncode == 0 and out.stdout.strip() == "True"


def _fused_available() -> bool:
    """True when twins_np.backend has fused kernels that can run here (a real GPU)."""
    out = subprocess.run([sys.executable, "-c", "from twins_np.backend import fused_kernels_available as f; print(f())"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    return out.returncode == 0 and out.stdout.strip() == "True"


def _fmt(v: object, scale: float = 1.0, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(float(v) * scale, spec)  # type: ignore[arg-type]


def _slope(sizes: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(H*W): the exponent in HW."""
    xs = [math.log(s * s) for s in sizes]
    ys = [math.log(max(v, 1e-12)) for v in values]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


def _predicted_macs(op: str, side: int, C: int = 64, heads: int = 2, k: int = 7) -> int:
    """MACs twins-np's analytic count gives the scaling row's layer at side x side.

    Counted on the modules the worker times (an LSA block and a GSA block, or the
    attention layer of one of them), so the prediction and the measurement share a source.
    """
    from twins_np.analysis import module_flops
    from twins_np.nn.blocks import Block

    lsa_block, gsa_block = Block(C, heads, ws=k, rng=0), Block(C, heads, sr_ratio=k, rng=1)
    modules = {"lsa": [lsa_block.attn], "gsa": [gsa_block.attn], "svt_block": [lsa_block, gsa_block]}[op]
    return sum(module_flops(m, side) for m in modules)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def versions() -> str:
    import numpy

    import twins_np

    parts = [f"twins-np {twins_np.__version__}", f"numpy {numpy.__version__}"]
    try:
        import timm
        import torch

        parts += [f"torch {torch.__version__}", f"timm {timm.__version__}"]
    except ImportError:
        parts.append("torch not installed")
    return ", ".join(parts)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["models", "segmentation", "ops", "scaling"], action="append")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1 round, 2 repeats (smoke test)")
    p.add_argument("--threads", type=int, default=2, help="threads per process for both libraries (default 2)")
    p.add_argument("--out", type=pathlib.Path, help="results JSON (default benchmarks/results/<device>.json)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time by the wall clock, or by the processes' CPU time (steadier on a shared machine; "
                        "with --threads 1 the two agree on a quiet one)")  # fmt: skip
    p.add_argument("--no-twins", action="store_true", help="CPU: time twins-np's default path only, not also its NumPy twins")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    global THREADS, CLOCK_KEY
    THREADS = args.threads
    CLOCK_KEY = "median_cpu_s" if args.clock == "cpu" else "median_s"
    gpu = args.device == "gpu"
    # the scaling table is about CPU time and memory against H*W; on the GPU it is asked for by name
    only = set(args.only or (["models", "ops"] if gpu else ["models", "segmentation", "ops", "scaling"]))
    models, ops = (GPU_MODELS, GPU_OPS) if gpu else (MODELS, OPS)
    rounds = 1 if args.quick else args.rounds
    rep = ["--warmup", "1", "--repeats", "2"] if args.quick else ["--warmup", "2", "--repeats", "5"]
    dev = ["--device", args.device]
    results: dict = {"machine": machine(), "versions": versions(), "device": args.device,
                     "date": time.strftime("%Y-%m-%d"), "models": [], "segmentation": [], "ops": [], "scaling": []}  # fmt: skip
    results["threads"] = THREADS
    results["clock"] = args.clock
    path = args.out or HERE / "results" / f"{args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every row, so a run stopped by a time limit keeps what it measured
        path.write_text(json.dumps(results, indent=2))
    print(f"# twins-np vs PyTorch ({args.device}, {THREADS} thread(s) per process, {args.clock} time)")
    print(f"\n{results['machine']}\n{results['versions']}\n")

    # on the CPU, twins-np with its fused kernels and with its NumPy twins, against torch in the same run
    twins = not gpu and _cpu_kernels_available() and not args.no_twins
    results["cpu_kernels_compared"] = twins
    if "models" in only:
        if twins:
            print("| model | batch | size | task | twins-np s: kernels | NumPy twins | torch s | time ratio: kernels "
                  "| NumPy twins | twins-np MiB: kernels | NumPy twins | torch MiB | memory ratio: kernels | NumPy twins |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        else:
            print("| model | batch | size | task | twins-np s | torch s | time ratio | twins-np MiB | torch MiB | memory ratio |"
                  + (" host ms/step: twins-np | torch | kernels/step: twins-np | torch |" if gpu else ""))  # fmt: skip
            print("|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if gpu else ""))
        for name, batch, size in models:
            for task in ("train", "forward") if gpu else ("forward", "train"):  # on the GPU the target first
                common = ["--task", task, "--model", name, "--batch", str(batch), "--size", str(size), *dev, *rep]
                r = _pair(common, rounds, twins=twins)
                results["models"].append({"model": name, "batch": batch, "size": size, "task": task, **r})
                if twins:
                    row = [name, batch, size, task, *(f"{r[k]:.3f}" for k in ("twins_np_s", "twins_np_twins_s", "torch_s")),
                           *(f"{r[k]:.2f}" for k in ("ratio", "ratio_twins")),
                           *(f"{r[k]:.0f}" for k in ("twins_np_mib", "twins_np_twins_mib", "torch_mib")),
                           *(f"{r[k]:.2f}" for k in ("mem_ratio", "mem_ratio_twins"))]  # fmt: skip
                else:
                    row = [name, batch, size, task, f"{r['twins_np_s']:.3f}", f"{r['torch_s']:.3f}", f"{r['ratio']:.2f}",
                           f"{r['twins_np_mib']:.0f}", f"{r['torch_mib']:.0f}", f"{r['mem_ratio']:.2f}"]  # fmt: skip
                if gpu:
                    row += [_fmt(r.get("twins_np_host_s"), 1e3), _fmt(r.get("torch_host_s"), 1e3),
                            _fmt(r.get("twins_np_kernels"), 1, ".0f"), _fmt(r.get("torch_kernels"), 1, ".0f")]  # fmt: skip
                print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
                save()
        print()

    if "segmentation" in only:
        print("| segmenter | batch | size | task | twins-np s | torch s | time ratio | twins-np MiB | torch MiB | memory ratio |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, batch, size in SEGMENTERS:
            common = ["--task", "segtrain", "--model", name, "--batch", str(batch), "--size", str(size), *dev, *rep]
            r = _pair(common, rounds)
            results["segmentation"].append({"model": name, "batch": batch, "size": size, "task": "train", **r})
            row = [name, batch, size, "train", f"{r['twins_np_s']:.3f}", f"{r['torch_s']:.3f}", f"{r['ratio']:.2f}",
                   f"{r['twins_np_mib']:.0f}", f"{r['torch_mib']:.0f}", f"{r['mem_ratio']:.2f}"]  # fmt: skip
            print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
            save()
        print()

    if "ops" in only:
        if twins:
            print("| op | shape | forward ms: kernels | NumPy twins | torch | ratio: kernels | NumPy twins |"
                  " forward + backward ms: kernels | NumPy twins | torch | ratio: kernels | NumPy twins |")  # fmt: skip
            print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        else:
            print("| op | shape | forward: twins-np ms | torch ms | ratio | forward + backward: twins-np ms | torch ms | ratio |")
            print("|---|---|---|---|---|---|---|---|")
        fused = gpu and _fused_available()
        for op, batch, side, dim, heads, sr in ops:
            common = ["--task", "op", "--op", op, "--batch", str(batch), "--size", str(side), "--dim", str(dim),
                      "--heads", str(heads), "--sr", str(sr), *dev, *rep]  # fmt: skip
            fw = _pair([*common, "--passes", "fwd"], rounds, twins=twins)
            fb = _pair([*common, "--passes", "fwdbwd"], rounds, twins=twins)
            row = {"op": op, "batch": batch, "side": side, "dim": dim, "forward": fw, "forward_backward": fb}
            if fused:  # the same op with the fused kernels: speed-up of fused over unfused
                ff = _pair([*common, "--passes", "fwdbwd"], rounds, ["--fused"])
                row["forward_backward_fused"] = ff
                row["fused_speedup"] = fb["twins_np_s"] / ff["twins_np_s"]
            results["ops"].append(row)
            save()
            if twins:
                cells = [f"{1e3 * fw['twins_np_s']:.1f}", f"{1e3 * fw['twins_np_twins_s']:.1f}", f"{1e3 * fw['torch_s']:.1f}",
                         f"{fw['ratio']:.2f}", f"{fw['ratio_twins']:.2f}", f"{1e3 * fb['twins_np_s']:.1f}",
                         f"{1e3 * fb['twins_np_twins_s']:.1f}", f"{1e3 * fb['torch_s']:.1f}", f"{fb['ratio']:.2f}",
                         f"{fb['ratio_twins']:.2f}"]  # fmt: skip
                print(f"| {op} | B={batch}, {side}x{side}, C={dim} | " + " | ".join(cells) + " |", flush=True)
                continue
            print(f"| {op} | B={batch}, {side}x{side}, C={dim} | {1e3 * fw['twins_np_s']:.1f} | {1e3 * fw['torch_s']:.1f} | "
                  f"{fw['ratio']:.2f} | {1e3 * fb['twins_np_s']:.1f} | {1e3 * fb['torch_s']:.1f} | {fb['ratio']:.2f} |",
                  flush=True)  # fmt: skip
            if "fused_speedup" in row:
                print(f"|   {op}, fused kernels | | | | | {1e3 * row['forward_backward_fused']['twins_np_s']:.1f} | | "
                      f"fused / unfused speed-up {row['fused_speedup']:.2f}x |", flush=True)  # fmt: skip
        print()

    if "scaling" in only:
        print("| layer (C=64, B=1, fwd + bwd) | " + " | ".join(f"{s}x{s}" for s in SCALING_SIZES)
              + " | exponent: time | memory | predicted (MACs) |")  # fmt: skip
        print("|---|" + "---|" * (len(SCALING_SIZES) + 3))
        for op, label in (("lsa", "LSA (ws 7)"), ("gsa", "GSA (sr 7)"), ("svt_block", "SVT block pair (LSA + GSA)")):
            times, mems = [], []
            for s in SCALING_SIZES:
                common = ["--task", "op", "--op", op, "--batch", "1", "--size", str(s), "--dim", "64", "--heads", "2",
                          "--sr", "7", *dev, *rep]  # fmt: skip
                runs = [_worker(["--lib", "twins-np", *common]) for _ in range(rounds)]
                times.append(statistics.median(r["median_s"] for r in runs))
                mems.append(statistics.median(r["peak_mib"] for r in runs))
            macs = [_predicted_macs(op, s) for s in SCALING_SIZES]
            slopes = {k: _slope(SCALING_SIZES, v) for k, v in (("time", times), ("memory", mems), ("macs", macs))}
            results["scaling"].append({"layer": op, "sizes": SCALING_SIZES, "seconds": times, "peak_mib": mems,
                                       "macs": macs, "exponents": slopes})  # fmt: skip
            cells = [f"{1e3 * t:.1f} ms, {m:.0f} MiB" for t, m in zip(times, mems)]
            print(f"| {label} | " + " | ".join(cells)
                  + f" | {slopes['time']:.2f} | {slopes['memory']:.2f} | {slopes['macs']:.2f} |")  # fmt: skip
        print()

    save()
    print(f"(written to {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
