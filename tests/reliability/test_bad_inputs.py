"""Bad inputs at every public entry point raise a clear ValueError/TypeError.

The cases live in ``tools/bad_input_table.py`` (one list, so docs/reliability.md shows
exactly what is tested here). Each case names the exception a user should get and a
regular expression its message must contain: the argument, what was expected and what
was received. Cases marked with an ``issue`` are known gaps in files outside the
validation layer; they run as strict xfails, so fixing one turns its test red until the
``issue`` is removed and the page regenerated.

A few cases depend on the machine and are tested here only: torch tensors as input
(needs torch), NumPy/CuPy mixing (needs a GPU) and ``gradcheck --device gpu`` without one.
"""

from __future__ import annotations

import pathlib
import re
import sys

import numpy as np
import pytest

import twins_np
import twins_np.functional as F
from twins_np.backend import cupy_available
from twins_np.cli import main as cli_main

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import bad_input_table as table  # noqa: E402


def _params(cases):
    out = []
    for c in cases:
        marks = [pytest.mark.xfail(strict=True, reason=c.issue)] if c.issue else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


API_CASES = [c for c in table.CASES if c.argv is None]
CLI_CASES = [c for c in table.CASES if c.argv is not None]


@pytest.mark.parametrize("case", _params(API_CASES))
def test_api_refuses_bad_input(case):
    assert case.run is not None
    if case.expect is None:  # handled without an error: what it did is described by the returned text
        result = case.run()
        assert re.search(case.match, result), result
        return
    with pytest.raises(case.expect, match=case.match):
        case.run()


@pytest.mark.parametrize("case", _params(CLI_CASES))
def test_cli_exits_2_with_message_on_stderr(case):
    """``main`` returns 2 for its own errors and for argparse's (it never raises SystemExit);
    one line on stderr says what is wrong (a case may name another status, e.g. 1 for a NaN stop)."""
    assert case.expect is None
    rc, err = table.run_cli(case.argv, case.files)
    assert rc == case.status
    assert re.search(case.match, err), err
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    if case.status == 2:
        assert re.match(r"twins-np( \w+)?: error: ", last), f"stderr does not end with 'twins-np <command>: error: ...': {last!r}"
    assert "Traceback" not in err and "Warning:" not in err


def test_every_functional_forward_has_a_case():
    """A new op in twins_np.functional needs a bad-input case in the table."""
    forwards = {n for n in F.__all__ if n.endswith("_forward")}
    covered = {c.entry.removeprefix("F.") for c in table.CASES}
    assert forwards <= covered, f"no bad-input case for {sorted(forwards - covered)}"


def test_page_is_up_to_date():
    assert table.PAGE.exists(), "docs/reliability.md is missing: run python tools/bad_input_table.py"
    assert table.PAGE.read_text() == table.render(), "docs/reliability.md is out of date: run python tools/bad_input_table.py"


def test_table_cell_escaping():
    """Pipes would split a Markdown cell, backticks would end the code span."""
    assert table._cell("a | b `c`\n  d") == "a \\| b 'c' d"
    assert table._cell("x" * 1000).endswith("...") and len(table._cell("x" * 1000)) == table.MAX_MESSAGE


# --- machine-dependent cases: not in the table ----------------------------------------------


@pytest.mark.parity
def test_torch_tensor_input_is_refused_by_name():
    torch = pytest.importorskip("torch")
    model = twins_np.create_model("twins_svt_teach32").eval()
    with pytest.raises(TypeError, match=r"'x' must be an array \(NumPy or CuPy\), got a torch.Tensor of dtype torch.float32"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(TypeError, match=r"torch.bfloat16; convert it first, e.g. tensor.detach\(\).cpu\(\).float\(\).numpy\(\)"):
        F.softmax_forward(torch.zeros(2, 3, dtype=torch.bfloat16))


def test_gradcheck_on_gpu_without_gpu_exits_2(capsys):
    if cupy_available():
        pytest.skip("this machine has a GPU")
    assert cli_main(["gradcheck", "--device", "gpu"]) == 2
    assert re.search(r"twins-np gradcheck: error: --device gpu needs CuPy and a CUDA GPU", capsys.readouterr().err)


@pytest.mark.gpu
def test_numpy_and_cupy_mixed_in_an_op_is_a_type_error():
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    import cupy

    x = np.ones((2, 3), np.float32)
    w = cupy.ones((4, 3), cupy.float32)
    with pytest.raises(TypeError, match=r"'weight' is a CuPy \(GPU\) array but 'x' is a NumPy \(CPU\) array.*to_device"):
        F.linear_forward(x, w)


@pytest.mark.gpu
def test_model_on_gpu_refuses_a_numpy_image():
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    model = twins_np.create_model("twins_svt_teach32").eval().to_device("gpu")
    with pytest.raises(TypeError, match=r"'x' is on the cpu but the model is on the gpu.*to_device\(x, 'gpu'\)"):
        model(np.zeros((1, 3, 32, 32), np.float32))
