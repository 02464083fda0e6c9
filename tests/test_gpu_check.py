"""The prepared GPU check (tools/gpu_check.sh) is runnable, in order, and calls only what exists.

No GPU is needed: the script runs with a fake ``python3`` that records its arguments, and
every recorded command is then parsed by the real argument parser it will meet on the GPU
machine (the benchmark, the parity script, the train CLI) or checked to exist (the
notebooks, each reading ``TWINS_NP_DEVICE``).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.sh"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.py"))

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """Run the whole check with a fake python3 that logs each call (args, TWINS_NP_DEVICE)."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    log = tmp / "calls.log"
    fake = tmp / "python3"
    fake.write_text(
        "#!/bin/sh\n"
        # one write per call: the notebooks run in parallel, and two printf calls per record
        # interleave with another process's (a torn line)
        'args=$(printf "%s\\037" "$@")\n'
        f'printf "%sDEVICE=%s\\n" "$args" "$TWINS_NP_DEVICE" >> "{log}"\n'
        'case "$1" in -) cat > /dev/null;; esac\n'
        "exit 0\n"
    )
    fake.chmod(0o755)
    out = tmp / "out"
    env = dict(os.environ, PYTHON=str(fake), BUDGET="120")
    res = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp)
    assert res.returncode == 0, res.stderr
    calls = []
    for line in log.read_text().splitlines():
        *args, device = line.split("\x1f")
        calls.append((args, device.removeprefix("DEVICE=")))
    return out, calls


def test_report_has_every_step_in_the_issues_order(fake_run):
    out, _ = fake_run
    report = (out / "report.md").read_text()
    titles = ["device and versions", "pytest -m gpu", "float64 parity", "notebooks with TWINS_NP_DEVICE=gpu",
              "train --device gpu", "benchmark: models", "benchmark: layers"]  # fmt: skip
    positions = [report.index(f"## {i}. ") for i in range(1, 8)]
    assert positions == sorted(positions)
    for i, title in enumerate(titles, 1):
        assert title in report.split(f"## {i}. ", 1)[1].splitlines()[0], title
    assert "## Summary" in report and report.count("| ok |") == 7


def test_every_command_exists_and_parses(fake_run):
    _, calls = fake_run
    from tools_gpu_parity import parser as parity_parser

    from benchmarks.run_all import parser as bench_parser
    from twins_np.cli import build_parser

    seen = set()
    for args, device in calls:
        if args[:2] == ["-m", "pytest"]:
            assert "-m" in args[2:] and args[args.index("-m", 2) + 1] == "gpu" and any(a.startswith("--junitxml") for a in args)
            seen.add("pytest")
        elif args[0].endswith("tools/gpu_parity.py"):
            a = parity_parser().parse_args(args[1:])
            assert a.device == "gpu" and a.size == [100, 132] and set(a.models) == {"twins_svt_small", "twins_pcpvt_small"}
            seen.add("parity")
        elif args[:2] == ["-m", "twins_np"]:
            a = build_parser().parse_args(args[2:])
            assert a.command == "train" and a.device == "gpu" and a.epochs == 1
            seen.add("train")
        elif args[:2] == ["-m", "benchmarks.run_all"]:
            a = bench_parser().parse_args(args[2:])
            assert a.device == "gpu" and a.out.name in ("benchmark-gpu.json", "benchmark-gpu-ops.json")
            seen.add(f"bench {a.only}")
        elif args[0].endswith(".py") and "/notebooks/" in args[0]:
            assert pathlib.Path(args[0]).exists() and device == "gpu"
            seen.add(pathlib.Path(args[0]).name)
        elif args[0].endswith("device.py") or args[0] == "-":
            seen.add("device" if args[0].endswith("device.py") else "junit")
        else:
            raise AssertionError(f"unexpected call {args}")
    assert {"device", "pytest", "junit", "parity", "train", "bench ['models']", "bench ['ops']"} <= seen
    assert {p.name for p in NOTEBOOKS} <= seen


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_reads_its_device_from_the_environment(nb):
    text = nb.read_text()
    assert 'DEVICE = os.environ.get("TWINS_NP_DEVICE", "cpu")' in text


@pytest.fixture(autouse=True, scope="module")
def _importable_parity_script():
    # tools/ is not a package: load tools/gpu_parity.py under a module name for the parser
    import importlib.util

    spec = importlib.util.spec_from_file_location("tools_gpu_parity", ROOT / "tools" / "gpu_parity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["tools_gpu_parity"] = mod
    yield
    sys.modules.pop("tools_gpu_parity", None)


def test_the_launch_bound_notebooks_start_early_and_step_4_waits_for_them(fake_run):
    """Notebooks 09 and 10 (about 30 million CuPy calls each) get the time of steps 2-4, not step 4's alone."""
    out, _ = fake_run
    for name in ("09_training_and_ablations", "10_dense_prediction"):
        assert (out / "notebooks" / f"{name}.early").is_file(), name
        assert (out / "notebooks" / f"{name}.rc").read_text().split()[0] == "0", name
    step4 = (out / "report.md").read_text().split("## 4. ", 1)[1].split("## 5. ", 1)[0]
    assert all(f"{p.stem}: ok" in step4 for p in NOTEBOOKS)


def test_the_gpu_benchmark_runs_twins_np_on_device_arrays():
    """Every twins-np measurement the GPU benchmark makes (benchmarks.run_all's GPU_MODELS and
    GPU_OPS, steps 6 and 7 of the check) runs through benchmarks/worker.py with --device gpu
    under the CuPy stand-in (on a GPU machine, on the GPU), at small sizes: the same code
    path, each row the JSON the benchmark reads, with the GPU extras (host time, memory)."""
    import json

    from benchmarks.run_all import GPU_MODELS, GPU_OPS

    runs = [["--task", task, "--model", name, "--batch", "2", "--size", "32"] for name, _, _ in GPU_MODELS
            for task in ("forward", "train")]  # fmt: skip
    for op, _, _, dim, heads, _ in GPU_OPS:
        for passes in ("fwd", "fwdbwd"):
            runs.append(["--task", "op", "--op", op, "--batch", "2", "--size", "14", "--dim", str(dim),
                         "--heads", str(heads), "--sr", "2", "--passes", passes])  # fmt: skip
    code = (
        "import json, sys, cupy_standin\n"
        "cupy_standin.install()\n"
        "from benchmarks.worker import main\n"
        "common = ['--lib', 'twins-np', '--device', 'gpu', '--warmup', '1', '--repeats', '1', '--threads', '1']\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    assert main([*common, *args]) == 0\n"
        "print('device arrays', cupy_standin.DEVICE_ARRAYS[0] if cupy_standin.is_active() else 'real GPU')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), OPENBLAS_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", code, json.dumps(runs)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(runs)
    made = res.stdout.strip().splitlines()[-1]
    assert made == "device arrays real GPU" or int(made.split()[-1]) > 1000, made  # the work ran on device arrays
    for row in rows:
        assert row["lib"] == "twins-np" and row["median_s"] > 0 and row["host_s"] > 0 and "gpu_mib" in row, row
