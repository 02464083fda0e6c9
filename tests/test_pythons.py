"""The short suite: what every supported Python must run (``make pythons`` runs this file under
the lowest and the highest Python setup.cfg admits that the machine has, each in a virtualenv of
its own with only the ``course`` extra installed; the full suite runs it on the default one).

Import, a finite-difference check of a few layers, and the course's whole round trip for two
tasks: build the student copy (its tests found by running them), grade the reference (full marks)
and the untouched copy (0) in the sandbox.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

import numpy as np
import pytest

import twins_np
from twins_np import functional as F
from twins_np.gradcheck import TOLERANCES, check_backward

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_import_and_python_version():
    assert sys.version_info >= (3, 11)
    assert twins_np.__version__ and twins_np.get_xp(np.ones(2)) is np


@pytest.mark.parametrize("layer", ["gelu", "layernorm", "lsa"])
def test_gradcheck_of_a_few_layers(layer):
    r = np.random.default_rng(0)
    if layer == "gelu":
        rows = check_backward(F.gelu_forward, F.gelu_backward, [r.standard_normal((3, 5))], names=["x"])
    elif layer == "layernorm":
        rows = check_backward(lambda x, g, b: F.layernorm_forward(x, g, b, 1e-6), F.layernorm_backward,
                              [r.standard_normal((2, 3, 6)), 1.0 + r.standard_normal(6), r.standard_normal(6)],
                              names=["x", "gamma", "beta"])  # fmt: skip
    else:
        H, W, C = 5, 6, 4
        args = [r.standard_normal((1, H * W, C)), (H, W), r.standard_normal((3 * C, C)) / 2, 0.5 * r.standard_normal(3 * C),
                r.standard_normal((C, C)) / 2, 0.5 * r.standard_normal(C), 2, 4]  # fmt: skip
        rows = check_backward(F.lsa_forward, F.lsa_backward, args, wrt=[0, 2, 3, 4, 5],
                              names=["x", "qkv_w", "qkv_b", "proj_w", "proj_b"])  # fmt: skip
    assert max(row.max_rel_err for row in rows) < TOLERANCES["gradcheck_rel"]


def test_build_and_grade_two_tasks(tmp_path):
    from twins_np.course.build import build
    from twins_np.course.grader import grade
    from twins_np.course.manifest import load_manifest

    tasks = ["gelu_backward", "ffn_backward"]
    where = build(tmp_path / "student", root=ROOT, tasks=tasks, manifest=tmp_path / "m.json")  # freeze and self-check included
    manifest = load_manifest(tmp_path / "m.json")
    ref = tmp_path / "reference"
    for rel in {f for files in where.values() for f in files}:
        (ref / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, ref / rel)
    assert all(r.score == r.points for r in grade(ref, manifest, root=ROOT))
    assert all(r.score == 0.0 for r in grade(tmp_path / "student", manifest, root=ROOT))


@pytest.mark.skipif(shutil.which("bash") is None, reason="tools/short_suite.sh is a bash script")
def test_the_short_suite_runs_on_the_one_python_a_machine_has(tmp_path):
    """`make test` must not fail for want of a second Python: with one supported Python found, the
    short suite runs under it alone and says so (only the choice is run here: --which)."""
    import os
    import subprocess

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    bin_ = tmp_path / "bin"  # a PATH with this Python and the tools the choice uses, nothing else
    bin_.mkdir()
    (bin_ / f"python{version}").symlink_to(sys.executable)
    for tool in ("dirname", "ls", "sort", "tail"):
        (bin_ / tool).symlink_to(shutil.which(tool))
    env = dict(os.environ, PATH=str(bin_), PYENV_ROOT=str(tmp_path / "none"), PYTHON=str(bin_ / f"python{version}"))
    r = subprocess.run([shutil.which("bash"), str(ROOT / "tools" / "short_suite.sh"), "--which"], env=env,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        f"short suite: only Python {version} found here (of 3.11 3.12 3.13 3.14 3.15): it runs under that one alone",
        f"{version} {bin_ / f'python{version}'}",
    ]
