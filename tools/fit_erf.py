"""Fit the rational erf that twins-np's float32 GELU evaluates on the CPU.

    python tools/fit_erf.py           # print the coefficients and the error they reach

erf is odd, so we fit g(t) = erf(x) / x as a function of t = x^2 on [0, X^2]:

    erf(x) ~= x * P(t) / Q(t),   deg P = 6, deg Q = 5, Q(0) = 1,   |x| <= X = 4

and clamp |x| to X outside (erf(4) = 1 - 1.5e-8 already rounds to 1 in float32).
The fit minimises the largest *relative* error of g (= relative error of erf) on a dense
grid. A rational fit is not linear in its coefficients, so each step solves the
linearised problem  P(t) - g(t) Q(t) ~= 0  by least squares, dividing each row by the
previous Q(t) (Loeb's iteration: the residual then approximates P/Q - g) and by g(t)
(relative error). Lawson's reweighting then moves the least-squares solution toward
the minimax one by raising the weight of the grid points where the error is largest.

The printed coefficients are the constants in :mod:`twins_np.functional.erf`;
``tests/functional/test_f_erf.py`` checks the accuracy they reach there.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

DEG_P, DEG_Q, X = 6, 5, 4.0


def fit(iterations: int = 400) -> tuple[np.ndarray, np.ndarray, float]:
    x = np.linspace(1e-4, X, 20001)
    t = x * x
    g = erf(x) / x
    w = np.full(t.shape, 1.0 / t.size)  # Lawson weights
    q_prev = np.ones_like(t)
    powers_p = t[:, None] ** np.arange(DEG_P + 1)
    powers_q = t[:, None] ** np.arange(1, DEG_Q + 1)
    for _ in range(iterations):
        # unknowns p_0..p_6, q_1..q_5:  sum p_k t^k - g sum_{k>=1} q_k t^k = g
        a = np.concatenate([powers_p, -g[:, None] * powers_q], axis=1)
        scale = np.sqrt(w) / (g * np.abs(q_prev))
        c, *_ = np.linalg.lstsq(a * scale[:, None], g * scale, rcond=None)
        p, q = c[: DEG_P + 1], np.concatenate([[1.0], c[DEG_P + 1 :]])
        q_prev = np.polynomial.polynomial.polyval(t, q)
        err = np.abs(np.polynomial.polynomial.polyval(t, p) / q_prev - g) / g
        w *= err / err.max()
        w /= w.sum()
    return p, q, float(err.max())


def main() -> None:
    p, q, rel = fit()
    np.set_printoptions(precision=17, floatmode="unique")
    print(f"max relative error of erf on [0, {X}] (float64 evaluation): {rel:.2e}")
    print("P (t^0 first):", ", ".join(repr(float(v)) for v in p))
    print("Q (t^0 first):", ", ".join(repr(float(v)) for v in q))
    if np.any(np.polynomial.polynomial.polyval(np.linspace(0, X * X, 10001), q) <= 0):
        raise SystemExit("Q has a root in the interval: the fit is unusable")


if __name__ == "__main__":
    main()
