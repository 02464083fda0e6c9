"""Twins as a backbone: forward_intermediates / backward_intermediates and features_only.

Parity with timm (float64, maps, final output, input gradient and every parameter gradient,
relative to each array's scale) uses small architectures built by both libraries from the
same keyword arguments (four stages, SVT with LSA and GSA in every stage), at input sizes
that are not multiples of 32; one case per family runs the real small model. The float64
finite-difference check of the intermediates backward uses a tiny three-stage config.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import twins_np
from twins_np.gradcheck import TOLERANCES, check_module
from twins_np.models import MODEL_CONFIGS, Twins, TwinsFeatures, feature_take_indices
from twins_np.nn import Module

PAPER = ["twins_pcpvt_small", "twins_pcpvt_base", "twins_pcpvt_large", "twins_svt_small", "twins_svt_base", "twins_svt_large"]

# four stages, depths 2 so that every SVT stage has an LSA and a GSA block; sr 8/4/2/1 as the paper
SMALL = {
    "svt": dict(
        patch_size=4,
        embed_dims=(16, 24, 32, 40),
        num_heads=(1, 2, 2, 4),
        mlp_ratios=(2, 2, 2, 2),
        depths=(2, 2, 2, 2),
        sr_ratios=(8, 4, 2, 1),
        wss=(7, 7, 7, 7),
        num_classes=5,
    ),
    "pcpvt": dict(
        patch_size=4,
        embed_dims=(16, 24, 32, 40),
        num_heads=(1, 2, 2, 4),
        mlp_ratios=(2, 2, 2, 2),
        depths=(1, 2, 1, 1),
        sr_ratios=(8, 4, 2, 1),
        num_classes=5,
    ),
}
# three stages on 16 / 8 / 4 tokens per side for a 32x32 image: small enough for finite differences
TINY = dict(
    img_size=32, patch_size=2, embed_dims=(8, 8, 16), num_heads=(1, 2, 2), mlp_ratios=(2, 2, 2), depths=(2, 1, 1),
    sr_ratios=(4, 2, 1), wss=(4, 4, 4), num_classes=3,
)  # fmt: skip

SIZES = [(100, 132), (72, 56)]

# (kwargs, what the combination exercises)
COMBOS = [
    dict(),
    dict(indices=[1, -1], norm=True),
    dict(indices=1, norm=True, intermediates_only=True),
    dict(indices=[0, 2], stop_early=True),
    dict(indices=[2, 0, 0], intermediates_only=True),
    dict(indices=[-3], stop_early=True, intermediates_only=True),
    dict(indices=[1], norm=True, stop_early=True),
    dict(indices=(0, 3), norm=True, stop_early=True),
]


def _rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-300))


def _randomise(tm: Any) -> None:
    """Random biases and LayerNorm affines: zero biases and unit gammas would hide bugs."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for p in tm.parameters():
            if p.ndim == 1:
                p.normal_(0.0, 0.1)


def _timm_twins(kwargs: dict[str, Any]) -> Any:
    import torch
    from timm.models.twins import Twins as TimmTwins

    torch.manual_seed(0)
    tm = TimmTwins(**kwargs).double().eval()
    _randomise(tm)
    return tm


def _ours_like(tm: Any, kwargs: dict[str, Any]) -> Twins:
    ours = Twins(**kwargs, dtype=np.float64).eval()
    ours.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    return ours


def _grads_for(arrays: list[Any], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(a.shape) for a in arrays]


def _compare_grads(tm: Any, ours: Module, errs: dict[str, float]) -> None:
    """Every parameter: same gradient, and no gradient exactly where timm has none."""
    theirs = dict(tm.named_parameters())
    assert list(theirs) == [k for k, _ in ours.named_parameters()]
    for k, p in ours.named_parameters():
        if theirs[k].grad is None:
            assert p.grad is None, f"{k} got a gradient but does not feed any returned output"
            continue
        assert p.grad is not None, f"{k} received no gradient"
        errs[k] = _rel(p.grad, theirs[k].grad.numpy())


def _intermediates_errors(tm: Any, ours: Twins, x: np.ndarray, kw: dict[str, Any], fmt: str = "NCHW") -> dict[str, float]:
    import torch

    only = kw.get("intermediates_only", False)
    xt = torch.tensor(x, requires_grad=True)
    res_t = tm.forward_intermediates(xt, **kw)
    res = ours.forward_intermediates(x, **kw, output_fmt=fmt)
    maps_t, maps = (res_t, res) if only else (res_t[1], res[1])
    assert len(maps) == len(maps_t)
    if fmt == "NHWC":
        maps_t = [m.permute(0, 2, 3, 1) for m in maps_t]
    grads = _grads_for(maps, 1)
    loss = sum((m * torch.tensor(g)).sum() for m, g in zip(maps_t, grads))
    errs = {f"map{k}": _rel(m, mt.detach().numpy()) for k, (m, mt) in enumerate(zip(maps, maps_t))}
    dfinal = None
    if not only:
        assert res[0].shape == tuple(res_t[0].shape)
        errs["final"] = _rel(res[0], res_t[0].detach().numpy())
        dfinal = np.random.default_rng(2).standard_normal(res[0].shape)
        loss = loss + (res_t[0] * torch.tensor(dfinal)).sum()
    loss.backward()
    dx = ours.backward_intermediates(grads, dfinal)
    errs["dx"] = _rel(dx, xt.grad.numpy())
    _compare_grads(tm, ours, errs)
    return errs


def _assert_close(errs: dict[str, float], tol: float) -> None:
    worst = max(errs, key=lambda k: errs[k])
    assert errs[worst] <= tol, f"worst: {worst} rel err {errs[worst]:.3e} (tolerance {tol:g})"


# --- parity with timm -------------------------------------------------------------------


@pytest.mark.parity
@pytest.mark.parametrize("family", ["svt", "pcpvt"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_forward_intermediates_parity_with_timm(family, size):
    """Every combination of indices / norm / stop_early / intermediates_only, maps and gradients."""
    pytest.importorskip("timm")
    kwargs = SMALL[family]
    tm = _timm_twins(kwargs)
    ours = _ours_like(tm, kwargs)
    x = np.random.default_rng(0).standard_normal((2, 3, *size))
    for kw in COMBOS:
        tm.zero_grad(set_to_none=True), ours.zero_grad()
        errs = _intermediates_errors(tm, ours, x, kw)
        worst = max(errs, key=lambda k: errs[k])
        assert errs[worst] <= TOLERANCES["parity_f64_rel"], f"{kw}: worst {worst} rel err {errs[worst]:.3e}"


@pytest.mark.parity
def test_nhwc_maps_are_timm_maps_channels_last():
    pytest.importorskip("timm")
    tm = _timm_twins(SMALL["svt"])
    ours = _ours_like(tm, SMALL["svt"])
    x = np.random.default_rng(0).standard_normal((2, 3, 72, 56))
    for kw in (dict(indices=[0, 3], norm=True), dict(indices=[1, 2], stop_early=True)):
        tm.zero_grad(set_to_none=True), ours.zero_grad()
        _assert_close(_intermediates_errors(tm, ours, x, kw, fmt="NHWC"), TOLERANCES["parity_f64_rel"])


@pytest.mark.parity
@pytest.mark.parametrize(("name", "size"), [("twins_svt_small", (100, 132)), ("twins_pcpvt_small", (72, 56))])
def test_real_small_models_parity_with_timm(name, size):
    pytest.importorskip("timm")
    kwargs = dict(MODEL_CONFIGS[name])
    tm = _timm_twins(kwargs)
    ours = _ours_like(tm, kwargs)
    x = np.random.default_rng(0).standard_normal((1, 3, *size))
    errs = _intermediates_errors(tm, ours, x, dict(norm=True))
    _assert_close(errs, TOLERANCES["parity_f64_rel"])


def _timm_features(name: str, **kw: Any) -> Any:
    import timm
    import torch

    torch.manual_seed(0)
    tm = timm.create_model(name, pretrained=False, features_only=True, **kw).double().eval()
    _randomise(tm)
    return tm


@pytest.mark.parity
@pytest.mark.parametrize(
    ("name", "arch", "out_indices", "size"),
    [
        ("twins_svt_small", {}, (0, 1, 2, 3), (100, 132)),
        ("twins_svt_small", SMALL["svt"], (1, -2), (72, 56)),
        ("twins_pcpvt_small", SMALL["pcpvt"], (0, 1, 2, 3), (100, 132)),
        ("twins_pcpvt_small", SMALL["pcpvt"], (0, 2), (72, 56)),
    ],
)
def test_features_only_parity_with_timm(name, arch, out_indices, size):
    """create_model(features_only=True) against timm's: keys, feature_info, maps and gradients."""
    pytest.importorskip("timm")
    import torch

    tm = _timm_features(name, out_indices=out_indices, **arch)
    ours = twins_np.create_model(name, features_only=True, out_indices=out_indices, dtype=np.float64, **arch)
    assert isinstance(ours, TwinsFeatures)
    assert list(ours.state_dict()) == list(tm.state_dict())
    ours.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    ours.eval()
    assert ours.feature_info.out_indices == tuple(tm.feature_info.out_indices)
    assert ours.feature_info.channels() == tm.feature_info.channels()
    assert ours.feature_info.reduction() == tm.feature_info.reduction()
    assert ours.feature_info.module_name() == tm.feature_info.module_name()

    x = np.random.default_rng(0).standard_normal((2, 3, *size))
    xt = torch.tensor(x, requires_grad=True)
    maps_t = tm(xt)
    maps = ours.forward(x)
    assert [m.shape for m in maps] == [tuple(m.shape) for m in maps_t]
    grads = _grads_for(maps, 1)
    sum((m * torch.tensor(g)).sum() for m, g in zip(maps_t, grads)).backward()
    dx = ours.backward(grads)
    errs = {f"map{k}": _rel(m, mt.detach().numpy()) for k, (m, mt) in enumerate(zip(maps, maps_t))}
    errs["dx"] = _rel(dx, xt.grad.numpy())
    _compare_grads(tm, ours, errs)
    _assert_close(errs, TOLERANCES["parity_f64_rel"])


@pytest.mark.parity
@pytest.mark.parametrize("name", PAPER)
def test_features_only_keys_and_feature_info_equal_timm(name):
    timm = pytest.importorskip("timm")
    tm = timm.create_model(name, pretrained=False, features_only=True, device="meta")
    ours = twins_np.create_model(name, features_only=True)
    assert {k: p.shape for k, p in ours.named_parameters()} == {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    assert list(ours.state_dict()) == list(tm.state_dict())
    assert not any(".head." in k or k.startswith("model.norm.") for k in ours.state_dict())
    fi, ti = ours.feature_info, tm.feature_info
    assert (fi.channels(), fi.reduction(), fi.module_name()) == (ti.channels(), ti.reduction(), ti.module_name())
    assert fi.out_indices == (0, 1, 2, 3) and len(fi) == len(ti) == 4
    assert fi.get_dicts(keys=["num_chs", "reduction"]) == ti.get_dicts(keys=["num_chs", "reduction"])
    assert fi.channels(2) == ti.channels(2) and fi[1]["num_chs"] == ti[1]["num_chs"]


@pytest.mark.parity
@pytest.mark.parametrize("indices", [None, 1, 2, 4, [0], [-1], [3, 1], [1, 1], (-4, 2)])
def test_feature_take_indices_equals_timm(indices):
    from timm.models._features import feature_take_indices as timm_take

    assert feature_take_indices(4, indices) == timm_take(4, indices)


# --- meaning, without torch -------------------------------------------------------------


def test_small_models_feature_info_and_shapes():
    """64/128/256/512 channels at 4/8/16/32 for the small models; map side = input side // reduction."""
    for name, channels in (("twins_svt_small", [64, 128, 256, 512]), ("twins_pcpvt_small", [64, 128, 320, 512])):
        m = twins_np.create_model(name, features_only=True)
        assert m.feature_info.channels() == channels and m.feature_info.reduction() == [4, 8, 16, 32]
        assert m.feature_info.module_name() == ["block.0", "block.1", "block.2", "block.3"]


@pytest.mark.parametrize("name", [n for n in twins_np.list_models() if "teach" in n])
def test_teaching_configs_as_backbones(name):
    """Every teaching config: maps of the reported channels and reduction (patch 2 -> 2/4/8)."""
    m = twins_np.create_model(name, features_only=True, dtype=np.float64)
    s = MODEL_CONFIGS[name]["img_size"]
    x = np.random.default_rng(0).standard_normal((2, 3, s, s))
    maps = m.forward(x)
    fi = m.feature_info
    assert [mp.shape for mp in maps] == [(2, c, s // r, s // r) for c, r in zip(fi.channels(), fi.reduction())]
    dx = m.backward(_grads_for(maps, 1))
    assert dx.shape == x.shape and all(p.grad is not None for p in m.parameters())


def _tiny(**kw: Any) -> Twins:
    return Twins(**{**TINY, **kw}, dtype=np.float64, seed=3).eval()


def test_final_output_and_gradients_equal_forward_features():
    """With no map gradient, backward_intermediates is backward_features: same dx and .grad."""
    m = _tiny()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 40))
    feats = m.forward_features(x)
    d = np.random.default_rng(1).standard_normal(feats.shape)
    dx_ref = m.backward_features(d)
    ref = {k: p.grad.copy() for k, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    final, maps = m.forward_intermediates(x)
    np.testing.assert_array_equal(final, feats)
    dx = m.backward_intermediates([None] * len(maps), d)
    np.testing.assert_array_equal(dx, dx_ref)
    got = {k: p.grad for k, p in m.named_parameters() if p.grad is not None}
    assert got.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


def test_none_gradient_is_a_zero_gradient():
    m = _tiny()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    maps = m.forward_intermediates(x, intermediates_only=True)
    g = _grads_for(maps, 1)
    dx_none = m.backward_intermediates([None, g[1], None])
    grads_none = [p.grad.copy() for p in m.parameters() if p.grad is not None]
    m.zero_grad()
    m.forward_intermediates(x, intermediates_only=True)
    dx_zero = m.backward_intermediates([np.zeros_like(g[0]), g[1], np.zeros_like(g[2])])
    grads_zero = [p.grad for p in m.parameters() if p.grad is not None]
    np.testing.assert_array_equal(dx_none, dx_zero)
    assert len(grads_none) == len(grads_zero)
    for a, b in zip(grads_none, grads_zero):
        np.testing.assert_array_equal(a, b)


def test_indices_select_stages_in_stage_order():
    m = _tiny()
    x = np.random.default_rng(0).standard_normal((1, 3, 36, 44))
    every = m.forward_intermediates(x, intermediates_only=True)
    assert [mp.shape for mp in every] == [(1, 8, 18, 22), (1, 8, 9, 11), (1, 16, 4, 5)]
    for indices, stages in ((None, [0, 1, 2]), (1, [2]), (2, [1, 2]), ([-1, 0], [0, 2]), ([1, 1], [1])):
        maps = m.forward_intermediates(x, indices=indices, intermediates_only=True)
        assert len(maps) == len(stages)
        for mp, s in zip(maps, stages):
            np.testing.assert_array_equal(mp, every[s])
    nhwc = m.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    for a, b in zip(nhwc, every):
        np.testing.assert_array_equal(a, b.transpose(0, 2, 3, 1))


def test_norm_applies_to_the_last_stage_only():
    m = _tiny()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
    plain = m.forward_intermediates(x, intermediates_only=True)
    normed = m.forward_intermediates(x, norm=True, intermediates_only=True)
    np.testing.assert_array_equal(plain[0], normed[0])
    np.testing.assert_array_equal(plain[1], normed[1])
    assert not np.allclose(plain[2], normed[2])
    final, _ = m.forward_intermediates(x)
    np.testing.assert_array_equal(normed[2], final.reshape(1, 4, 4, 16).transpose(0, 3, 1, 2))


def test_returned_maps_are_copies():
    """Editing a returned map in place must not change the backward."""
    m = _tiny()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    maps = m.forward_intermediates(x, intermediates_only=True)
    g = _grads_for(maps, 1)
    dx_ref = m.backward_intermediates(g)
    maps = m.forward_intermediates(x, intermediates_only=True)
    for mp in maps:
        mp *= 100.0
    np.testing.assert_array_equal(m.backward_intermediates(g), dx_ref)


class _Spy:
    """Counts calls of a module's forward and backward (patched on the instance)."""

    def __init__(self, modules: list[Module]) -> None:
        self.calls = 0
        for mod in modules:
            for name in ("forward", "backward"):
                orig = getattr(mod, name)

                def wrapped(*a: Any, _orig: Any = orig, **k: Any) -> Any:
                    self.calls += 1
                    return _orig(*a, **k)

                object.__setattr__(mod, name, wrapped)


def _stage_modules(m: Twins, s: int) -> list[Module]:
    return [m.patch_embeds[s], m.pos_drops[s], m.pos_block[s], *m.blocks[s], m.norm]


@pytest.mark.parametrize("intermediates_only", [False, True])
def test_stop_early_skips_later_stages(intermediates_only):
    """Stage 2 and the norm are neither run nor differentiated; their .grad stays None."""
    m = _tiny()
    late = _Spy(_stage_modules(m, 2))
    early = _Spy(_stage_modules(m, 1)[:-1])
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    out = m.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=intermediates_only)
    maps = out if intermediates_only else out[1]
    dfinal = None if intermediates_only else np.random.default_rng(2).standard_normal(out[0].shape)
    m.backward_intermediates(_grads_for(maps, 1), dfinal)
    assert late.calls == 0 and early.calls > 0
    late_params = {id(p) for mod in _stage_modules(m, 2) for p in mod.parameters()}
    for k, p in m.named_parameters():
        if id(p) in late_params or k.startswith("head."):
            assert p.grad is None, k
        else:
            assert p.grad is not None, k
    # without stop_early every stage runs (timm's meaning), but only the tapped ones get gradients
    m.zero_grad()
    maps = m.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert late.calls > 0
    m.backward_intermediates(_grads_for(maps, 1))
    assert all(p.grad is None for p in m.blocks[2].parameters())


def test_stop_early_accepts_inputs_only_the_early_stages_can_take():
    m = _tiny(sr_ratios=(2, 1, 1))  # stages 0 and 1 take 4x4 images, stage 2 needs 8x8 (one token)
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6))
    maps = m.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    assert maps[0].shape == (1, 8, 1, 1)
    with pytest.raises(ValueError, match="too small"):
        m.forward_intermediates(x, indices=[1], intermediates_only=True)


def test_float32_in_float32_out():
    m = Twins(**TINY, seed=3)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    final, maps = m.forward_intermediates(x, norm=True)
    assert final.dtype == np.float32 and all(mp.dtype == np.float32 for mp in maps)
    dx = m.backward_intermediates([g.astype(np.float32) for g in _grads_for(maps, 1)], None)
    assert dx.dtype == np.float32 and all(p.grad.dtype == np.float32 for p in m.parameters() if p.grad is not None)


def test_pruned_features_model_still_runs_forward():
    f = twins_np.create_model("twins_svt_teach32", features_only=True, out_indices=(0, 1), dtype=np.float64)
    assert len(f.model.blocks) == 2 and f.model.num_classes == 0 and f.model.config["depths"] == (2, 2)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    tokens = f.model.forward(x)  # no head, no norm: the last kept stage's tokens
    maps = f.forward(x)
    np.testing.assert_array_equal(tokens.reshape(2, 8, 8, 64).transpose(0, 3, 1, 2), maps[1])


# --- finite differences ------------------------------------------------------------------


class _Flat(Module):
    """forward_intermediates as one flat output vector (maps, then the final output), for check_module."""

    def __init__(self, model: Twins, **kw: Any) -> None:
        super().__init__()
        self.model = model
        self.kw = kw

    def forward(self, x: Any) -> Any:
        out = self.model.forward_intermediates(x, **self.kw)
        arrays = out if self.kw.get("intermediates_only") else [*out[1], out[0]]
        self.shapes = [a.shape for a in arrays]
        return np.concatenate([a.ravel() for a in arrays])

    def backward(self, dout: Any) -> Any:
        parts, k = [], 0
        for shape in self.shapes:
            n = int(np.prod(shape))
            parts.append(dout[k : k + n].reshape(shape))
            k += n
        if self.kw.get("intermediates_only"):
            return self.model.backward_intermediates(parts)
        return self.model.backward_intermediates(parts[:-1], parts[-1])


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(indices=[0, -1], norm=True),
        dict(indices=[1], stop_early=True),
        dict(indices=[0, 2], intermediates_only=True, output_fmt="NHWC"),
    ],
    ids=["all", "norm", "stop_early", "only_nhwc"],
)
def test_intermediates_backward_gradcheck(kw):
    """float64 directional finite differences for the input and every parameter (< 1e-6)."""
    m = _Flat(_tiny(), **kw)
    x = np.random.default_rng(0).standard_normal((2, 3, 20, 28))
    rows = check_module(m, x, mode="directional", seed=4)
    assert len(rows) == 1 + len(m.parameters())


# --- bad input ----------------------------------------------------------------------------


def test_backward_needs_its_own_forward():
    m = _tiny()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
    with pytest.raises(RuntimeError, match=r"backward_intermediates\(\) needs a forward_intermediates\(\)"):
        m.backward_intermediates([None, None, None])
    maps = m.forward_intermediates(x, intermediates_only=True)
    g = _grads_for(maps, 1)
    with pytest.raises(RuntimeError, match="without a forward"):
        m.backward(np.zeros((1, 3)))  # the classification backward has no forward to use
    m.backward_intermediates(g)
    with pytest.raises(RuntimeError, match="needs a forward_intermediates"):
        m.backward_intermediates(g)  # twice for one forward
    m.forward_intermediates(x, intermediates_only=True)
    m.forward(x)  # a classification forward in between replaces the caches
    with pytest.raises(RuntimeError, match="needs a forward_intermediates"):
        m.backward_intermediates(g)


def test_bad_gradients_are_refused_before_anything_runs():
    m = _tiny()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    final, maps = m.forward_intermediates(x, indices=[0, 2])
    g = _grads_for(maps, 1)
    with pytest.raises(ValueError, match=r"'grads' has 3 entries but forward_intermediates returned 2 maps \(stages \[0, 2\]\)"):
        m.backward_intermediates([*g, g[0]])
    with pytest.raises(ValueError, match=r"'grads\[1\]' must have the shape of the map of stage 2 \(NCHW\) \(2, 16, 4, 4\)"):
        m.backward_intermediates([g[0], g[1].transpose(0, 2, 3, 1)])
    with pytest.raises(ValueError, match=r"'dfinal' must have the shape of the final output \(2, 16, 16\)"):
        m.backward_intermediates(g, np.zeros((2, 16)))
    with pytest.raises(TypeError, match=r"'grads' must be a list"):
        m.backward_intermediates(g[0])
    with pytest.raises(TypeError, match=r"'grads\[0\]' is float32 but the model's parameters are float64"):
        m.backward_intermediates([g[0].astype(np.float32), g[1]])
    assert all(p.grad is None for p in m.parameters())
    m.backward_intermediates(g, None)  # the forward is still there after refused calls
    maps = m.forward_intermediates(x, intermediates_only=True)
    with pytest.raises(ValueError, match=r"'dfinal' was given but forward_intermediates\(intermediates_only=True\)"):
        m.backward_intermediates(_grads_for(maps, 1), np.zeros((2, 16, 16)))


@pytest.mark.parametrize(
    ("indices", "error", "match"),
    [
        (0, ValueError, r"'indices' = 0 asks for the last 0 stages; the model has 3"),
        (4, ValueError, r"'indices' = 4 asks for the last 4 stages; the model has 3"),
        ([3], ValueError, r"'indices' entry 3 is out of range: the model has 3 stages, 0 to 2"),
        ([-4], ValueError, r"'indices' entry -4 is out of range"),
        ([], ValueError, r"'indices' is empty"),
        ("all", TypeError, r"'indices' must be None \(every stage\), an int n"),
        ([1.5], TypeError, r"'indices' entries must be ints"),
        (True, TypeError, r"'indices' must be None"),
    ],
)
def test_bad_indices(indices, error, match):
    m = _tiny()
    with pytest.raises(error, match=match):
        m.forward_intermediates(np.zeros((1, 3, 32, 32)), indices=indices)


def test_bad_output_fmt_and_out_indices():
    m = _tiny()
    with pytest.raises(ValueError, match=r"'output_fmt' must be 'NCHW' \(timm's\) or 'NHWC'"):
        m.forward_intermediates(np.zeros((1, 3, 32, 32)), output_fmt="NLC")
    with pytest.raises(ValueError, match="pass features_only=True"):
        twins_np.create_model("twins_svt_teach32", out_indices=(0, 1))
    with pytest.raises(ValueError, match=r"'indices' entry 3 is out of range"):
        twins_np.create_model("twins_svt_teach32", features_only=True, out_indices=(0, 3))
    f = twins_np.create_model("twins_svt_teach32", features_only=True, dtype=np.float64)
    maps = f.forward(np.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match=r"'grads' has 2 entries but forward_intermediates returned 3 maps"):
        f.backward(_grads_for(maps, 1)[:2])


def test_module_flops_of_a_backbone_is_the_model_without_its_head():
    from twins_np.analysis import count_flops, module_flops

    full = count_flops("twins_svt_small", (100, 132))
    head = sum(r.macs for r in full.rows if r.kind == "head")
    backbone = twins_np.create_model("twins_svt_small", features_only=True)
    assert head > 0 and module_flops(backbone, (100, 132)) == full.total - head
    two = twins_np.create_model("twins_svt_small", features_only=True, out_indices=(0, 1))
    kept = sum(
        r.macs
        for r in full.rows
        if r.name.split(".")[0] in ("patch_embeds", "blocks", "pos_block") and int(r.name.split(".")[1]) < 2
    )
    assert module_flops(two, (100, 132)) == kept


@pytest.mark.gpu
def test_gpu_matches_cpu_and_refuses_host_gradients():
    from twins_np.backend import cupy_available

    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    cpu, gpu = _tiny(), _tiny().to_device("gpu")
    x = np.random.default_rng(0).standard_normal((2, 3, 20, 28))
    final, maps = cpu.forward_intermediates(x, indices=[0, -1], norm=True)
    g, df = _grads_for(maps, 1), np.random.default_rng(2).standard_normal(final.shape)
    dx = cpu.backward_intermediates(g, df)
    final_g, maps_g = gpu.forward_intermediates(twins_np.to_device(x, "gpu"), indices=[0, -1], norm=True)
    with pytest.raises(TypeError, match=r"'grads\[0\]' is on the cpu but the model is on the gpu"):
        gpu.backward_intermediates(g, df)
    dx_g = gpu.backward_intermediates(twins_np.to_device(g, "gpu"), twins_np.to_device(df, "gpu"))
    np.testing.assert_allclose(twins_np.asnumpy(final_g), final, rtol=1e-10, atol=1e-12)
    for a, b in zip(maps_g, maps):
        np.testing.assert_allclose(twins_np.asnumpy(a), b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(twins_np.asnumpy(dx_g), dx, rtol=1e-10, atol=1e-12)
    for (k, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        assert (p.grad is None) == (q.grad is None), k
        if p.grad is not None:
            np.testing.assert_allclose(twins_np.asnumpy(q.grad), p.grad, rtol=1e-9, atol=1e-12, err_msg=k)
