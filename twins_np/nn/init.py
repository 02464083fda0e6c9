"""Weight initialisation as timm's ``Twins._init_weights``, from an explicit generator.

- Linear: weight ~ truncated normal(0, 0.02) cut at +-2 (absolute, so effectively a
  plain normal at this std), bias = 0.
- LayerNorm: weight = 1, bias = 0.
- Conv2d: weight ~ normal(0, sqrt(2 / fan_out)), fan_out = k*k*C_out / groups; bias = 0.

All draws happen on the host in float64 and are cast, so one seed gives the same
model on every backend and dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# what a module's ``rng`` argument takes: a generator, a seed, or None (seed 0)
Rng = np.random.Generator | int | None


def trunc_normal(
    rng: np.random.Generator, shape: tuple[int, ...], std: float = 0.02, a: float = -2.0, b: float = 2.0
) -> np.ndarray:
    """Normal(0, std) samples redrawn until they lie in [a, b] (absolute bounds, as timm)."""
    out = rng.standard_normal(shape) * std
    bad = (out < a) | (out > b)
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum())) * std
        bad = (out < a) | (out > b)
    return out


def conv_normal(rng: np.random.Generator, shape: tuple[int, ...], groups: int = 1) -> np.ndarray:
    """Normal(0, sqrt(2 / fan_out)) for a conv weight (C_out, C_in/groups, kh, kw)."""
    c_out, _, kh, kw = shape
    fan_out = kh * kw * c_out // groups
    return rng.standard_normal(shape) * math.sqrt(2.0 / fan_out)


def as_dtype(a: np.ndarray, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype)
