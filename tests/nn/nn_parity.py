"""Helpers shared by the nn parity tests: build a torch module with random parameters,
copy them into twins-np, run both forward and backward, compare.

Error measure: rel = max|ours - timm| / max(max|timm|, floor), per array. The
output and the input gradient use floor = 0 (they are compared to their own scale).
A parameter gradient uses floor = 10 * eps(dtype) * scale / tol, where scale is the
largest parameter-gradient magnitude of the module and tol the tolerance in use: it
is compared to its own scale too, except that one that is zero in theory is held to
an absolute error of 10 units in the last place of the module's largest gradient.
This matters with a single GSA key: the softmax is then constant, q gets an exactly
zero gradient in twins-np and a rounding residue (~1 ulp of the largest gradient) in
torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from twins_np.gradcheck import TOLERANCES

DTYPES = [pytest.param(np.float64, id="f64"), pytest.param(np.float32, id="f32")]
STD = 0.2  # parameter noise: N(0, 0.2), LayerNorm gammas 1 + N(0, 0.2)
FLOOR_ULPS = 10.0


def timm_twins() -> Any:
    """timm's Twins module (and torch), or a clean skip when they are not installed."""
    pytest.importorskip("torch")
    return pytest.importorskip("timm.models.twins")


# ---- parity helpers -------------------------------------------------------------------
def parity_tol(dtype: Any) -> float:
    return TOLERANCES["parity_f64_rel"] if dtype == np.float64 else TOLERANCES["parity_f32_rel"]


def torch_module(m: Any, dtype: Any, seed: int = 0) -> Any:
    """Cast ``m`` to ``dtype`` and overwrite every parameter with seeded noise."""
    torch = pytest.importorskip("torch")
    m = m.to(torch.float64 if dtype == np.float64 else torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            for name, p in mod.named_parameters(recurse=False):
                noise = STD * torch.randn(p.shape, generator=g, dtype=p.dtype)
                is_gamma = isinstance(mod, torch.nn.LayerNorm) and name == "weight"
                p.copy_(1.0 + noise if is_gamma else noise)
    return m


def copy_weights(tm: Any, ours: Any) -> None:
    """Load the torch module's parameters; names, their order and shapes must agree."""
    ref = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    own = ours.state_dict()
    assert list(own) == list(ref), f"parameter names differ:\n ours {list(own)}\n torch {list(ref)}"
    for k, v in ref.items():
        assert own[k].shape == v.shape, f"{k}: ours {own[k].shape}, torch {v.shape}"
    ours.load_state_dict(ref)


def run(
    tm: Any, ours: Any, x: np.ndarray, *args: Any, tcall: Callable | None = None, seed: int = 1
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Forward + backward through both with one random upstream gradient.

    Returns two dicts ``{"out", "dx", "grad <name>"...}``: torch's and ours. A module
    returning ``(tokens, (H, W))`` (PatchEmbed) is compared on the tokens, after
    checking that both report the same size.
    """
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    out_t, out = (tcall or tm)(xt, *args), ours(x, *args)
    if isinstance(out, tuple):
        assert tuple(out[1]) == tuple(out_t[1]), f"output size {out[1]}, torch {out_t[1]}"
        out, out_t = out[0], out_t[0]
    dout = np.random.default_rng(seed).standard_normal(out.shape).astype(x.dtype)
    out_t.backward(torch.tensor(dout))
    dx = ours.backward(dout)
    ref = {"out": out_t.detach().numpy(), "dx": xt.grad.numpy()}
    ref.update({f"grad {k}": p.grad.numpy() for k, p in tm.named_parameters()})
    got = {"out": out, "dx": dx}
    got.update({f"grad {k}": p.grad for k, p in ours.named_parameters()})
    return ref, got


def assert_parity(ref: dict[str, np.ndarray], got: dict[str, Any], dtype: Any) -> None:
    """Every array within the dtype's parity tolerance (see the module docstring)."""
    tol = parity_tol(dtype)
    scale = max(float(np.abs(v).max()) for k, v in ref.items() if k.startswith("grad "))
    floor = FLOOR_ULPS * float(np.finfo(dtype).eps) * scale / tol
    errs = {}
    for k, b in ref.items():
        a = got[k]
        assert a is not None, f"{k}: twins-np has no value (no gradient accumulated?)"
        assert a.shape == b.shape, f"{k}: shape {a.shape}, torch {b.shape}"
        assert a.dtype == dtype, f"{k}: dtype {a.dtype}, expected {np.dtype(dtype)}"
        own = float(np.abs(b).max())
        errs[k] = float(np.abs(a - b).max()) / max(own, floor if k.startswith("grad ") else 0.0, 1e-300)
    bad = {k: f"{e:.2e}" for k, e in errs.items() if not e < tol}
    assert not bad, f"rel errors above {tol:g}: {bad}"


def tokens(B: int, H: int, W: int, C: int, dtype: Any, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((B, H * W, C)).astype(dtype)
