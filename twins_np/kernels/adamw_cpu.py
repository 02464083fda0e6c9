"""One AdamW update of one parameter on the CPU, one pass over memory: the numba twin of adamw.cu.

    p <- p (1 - lr wd)                            (skipped when wd = 0, as in the twin)
    m <- m + (1 - beta1) (g - m)                  (= beta1 m + (1 - beta1) g, torch's lerp)
    v <- v beta2 + (1 - beta2) g^2
    p <- p - step_size (m / (sqrt(v) / bias_c2_sqrt + eps))

with step_size = lr / (1 - beta1^t) and bias_c2_sqrt = sqrt(1 - beta2^t) computed once in
Python, as in the twin, twins_np.optim.AdamW._update. The twin makes about a dozen passes
over the parameter and its two moment arrays; the loop makes one. Every operation is the
twin's, rounded in the parameter's dtype in the twin's order, so p, m and v get the twin's
bits exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .cpu_common import jit, launch


@jit
def _adamw_update(p: Any, g: Any, m: Any, v: Any, decay: Any, has_decay: bool, one_minus_beta1: Any, beta2: Any,
                  one_minus_beta2: Any, step_size: Any, bias_c2_sqrt: Any, eps: Any, start: int, stop: int) -> None:  # fmt: skip
    """Elements start..stop-1 of the flat arrays, in place; the scalars in p's dtype."""
    p, g, m, v = p[start:stop], g[start:stop], m[start:stop], v[start:stop]
    for i in range(p.size):
        pi, gi = p[i], g[i]
        if has_decay:
            pi = pi * decay
        mi = m[i] + one_minus_beta1 * (gi - m[i])
        vi = v[i] * beta2
        vi = vi + one_minus_beta2 * (gi * gi)
        denom = np.sqrt(vi) / bias_c2_sqrt + eps
        p[i] = pi - step_size * (mi / denom)
        m[i] = mi
        v[i] = vi


def adamw_update(p: Any, g: Any, m: Any, v: Any, *, lr: float, beta1: float, beta2: float, eps: float, wd: float, t: int) -> None:
    """One AdamW step of one parameter, in place in p, m and v (all C-contiguous, one dtype)."""
    for name, a in (("param", p), ("grad", g), ("exp_avg", m), ("exp_avg_sq", v)):
        if not a.flags.c_contiguous or a.dtype != p.dtype:
            raise ValueError(f"adamw_update: '{name}' must be C-contiguous with the parameter's dtype")
    s = p.dtype.type  # Python floats rounded to p's dtype, as NumPy rounds them in the twin
    args = (s(1.0 - lr * wd), wd != 0.0, s(1.0 - beta1), s(beta2), s(1.0 - beta2), s(lr / (1.0 - beta1**t)),
            s(math.sqrt(1.0 - beta2**t)), s(eps))  # fmt: skip
    launch(_adamw_update, p.size, p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), *args)
