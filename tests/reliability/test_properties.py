"""Property-based tests of LSA, GSA, the PEG and the Block over random shapes (hypothesis).

Shapes: B in 1..3, H and W in 1..12, C in {4, 8, 12, 16} with a number of heads dividing
C, LSA window ws in 2..5 (maps smaller than a window are padded, as timm does), GSA
sub-sampling sr in 1..min(4, H, W). Every parameter is redrawn at random before a check
(zero biases and unit LayerNorm gammas would hide bugs).

Properties:
- output shapes equal the input's (B, H*W, C), for every module;
- the backward agrees with finite differences along a random direction (float64,
  ``check_module(mode="directional")``, ``TOLERANCES["gradcheck_rel"]``), for the input and
  every parameter;
- LSA and GSA match timm in float64 (output, input gradient, every parameter gradient),
  ``TOLERANCES["parity_f64_rel"]``.

``derandomize=True`` (and no example database) makes hypothesis draw the same examples on every
run (reproducible CI); ``max_examples=15`` bounds the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from twins_np.gradcheck import TOLERANCES, check_module, format_table
from twins_np.nn import Block, GlobalSubSampleAttn, LocallyGroupedAttn, Module, PosConv

# hypothesis is a dev tool: a student copy run with pytest alone skips this file instead of failing to collect it
hypothesis = pytest.importorskip("hypothesis")
given, settings, st = hypothesis.given, hypothesis.settings, hypothesis.strategies

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None)


@dataclass(frozen=True)
class Shape:
    B: int
    H: int
    W: int
    C: int
    heads: int
    ws: int
    sr: int


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    H, W = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    C = draw(st.sampled_from([4, 8, 12, 16]))
    heads = draw(st.sampled_from([h for h in range(1, C + 1) if C % h == 0]))
    return Shape(
        B=draw(st.integers(1, 3)),
        H=H,
        W=W,
        C=C,
        heads=heads,
        ws=draw(st.integers(2, 5)),
        sr=draw(st.integers(1, min(4, H, W))),
    )


def _randomize(module: Module, seed: int) -> Module:
    """Draw every parameter at random, in float64: weights ~ N(0, 0.3^2), 1-D ones ~ N(0, 0.5^2) (+1 for gammas)."""
    rng = np.random.default_rng(seed)
    module.astype(np.float64)
    for name, p in module.named_parameters():
        scale = 0.5 if p.data.ndim == 1 else 0.3
        values = scale * rng.standard_normal(p.shape)
        if name.endswith("norm.weight") or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
            values += 1.0
        p.data = values
    return module


def _tokens(s: Shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((s.B, s.H * s.W, s.C))


def _modules(s: Shape) -> dict[str, Module]:
    return {
        "lsa": LocallyGroupedAttn(s.C, s.heads, ws=s.ws, rng=0),
        "gsa": GlobalSubSampleAttn(s.C, s.heads, sr_ratio=s.sr, rng=0),
        "peg": PosConv(s.C, s.C, rng=0),
        "block_lsa": Block(s.C, s.heads, mlp_ratio=2.0, ws=s.ws, rng=0),
        "block_gsa": Block(s.C, s.heads, mlp_ratio=2.0, sr_ratio=s.sr, ws=1, rng=0),
    }


@SETTINGS
@given(shapes())
def test_output_shape_and_dtype_equal_the_input(s: Shape):
    for dtype in (np.float32, np.float64):
        x = _tokens(s).astype(dtype)
        for name, m in _modules(s).items():
            m.astype(dtype)
            out = m(x, (s.H, s.W))
            assert out.shape == x.shape, f"{name}: {out.shape} != {x.shape} for {s}"
            assert out.dtype == dtype, f"{name}: {out.dtype} for a {np.dtype(dtype)} input"
            dx = m.backward(np.ones_like(out))
            assert dx.shape == x.shape and dx.dtype == dtype, f"{name} backward: {dx.shape} {dx.dtype}"


def _directional(module: Module, s: Shape) -> None:
    """check_module along one random direction per input and per parameter, float64.

    Error per input: |numeric - analytic| / max(|numeric|, |analytic|, floor), where
    numeric and analytic are the directional derivatives and floor = 1e-6 times the
    largest directional derivative of the module (over x and every parameter). The
    floor only matters where the derivative vanishes in theory: with a single GSA key
    (H//sr * W//sr = 1) the softmax is constant and q gets an exactly zero gradient,
    while the finite difference returns rounding noise (~1e-14: NumPy's summation
    order depends on memory alignment, so two evaluations of the same sum can differ
    in the last bit). check_module itself has no floor, so it runs with an infinite
    tolerance here and the rows are judged below with TOLERANCES["gradcheck_rel"].
    """
    _randomize(module, seed=s.H * 100 + s.W)
    rows = check_module(module, _tokens(s), (s.H, s.W), mode="directional", tol=math.inf, seed=3)
    floor = 1e-6 * max(max(abs(r.numeric), abs(r.analytic)) for r in rows)
    tol = TOLERANCES["gradcheck_rel"]
    errs = {r.name: abs(r.numeric - r.analytic) / max(abs(r.numeric), abs(r.analytic), floor) for r in rows}
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, f"{s}: directional gradient errors above {tol:g}: {bad}\n" + format_table(rows, tol, seed=3)


@SETTINGS
@given(shapes())
def test_lsa_directional_gradients(s: Shape):
    _directional(LocallyGroupedAttn(s.C, s.heads, ws=s.ws, rng=0), s)


@SETTINGS
@given(shapes())
def test_gsa_directional_gradients(s: Shape):
    _directional(GlobalSubSampleAttn(s.C, s.heads, sr_ratio=s.sr, rng=0), s)


@SETTINGS
@given(shapes())
def test_peg_directional_gradients(s: Shape):
    _directional(PosConv(s.C, s.C, rng=0), s)


@SETTINGS
@given(shapes(), st.booleans())
def test_block_directional_gradients(s: Shape, lsa: bool):
    ws = s.ws if lsa else 1
    _directional(Block(s.C, s.heads, mlp_ratio=2.0, sr_ratio=s.sr, ws=ws, rng=0), s)


# --- parity with timm -------------------------------------------------------------------------


def _parity(ours: Module, theirs, s: Shape) -> None:
    """Output, dx and every parameter gradient of ours vs timm's module, float64.

    Error: max|ours - timm| / max(max|timm|, floor), floor = 1e-6 times the largest
    gradient magnitude of the module (over dx and every parameter). The floor only
    matters for gradients that vanish in theory: with a single GSA key (H//sr * W//sr
    = 1) the softmax is constant, so q gets exactly zero gradient in twins-np and a
    rounding residue (~1e-18) in torch; with the floor such an array must still agree
    to ~1e-16 of the module's gradient scale.
    """
    torch = pytest.importorskip("torch")
    _randomize(ours, seed=s.B + 10 * s.C)
    theirs = theirs.double()
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
    x = _tokens(s)
    dout = np.random.default_rng(2).standard_normal(x.shape)

    xt = torch.tensor(x, requires_grad=True)
    out_t = theirs(xt, (s.H, s.W))
    out_t.backward(torch.from_numpy(dout))
    ref = {"out": out_t.detach().numpy(), "x": xt.grad.numpy()}
    ref.update({k: p.grad.numpy() for k, p in theirs.named_parameters()})

    ours.zero_grad()
    got = {"out": ours(x, (s.H, s.W)), "x": ours.backward(dout)}
    got.update({k: p.grad for k, p in ours.named_parameters()})

    assert set(got) == set(ref)
    floor = 1e-6 * max(float(np.abs(v).max()) for k, v in ref.items() if k != "out")
    errs = {k: float(np.abs(got[k] - ref[k]).max() / max(float(np.abs(ref[k]).max()), floor)) for k in ref}
    worst = max(errs, key=lambda k: errs[k])
    assert errs[worst] < TOLERANCES["parity_f64_rel"], f"{s}: worst {worst} rel err {errs[worst]:.3e}"


@pytest.mark.parity
@SETTINGS
@given(shapes())
def test_lsa_matches_timm(s: Shape):
    pytest.importorskip("torch")
    twins = pytest.importorskip("timm.models.twins")
    _parity(LocallyGroupedAttn(s.C, s.heads, ws=s.ws, rng=0), twins.LocallyGroupedAttn(s.C, s.heads, ws=s.ws), s)


@pytest.mark.parity
@SETTINGS
@given(shapes())
def test_gsa_matches_timm(s: Shape):
    pytest.importorskip("torch")
    twins = pytest.importorskip("timm.models.twins")
    _parity(GlobalSubSampleAttn(s.C, s.heads, sr_ratio=s.sr, rng=0), twins.GlobalSubSampleAttn(s.C, s.heads, sr_ratio=s.sr), s)
