"""Every functional op checks the devices of all its arrays before it computes anything.

One array on the other device, for every array argument of every forward and for the
upstream gradient of every backward: the op must raise twins-np's ``TypeError``, naming the
argument and saying how to move it, before any array is converted or mixed. On a GPU the
alternative is CuPy's own message ("Implicit conversion to a NumPy array is not allowed",
"Unsupported type <class 'numpy.ndarray'>") from somewhere inside the op, which names
nothing the user passed. ``gpu``-marked: the stand-in (``--cupy-standin``) runs it in CI.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import twins_np.functional as F
from twins_np.backend import cupy_available, device_of, to_device

pytestmark = pytest.mark.gpu

TWINS_NP_MESSAGE = re.compile(r"'([\w.\[\]]+)' is a (CuPy \(GPU\)|NumPy \(CPU\)) array but '([\w.\[\]]+)' is a .*to_device\(")


@pytest.fixture(autouse=True)
def _needs_gpu():
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")


def _r(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape)


def _cases() -> dict[str, tuple[Callable[..., Any], Callable[..., Any] | None, dict[str, Any], dict[str, Any]]]:
    """name: (forward, backward or None, array arguments by name, other keyword arguments)."""
    C, B, H, W = 8, 2, 4, 6
    tokens = _r(B, H * W, C)
    maps = _r(B, H, W, C)
    sub = {"sr_params": (_r(C, C, 2, 2), _r(C)), "norm_w": 1.0 + _r(C, seed=1), "norm_b": _r(C, seed=2)}
    return {
        "linear": (F.linear_forward, F.linear_backward, {"x": tokens, "w": _r(4, C), "b": _r(4)}, {}),
        "gelu": (F.gelu_forward, F.gelu_backward, {"x": tokens}, {}),
        "relu": (F.relu_forward, F.relu_backward, {"x": tokens}, {}),
        "softmax": (F.softmax_forward, F.softmax_backward, {"x": tokens}, {}),
        "layernorm": (F.layernorm_forward, F.layernorm_backward, {"x": tokens, "gamma": _r(C), "beta": _r(C)}, {}),
        "mlp": (F.mlp_forward, F.mlp_backward,
                {"x": tokens, "fc1_w": _r(16, C), "fc1_b": _r(16), "fc2_w": _r(C, 16), "fc2_b": _r(C)}, {}),
        "attention": (F.attention_forward, F.attention_backward,
                      {"q": _r(B, 2, 5, 4), "k": _r(B, 2, 7, 4), "v": _r(B, 2, 7, 4)}, {}),
        "attention_masked": (F.attention_forward, F.attention_backward,
                             {"q": _r(B, 2, 5, 4), "k": _r(B, 2, 7, 4), "v": _r(B, 2, 7, 4), "attn_mask": _r(5, 7)}, {}),
        "lsa_masked": (F.lsa_forward, F.lsa_backward,
                       {"x": _r(B, 5 * 7, C), "qkv_w": _r(3 * C, C), "qkv_b": _r(3 * C), "proj_w": _r(C, C), "proj_b": _r(C)},
                       {"size": (5, 7), "num_heads": 2, "ws": 3, "pad_mask": "mmseg"}),
        "corner_pad": (F.corner_pad_forward, F.corner_pad_backward, {"x": _r(B, 5, 7, C)}, {"multiple": 4}),
        "adaptive_avg_pool": (F.adaptive_avg_pool_forward, F.adaptive_avg_pool_backward, {"x": maps}, {"output_size": (3, 2)}),
        "lsa": (F.lsa_forward, F.lsa_backward,
                {"x": tokens, "qkv_w": _r(3 * C, C), "qkv_b": _r(3 * C), "proj_w": _r(C, C), "proj_b": _r(C)},
                {"size": (H, W), "num_heads": 2, "ws": 3}),
        "gsa": (F.gsa_forward, F.gsa_backward,
                {"x": tokens, "q_w": _r(C, C), "q_b": _r(C), "kv_w": _r(2 * C, C), "kv_b": _r(2 * C), "proj_w": _r(C, C),
                 "proj_b": _r(C), **sub},
                {"size": (H, W), "num_heads": 2, "sr_ratio": 2}),
        "peg": (F.peg_forward, F.peg_backward, {"x": tokens, "w": _r(C, 1, 3, 3), "b": _r(C)}, {"size": (H, W)}),
        "depthwise_conv3x3": (F.depthwise_conv3x3_forward, F.depthwise_conv3x3_backward,
                              {"x": maps, "w": _r(C, 1, 3, 3), "b": _r(C)}, {}),
        "conv2d": (F.conv2d_forward, F.conv2d_backward, {"x": _r(B, 7, 9, 3), "w": _r(C, 3, 3, 3), "b": _r(C)},
                   {"stride": 2, "padding": 1}),
        "patch_conv": (F.patch_conv_forward, F.patch_conv_backward, {"x": _r(B, 8, 8, 3), "w": _r(C, 3, 4, 4), "b": _r(C)}, {}),
        "depthwise_patch_conv": (F.depthwise_patch_conv_forward, F.depthwise_patch_conv_backward,
                                 {"x": maps, "w": _r(C, 1, 2, 2), "b": _r(C)}, {}),
        "avg_pool": (F.avg_pool_forward, F.avg_pool_backward, {"x": maps}, {"k": 2}),
        "subsample": (F.subsample_forward, F.subsample_backward, {"x": maps, "params": (_r(C, C, 2, 2), _r(C))},
                      {"mode": "conv", "sr": 2}),
        "group_norm": (F.group_norm_forward, F.group_norm_backward, {"x": maps, "gamma": _r(C), "beta": _r(C)},
                       {"num_groups": 2}),
        "batch_norm": (F.batch_norm_forward, F.batch_norm_backward,
                       {"x": maps, "gamma": _r(C), "beta": _r(C), "running_mean": _r(C), "running_var": 1.0 + _r(C) ** 2},
                       {"training": True}),
        "bilinear_resize": (F.bilinear_resize_forward, F.bilinear_resize_backward, {"x": maps}, {"size": (7, 5)}),
        "nearest_resize": (F.nearest_resize_forward, F.nearest_resize_backward, {"x": maps}, {"size": (7, 5)}),
        "nearest_upsample2x": (F.nearest_upsample2x_forward, F.nearest_upsample2x_backward, {"x": maps}, {}),
        "window_partition": (F.window_partition_forward, F.window_partition_backward, {"x": tokens},
                             {"size": (H, W), "ws": 2}),
        "window_reverse": (F.window_reverse_forward, F.window_reverse_backward, {"win": _r(B, 6, 4, C)},
                           {"size": (H, W), "ws": 2}),
        "dropout": (F.dropout_forward, F.dropout_backward, {"x": tokens, "mask": (_r(*tokens.shape) > 0) * 2.0}, {"p": 0.5}),
        "drop_path": (F.drop_path_forward, F.drop_path_backward, {"x": tokens, "mask": (_r(B) > 0) * 2.0}, {"drop_prob": 0.5}),
        "cross_entropy": (F.cross_entropy_forward, F.cross_entropy_backward,
                          {"logits": _r(B, 5), "target": np.array([1, 4])}, {"label_smoothing": 0.1}),
        "pixel_cross_entropy": (F.pixel_cross_entropy_forward, F.pixel_cross_entropy_backward,
                                {"logits": _r(B, 3, 4, 5), "target": np.array([[[0, 1, 2, 255, 1]] * 4] * B)}, {}),
    }  # fmt: skip


CASES = _cases()
ARGUMENTS = [(op, arg) for op, (_, _, arrays, _) in CASES.items() for arg in arrays]


def test_every_functional_forward_has_a_case():
    """A new op cannot skip these tests: every ``*_forward`` of twins_np.functional is a case."""
    covered = {forward for forward, _, _, _ in CASES.values()}
    missing = sorted(n for n in F.__all__ if n.endswith("_forward") and getattr(F, n) not in covered)
    assert missing == [], f"functional ops without a device-check case: {missing}"


def _place(arrays: dict[str, Any], moved: str, device: str) -> dict[str, Any]:
    """Every array on `device`, except `moved`, which goes to the other one (tuples elementwise)."""
    other = "cpu" if device == "gpu" else "gpu"
    return {k: to_device(v, other if k == moved else device) for k, v in arrays.items()}


def _check_message(err: BaseException, names: set[str]) -> None:
    text = str(err)
    m = TWINS_NP_MESSAGE.search(text)
    assert m, f"not twins-np's device message: {type(err).__name__}: {text}"
    assert {m.group(1), m.group(3)} & names, f"the message names neither of {sorted(names)}: {text}"


# the names an op's message may use for an argument (linear names its weight and bias as nn.Linear does)
ALIASES = {
    **{(op, "w"): {"w", "weight"} for op in ("linear", "conv2d", "depthwise_conv3x3", "patch_conv", "depthwise_patch_conv")},
    **{(op, "b"): {"b", "bias"} for op in ("linear", "conv2d", "depthwise_conv3x3", "patch_conv", "depthwise_patch_conv")},
    ("gsa", "sr_params"): {"sr_w", "sr_b"},
    ("subsample", "params"): {"sr_w", "sr_b"},
}
# caches that hold no array (shapes only): the backward computes on dout's device, nothing to mix
NO_ARRAYS_CACHED = {"avg_pool", "nearest_upsample2x", "window_partition", "window_reverse", "corner_pad"}


@pytest.mark.parametrize("device", ["cpu", "gpu"])
@pytest.mark.parametrize(("op", "arg"), ARGUMENTS, ids=[f"{o}-{a}" for o, a in ARGUMENTS])
def test_forward_names_the_argument_on_the_other_device(op, arg, device):
    forward, _, arrays, kwargs = CASES[op]
    if len(arrays) == 1:
        pytest.skip("a single array cannot be on two devices")
    with pytest.raises(TypeError) as err:
        forward(**_place(arrays, arg, device), **kwargs)
    _check_message(err.value, ALIASES.get((op, arg), {arg}))


@pytest.mark.parametrize("device", ["cpu", "gpu"])
@pytest.mark.parametrize("op", list(CASES))
def test_backward_names_dout_on_the_other_device(op, device):
    forward, backward, arrays, kwargs = CASES[op]
    out, cache = forward(**{k: to_device(v, device) for k, v in arrays.items()}, **kwargs)
    if isinstance(out, float):  # a loss: the upstream gradient is a Python float, on no device
        pytest.skip("a loss's backward takes a float")
    other = "cpu" if device == "gpu" else "gpu"
    dout = to_device(np.random.default_rng(0).standard_normal(tuple(out.shape)), other)
    if op in NO_ARRAYS_CACHED:
        grads = backward(dout, cache)
        assert device_of(grads[0] if isinstance(grads, tuple) else grads) == other
        return
    with pytest.raises(TypeError) as err:
        backward(dout, cache)
    _check_message(err.value, {"dout"})


# --- modules: the input, or the upstream gradient, on the other device than the parameters ---------


def _modules() -> dict[str, tuple[Callable[[], Any], tuple[int, ...], dict[str, Any]]]:
    """name: (constructor, input shape, extra forward arguments); float64 so nothing is cast."""
    from twins_np import nn

    f64 = {"dtype": np.float64}
    return {
        "Linear": (lambda: nn.Linear(8, 4, rng=0, **f64), (2, 5, 8), {}),
        "Mlp": (lambda: nn.Mlp(8, 16, rng=0, **f64), (2, 5, 8), {}),
        "LayerNorm": (lambda: nn.LayerNorm(8, **f64), (2, 5, 8), {}),
        "GroupNorm": (lambda: nn.GroupNorm(2, 8, **f64), (2, 4, 6, 8), {}),
        "BatchNorm2d": (lambda: nn.BatchNorm2d(8, **f64), (2, 4, 6, 8), {}),
        "Conv2d": (lambda: nn.Conv2d(3, 8, 3, padding=1, rng=0, **f64), (2, 5, 7, 3), {}),
        "ConvModule": (lambda: nn.ConvModule(3, 8, 3, padding=1, norm="gn", act=True, num_groups=2, rng=0, **f64),
                       (2, 5, 7, 3), {}),
        "LocallyGroupedAttn": (lambda: nn.LocallyGroupedAttn(8, 2, ws=3, rng=0, **f64), (2, 24, 8), {"size": (4, 6)}),
        "GlobalSubSampleAttn": (lambda: nn.GlobalSubSampleAttn(8, 2, sr_ratio=2, rng=0, **f64), (2, 24, 8), {"size": (4, 6)}),
        "Block": (lambda: nn.Block(8, 2, sr_ratio=2, rng=0, **f64), (2, 24, 8), {"size": (4, 6)}),
        "PatchEmbed": (lambda: nn.PatchEmbed(8, 4, 3, 8, rng=0, **f64), (2, 3, 8, 8), {}),
        "PosConv": (lambda: nn.PosConv(8, 8, rng=0, **f64), (2, 24, 8), {"size": (4, 6)}),
    }  # fmt: skip


MODULES = _modules()


@pytest.mark.parametrize("device", ["cpu", "gpu"])
@pytest.mark.parametrize("name", list(MODULES))
def test_module_refuses_input_and_gradient_on_the_other_device(name, device):
    make, shape, kwargs = MODULES[name]
    other = "cpu" if device == "gpu" else "gpu"
    x = np.random.default_rng(0).standard_normal(shape)
    module = make().to_device(device)
    with pytest.raises(TypeError) as err:
        module(to_device(x, other), **kwargs)
    assert TWINS_NP_MESSAGE.search(str(err.value)), f"{type(err.value).__name__}: {err.value}"
    out = module(to_device(x, device), **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    with pytest.raises(TypeError) as err:
        module.backward(to_device(np.ones(tuple(out.shape)), other))
    _check_message(err.value, {"dout"})


# --- models: a classifier and a segmenter ---------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "gpu"])
@pytest.mark.parametrize("kind", ["classifier", "segmenter"])
def test_model_refuses_input_and_gradient_on_the_other_device(kind, device):
    import twins_np

    other = "cpu" if device == "gpu" else "gpu"
    if kind == "classifier":
        model, size = twins_np.create_model("twins_svt_teach32", num_classes=5, seed=0, dtype=np.float64), 32
    else:
        model, size = twins_np.create_segmenter("twins_svt_teach64_fpn", num_classes=3, seed=0, dtype=np.float64), 64
    model.eval().to_device(device)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size))
    with pytest.raises(TypeError, match=rf"'x' is on the {other} but the model is on the {device}"):
        model(to_device(x, other))
    out = model(to_device(x, device))
    with pytest.raises(TypeError) as err:
        model.backward(to_device(np.ones(tuple(out.shape)), other))
    _check_message(err.value, {"dout"})
