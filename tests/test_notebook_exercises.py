"""The instructor's solutions to the notebooks' coded exercises (stripped from a student copy).

Each solution is taken from the jupytext source, between its ``# BEGIN SOLUTION`` markers,
by executing the cell that defines the exercise's functions, and checked like any layer.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

from twins_np import functional as F
from twins_np.gradcheck import check_backward

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def _exercise(notebook: str, task: str) -> dict:
    """The functions of the notebook cell holding ``task``'s solution, defined in a fresh namespace."""
    text = (NOTEBOOKS / notebook).read_text()
    cell = next(c for c in re.split(r"^# %%.*$", text, flags=re.M) if f"# BEGIN SOLUTION {task}" in c)
    defs = cell.split("\ntry:")[0]  # the functions, not the cell's own check
    ns: dict = {"np": np, "F": F}
    exec(compile(defs, f"{notebook}:{task}", "exec"), ns)
    return ns


def test_nb01_the_wrong_softmax_backward_is_caught_by_a_random_dout():
    ns = _exercise("01_backend_and_gradcheck.py", "nb01_wrong_softmax")
    x = np.random.default_rng(0).standard_normal((3, 5))
    y, cache = F.softmax_forward(x)
    dout = np.random.default_rng(1).standard_normal((3, 5))
    assert np.allclose(ns["my_wrong_softmax_backward"](dout, cache), dout - (dout * y).sum(-1, keepdims=True))
    with pytest.raises(AssertionError):
        check_backward(F.softmax_forward, ns["my_wrong_softmax_backward"], [x], names=["x"])


def test_nb02_rmsnorm():
    ns = _exercise("02_layernorm_gelu_ffn.py", "nb02_rmsnorm")
    rng = np.random.default_rng(0)
    check_backward(ns["rmsnorm_forward"], ns["rmsnorm_backward"], [rng.standard_normal((3, 6)), 1.0 + rng.standard_normal(6)],
                   names=["x", "gamma"])  # fmt: skip


def test_nb03_attention_backward_from_the_formulas():
    ns = _exercise("03_attention_core.py", "nb03_attention")
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 2, 7, 4)), rng.standard_normal((2, 2, 7, 4))
    check_backward(
        lambda q_, k_, v_: F.attention_forward(q_, k_, v_), ns["my_attention_backward"], [q, k, v], names=["q", "k", "v"]
    )


def test_nb04_masked_lsa():
    ns = _exercise("04_lsa_windows.py", "nb04_masked_lsa")
    rng = np.random.default_rng(0)
    B, H, W, C, heads, ws = 1, 5, 6, 8, 2, 4
    x = rng.standard_normal((B, H * W, C))
    weights = [
        0.3 * rng.standard_normal((3 * C, C)),
        rng.standard_normal(3 * C),
        0.3 * rng.standard_normal((C, C)),
        rng.standard_normal(C),
    ]
    args = [x, (H, W), *weights, heads, ws]
    check_backward(ns["masked_lsa_forward"], ns["masked_lsa_backward"], args, wrt=[0, 2, 3, 4, 5])
    # padded keys get no attention; without padding the mask changes nothing
    _, cache = ns["masked_lsa_forward"](*args)
    assert (cache[5].y[0, -1, :, :, -1] == 0).all()  # last window's last slot is padding
    x8 = rng.standard_normal((B, 64, C))
    ours, _ = ns["masked_lsa_forward"](x8, (8, 8), *weights, heads, ws)
    assert np.allclose(ours, F.lsa_forward(x8, (8, 8), *weights, heads, ws)[0], rtol=1e-12, atol=1e-12)


def test_nb05_average_pooling():
    ns = _exercise("05_gsa_and_peg.py", "nb05_avgpool")
    x = np.random.default_rng(0).standard_normal((2, 7, 5, 3))
    out, _ = ns["avgpool_forward"](x, 2)
    assert out.shape == (2, 3, 2, 3) and np.allclose(out[0, 0, 0], x[0, :2, :2].mean(axis=(0, 1)))
    check_backward(ns["avgpool_forward"], ns["avgpool_backward"], [x, 2], wrt=[0], names=["x"])
