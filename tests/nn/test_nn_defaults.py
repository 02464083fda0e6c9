"""Every twins-np class that mirrors a timm/torch class has that class's constructor defaults.

A standalone ``twins_np.nn.Block(dim, heads)`` must compute what timm's ``Block(dim, heads)``
computes, so each shared argument has the same default, required arguments are required on
both sides, and shared arguments come in the same order (models pass them positionally).
Arguments only one side has are listed below with the reason; a new one fails the test
until it is listed.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import numpy as np
import pytest

import twins_np.nn as tnn
from twins_np.gradcheck import TOLERANCES
from twins_np.models import Twins

pytestmark = pytest.mark.parity

EMPTY = inspect.Parameter.empty

# twins-np class -> (module path, class name) of the class it mirrors
MIRRORS: dict[type, tuple[str, str]] = {
    tnn.Linear: ("torch.nn", "Linear"),
    tnn.LayerNorm: ("torch.nn", "LayerNorm"),
    tnn.Conv2d: ("torch.nn", "Conv2d"),
    tnn.Dropout: ("torch.nn", "Dropout"),
    tnn.Identity: ("torch.nn", "Identity"),
    tnn.ModuleList: ("torch.nn", "ModuleList"),
    tnn.Sequential: ("torch.nn", "Sequential"),
    tnn.DropPath: ("timm.layers", "DropPath"),
    tnn.Mlp: ("timm.layers", "Mlp"),
    tnn.LocallyGroupedAttn: ("timm.models.twins", "LocallyGroupedAttn"),
    tnn.GlobalSubSampleAttn: ("timm.models.twins", "GlobalSubSampleAttn"),
    tnn.PatchEmbed: ("timm.models.twins", "PatchEmbed"),
    tnn.PosConv: ("timm.models.twins", "PosConv"),
    tnn.Block: ("timm.models.twins", "Block"),
    tnn.ReLU: ("torch.nn", "ReLU"),
    tnn.GroupNorm: ("torch.nn", "GroupNorm"),
    tnn.BatchNorm2d: ("torch.nn", "BatchNorm2d"),
    tnn.Upsample: ("torch.nn", "Upsample"),
    tnn.AdaptiveAvgPool2d: ("torch.nn", "AdaptiveAvgPool2d"),
    tnn.Dropout2d: ("torch.nn", "Dropout2d"),
    Twins: ("timm.models.twins", "Twins"),
}

# twins-np classes that mirror no importable class's constructor, and why
NOT_MIRRORED = {
    tnn.ConvModule: "mmcv's ConvModule gives its key layout (conv, gn/bn) only; mmcv configures it with "
    "config dicts (norm_cfg, act_cfg), which have no counterpart here, and is not a test dependency",
}

# arguments only twins-np has, and why
OURS_ONLY = {
    "rng": "NumPy generator or seed for init and dropout (torch uses its global generator)",
    "seed": "the model's seed for rng (torch uses its global generator)",
    "check_finite": "twins-np option: refuse NaN/Inf images",
    "sr_mode": "GSA sub-sampling variants of the paper's Table 9; the default 'conv' is timm's",
    "modules": "Sequential takes a list of modules, as ModuleList does (torch's Sequential takes *args)",
    "padding": "PatchEmbed: 'corner' is mmsegmentation's zero padding to a multiple of the patch; the default 'floor' is timm's",
    "pad_mask": "LSA/Block: mmsegmentation's mask of padded window positions; the default None is timm's (no mask)",
    "patch_padding": "Twins: mmsegmentation's corner padding of the patch embeddings; the default 'floor' is timm's",
    "norm_after_stage": "Twins: mmsegmentation's LayerNorm after every SVT stage; the default False is timm's",
}

# arguments only torch/timm have, and why twins-np does without them
THEIRS_ONLY = {
    "device": "twins-np moves modules with to_device(); arrays carry their device",
    "elementwise_affine": "Twins' LayerNorms are always affine (torch's default True)",
    "bias": "LayerNorm: Twins' LayerNorms always have a bias (torch's default True)",
    "dilation": "Conv2d: Twins' convolutions are not dilated (torch's default 1)",
    "padding_mode": "Conv2d: only zero padding (torch's default 'zeros')",
    "scale_by_keep": "DropPath: always divides by keep, timm's default True",
    "act_layer": "exact GELU, timm's default nn.GELU",
    "norm_layer": "compared as the eps it gives (norm_eps below); Mlp: no norm, timm's default None",
    "use_conv": "Mlp: Linear layers, timm's default False",
    "block_cls": "Twins: the one Block class, timm's default Block",
    "inplace": "Dropout: NumPy dropout never writes into its input (torch's default False)",
    "args": "Identity/Sequential: torch takes modules as *args, twins-np's Sequential a list",
    "kwargs": "Identity: torch ignores any arguments",
    "recompute_scale_factor": "Upsample: a scale_factor maps coordinates with 1 / scale_factor, torch's default (None)",
}

# the same setting under another name: ours -> (theirs, how to read it from their default)
RENAMED = {"norm_eps": ("norm_layer", lambda norm: _eps_of(norm))}

# defaults that are equal though written differently: (ours, theirs)
SAME_DEFAULT = {("dtype", "float32"): "None", ("modules", "None"): "None"}


def _eps_of(norm_layer: Any) -> float:
    """The eps a norm_layer default builds LayerNorms with (nn.LayerNorm or a partial of it)."""
    if isinstance(norm_layer, functools.partial):
        return norm_layer.keywords.get("eps", _eps_of(norm_layer.func))
    return inspect.signature(norm_layer).parameters["eps"].default


def _theirs(cls: type) -> type:
    module, name = MIRRORS[cls]
    return getattr(pytest.importorskip(module), name)


def _params(cls: type) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}


def _norm(value: Any) -> str:
    if isinstance(value, type) and issubclass(value, np.generic):
        return np.dtype(value).name
    return repr(value)


def test_every_module_class_is_mirrored():
    mirrored = {c for c in MIRRORS if c.__module__.startswith("twins_np.nn")}
    exported = [getattr(tnn, n) for n in tnn.__all__]
    classes = {c for c in exported if isinstance(c, type) and issubclass(c, tnn.Module)}
    assert classes - {tnn.Module} - set(NOT_MIRRORED) == mirrored, (
        "a twins_np.nn class without its timm/torch counterpart in MIRRORS (or its reason in NOT_MIRRORED)"
    )


@pytest.mark.parametrize("cls", list(MIRRORS), ids=lambda c: c.__name__)
def test_constructor_defaults_equal_timm_and_torch(cls):
    pytest.importorskip("torch")
    ours, theirs = _params(cls), _params(_theirs(cls))
    problems = []
    for name, p in ours.items():
        if name in RENAMED:
            their_name, read = RENAMED[name]
            want = read(theirs[their_name].default)
            if p.default != want:
                problems.append(f"{name}: {p.default!r}, theirs {their_name} gives {want!r}")
            continue
        if name not in theirs:
            if name not in OURS_ONLY:
                problems.append(f"{name}: only twins-np has it; list it in OURS_ONLY with the reason")
            continue
        a, b = _norm(p.default), _norm(theirs[name].default)
        if (p.default is EMPTY) != (theirs[name].default is EMPTY):
            problems.append(f"{name}: required on one side only (ours {a}, theirs {b})")
        elif a != b and SAME_DEFAULT.get((name, a)) != b:
            problems.append(f"{name}: default {a}, theirs {b}")
    renamed_theirs = {t for n, (t, _) in RENAMED.items() if n in ours}
    for name in theirs:
        if name not in ours and name not in renamed_theirs and name not in THEIRS_ONLY:
            problems.append(f"{name}: only {_theirs(cls).__module__}.{_theirs(cls).__name__} has it; list it in THEIRS_ONLY")
    shared = [n for n in ours if n in theirs]
    if shared != [n for n in theirs if n in ours]:
        problems.append(f"shared arguments in another order: ours {shared}, theirs {[n for n in theirs if n in ours]}")
    assert not problems, f"{cls.__name__} vs {_theirs(cls).__name__}:\n  " + "\n  ".join(problems)


def test_a_standalone_block_with_defaults_equals_timms():
    """The visible consequence: Block(dim, heads) and timm's Block(dim, heads) compute the same thing."""
    torch = pytest.importorskip("torch")
    timm_twins = pytest.importorskip("timm.models.twins")
    torch.manual_seed(0)
    theirs = timm_twins.Block(16, 2, ws=4).double().eval()
    ours = tnn.Block(16, 2, ws=4, dtype=np.float64).eval()
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 20, 16))
    with torch.no_grad():
        ref = theirs(torch.from_numpy(x), (4, 5)).numpy()
    assert np.abs(ours(x, (4, 5)) - ref).max() <= TOLERANCES["parity_f64_rel"] * np.abs(ref).max()
