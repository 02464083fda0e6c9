"""Every layer passes the float64 finite-difference check, on each available backend."""

import pytest

from twins_np.backend import cupy_available
from twins_np.gradcheck import TOLERANCES
from twins_np.gradcheck_suite import cases

CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_layer_gradcheck_cpu(case):
    rows = case.run("cpu")
    assert rows, "a gradient check must check something"
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_layer_gradcheck_gpu(case):
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    rows = case.run("gpu")
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]
