"""Random inputs for the LSA and GSA tests, and a GSA call from a parameter dict.

Shared by tests/functional/test_f_lsa.py, tests/functional/test_f_gsa.py and the
instructor-only tests/hidden/test_recipes.py (tests/ is on sys.path: the rootdir conftest).
"""

from __future__ import annotations

import math

import numpy as np

from twins_np import functional as F


def lsa_params(seed: int, B: int, H: int, W: int, C: int):
    """x (B, H*W, C) and random qkv/proj weights and biases (biases nonzero: padded keys are the bias)."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((B, H * W, C))
    qkv_w = r.standard_normal((3 * C, C)) / math.sqrt(C)
    qkv_b = 0.5 * r.standard_normal(3 * C)
    proj_w = r.standard_normal((C, C)) / math.sqrt(C)
    proj_b = 0.5 * r.standard_normal(C)
    return x, qkv_w, qkv_b, proj_w, proj_b


def gsa_params(seed: int, B: int, H: int, W: int, C: int, sr: int) -> dict:
    """x and every GSA weight, random; gamma around 1 (not 1), biases nonzero."""
    r = np.random.default_rng(seed)
    s = 1.0 / math.sqrt(C)
    p = {
        "x": r.standard_normal((B, H * W, C)),
        "q_w": s * r.standard_normal((C, C)),
        "q_b": 0.5 * r.standard_normal(C),
        "kv_w": s * r.standard_normal((2 * C, C)),
        "kv_b": 0.5 * r.standard_normal(2 * C),
        "proj_w": s * r.standard_normal((C, C)),
        "proj_b": 0.5 * r.standard_normal(C),
    }
    if sr > 1:
        p["sr_w"] = s / sr * r.standard_normal((C, C, sr, sr))
        p["sr_b"] = 0.5 * r.standard_normal(C)
        p["norm_w"] = 1.0 + 0.3 * r.standard_normal(C)
        p["norm_b"] = 0.5 * r.standard_normal(C)
    return p


def gsa_call(p: dict, size, heads: int, sr: int, dtype=None, xp=np):
    """F.gsa_forward on the inputs of :func:`gsa_params`, cast to dtype and moved to xp."""

    def cast(a):
        if not isinstance(a, np.ndarray):  # already on the GPU (the mixed-device test): leave it there
            return a
        return xp.asarray(a if dtype is None else a.astype(dtype))

    kw = {k: cast(v) for k, v in p.items() if k != "x"}
    sub = {"sr_params": (kw.pop("sr_w"), kw.pop("sr_b"))} if "sr_w" in kw else {}
    return F.gsa_forward(cast(p["x"]), size, num_heads=heads, sr_ratio=sr, **kw, **sub)
