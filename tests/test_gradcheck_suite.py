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


def test_run_all_reports_any_error_and_goes_on(monkeypatch):
    # a TypeError (e.g. host and device arrays mixed) in one case must not end the table
    import twins_np.gradcheck_suite as suite
    from twins_np.gradcheck_suite import Case

    def broken(device):
        raise TypeError("'labels' is a NumPy (CPU) array but 'logits' is a CuPy (GPU) array")

    keep = CASES[1]
    monkeypatch.setattr(suite, "cases", lambda: [Case("broken", broken), keep])
    results = suite.run_all("cpu", progress=False)
    assert [r[0] for r in results] == ["broken", keep.name]
    assert results[0][1] is None and results[0][2].startswith("TypeError: 'labels' is a NumPy")
    assert results[1][1] and results[1][2] is None
