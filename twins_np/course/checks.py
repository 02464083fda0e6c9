"""How each task is checked: its cases, drawn from a seed, and the outputs compared.

Runs only on the trusted side (:mod:`twins_np.course.reference`): a case's inputs are drawn
from the grading run's secret seed (values, and shapes within ranges), its inputs made with
the library's forward passes (the caches a backward receives), and the reference solution's
outputs on them are what the student's outputs are compared with. Every case checks values;
no output of any case is all zeros, so zeros of the right shape pass nothing.

A check is one output of one case ("float64: dx"); its name does not depend on the seed, so
the manifest can list the checks and an instructor can hide some (``assignment.toml``).
Sizes are chosen so the reference takes about a millisecond per case or more: every case is
timed, and a student's code may take at most ``time_factor`` times the reference's time
(plus a small slack) on each. A finite-difference "gradient" needs one or two forward passes
per input element (or, exploiting independent rows, per channel), hundreds of times the
reference's time at these sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import functional as F
from ..functional.subsample import SUBSAMPLE_PARAMS

__all__ = ["CASES", "Case", "cases"]

_F = "twins_np.functional."


@dataclass
class Case:
    """One call of the code under test, and the outputs to compare.

    Attributes:
        name: the seed-independent part of each check's name ("float64, 3-D input").
        fn: ``"module:function"`` called (``form="call"``), or the optimizer class.
        args, kwargs: the inputs (arrays, the library's caches, numbers).
        outputs: output name -> where it sits in the returned value (indices into tuples).
        form: how the call is made (see :func:`twins_np.course.wire.perform`).
        exact: outputs must be equal, not close (data movement, no arithmetic).
        describe: the inputs' shapes and dtype, for feedback.
    """

    name: str
    fn: str
    args: tuple[Any, ...]
    outputs: Mapping[str, tuple[int, ...]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    form: str = "call"
    exact: bool = False
    describe: str = ""


def _normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _shape(a: Any) -> str:
    return str(tuple(int(n) for n in a.shape))


def _desc(dtype: Any, **arrays: Any) -> str:
    return ", ".join(f"{k} {_shape(v)}" for k, v in arrays.items()) + f", {np.dtype(dtype).name}"


def _pick(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


# --- the tasks ---------------------------------------------------------------------------


def _gelu(rng: np.random.Generator) -> list[Case]:
    out = []
    for name, dtype, ndim in (("float64, 3-D input", np.float64, 3), ("float64, 1-D input", np.float64, 1),
                              ("float32", np.float32, 3)):  # fmt: skip
        shape = (_pick(rng, 2, 4), _pick(rng, 150, 260), _pick(rng, 96, 160)) if ndim == 3 else (_pick(rng, 60000, 90000),)
        x = _normal(rng, shape, np.float64, 2.5)
        tails = rng.choice(x.size, x.size // 50, replace=False)  # far into both tails, where Phi and phi are tiny
        x.flat[tails] = rng.choice([-1.0, 1.0], tails.size) * rng.uniform(4.0, 9.0, tails.size)
        x = x.astype(dtype)
        _, cache = F.gelu_forward(x)
        dout = _normal(rng, shape, dtype)
        out.append(Case(name, _F + "activation:gelu_backward", (dout, cache), {"dx": ()}, describe=_desc(dtype, x=x)))
    return out


def _layernorm(rng: np.random.Generator) -> list[Case]:
    out = []
    for name, dtype, lead in (("float64, (B, N, C) input", np.float64, (_pick(rng, 4, 6), _pick(rng, 196, 260))),
                              ("float64, (N, C) input", np.float64, (_pick(rng, 900, 1400),)),
                              ("float32", np.float32, (_pick(rng, 4, 6), _pick(rng, 196, 260)))):  # fmt: skip
        C = _pick(rng, 320, 448)  # wide rows: differences over each channel of all rows at once cost 2C passes
        x = _normal(rng, (*lead, C), dtype, 3.0) + dtype(rng.uniform(-2, 2))
        gamma, beta = _normal(rng, (C,), dtype) + dtype(1.0), _normal(rng, (C,), dtype)
        _, cache = F.layernorm_forward(x, gamma, beta, eps=float(rng.choice([1e-5, 1e-6])))
        dout = _normal(rng, x.shape, dtype)
        out.append(Case(name, _F + "layernorm:layernorm_backward", (dout, cache), {"dx": (0,), "dgamma": (1,), "dbeta": (2,)},
                        describe=_desc(dtype, x=x)))  # fmt: skip
    return out


def _attention(rng: np.random.Generator) -> list[Case]:
    out = []
    for name, dtype, drop in (("float64", np.float64, 0.0), ("float64 with attention dropout", np.float64, 0.2),
                              ("float32", np.float32, 0.0)):  # fmt: skip
        B, heads, hd = _pick(rng, 1, 2), _pick(rng, 2, 4), _pick(rng, 16, 40)
        Nq, Nk = _pick(rng, 150, 220), _pick(rng, 130, 200)
        q, k, v = (_normal(rng, (B, heads, n, hd), dtype) for n in (Nq, Nk, Nk))
        gen = np.random.default_rng(int(rng.integers(2**31)))
        _, cache = F.attention_forward(q, k, v, attn_drop=drop, rng=gen, training=drop > 0)
        dout = _normal(rng, q.shape, dtype)
        out.append(Case(f"attention core, {name}", _F + "attention:attention_backward", (dout, cache),
                        {"dq": (0,), "dk": (1,), "dv": (2,)}, describe=_desc(dtype, q=q, k=k)))  # fmt: skip
    for name, axis in (("softmax over the last axis", -1), ("softmax over axis 1", 1)):
        shape = (_pick(rng, 2, 3), _pick(rng, 130, 200), _pick(rng, 130, 200))
        x = _normal(rng, shape, np.float64, 3.0)
        _, sm_cache = F.softmax_forward(x, axis=axis)
        dout = _normal(rng, shape, np.float64)
        out.append(Case(name, _F + "softmax:softmax_backward", (dout, sm_cache), {"dx": ()}, describe=_desc(np.float64, x=x)))
    return out


def _windows(rng: np.random.Generator) -> list[Case]:
    out = []
    for name, pad in (("map not divisible by ws", True), ("map divisible by ws", False)):
        ws = _pick(rng, 3, 7)
        H, W = (_pick(rng, 3, 6) * ws for _ in range(2))
        if pad:
            H, W = H + _pick(rng, 1, ws - 1), W + _pick(rng, 1, ws - 1)
        B, C = _pick(rng, 1, 3), _pick(rng, 24, 64)
        x = _normal(rng, (B, H * W, C), np.float64)
        win, cache = F.window_partition_forward(x, (H, W), ws)
        d = _desc(np.float64, x=x) + f", ws {ws}"
        out.append(Case(f"partition, {name}", _F + "windows:window_partition_forward", (x, (H, W), ws),
                        {"windows": (0,)}, exact=True, describe=d))  # fmt: skip
        other = _normal(rng, win.shape, np.float64)
        out.append(Case(f"reverse, {name}", _F + "windows:window_reverse_forward", (other, (H, W), ws), {"x": (0,)},
                        exact=True, describe=d))  # fmt: skip
        out.append(Case(f"partition backward, {name}", _F + "windows:window_partition_backward", (other, cache), {"dx": ()},
                        exact=True, describe=d))  # fmt: skip
    return out


def _lsa(rng: np.random.Generator) -> list[Case]:
    out = []
    for name, dtype in (("float64", np.float64), ("float32", np.float32)):
        ws, heads = 7, _pick(rng, 2, 4)
        C = heads * _pick(rng, 12, 20)
        H, W = _pick(rng, 15, 20), _pick(rng, 15, 20)  # rarely divisible by 7: padded windows
        B = _pick(rng, 1, 2)
        x = _normal(rng, (B, H * W, C), dtype)
        qkv_w, qkv_b = _normal(rng, (3 * C, C), dtype, C**-0.5), _normal(rng, (3 * C,), dtype, 0.1)
        proj_w, proj_b = _normal(rng, (C, C), dtype, C**-0.5), _normal(rng, (C,), dtype, 0.1)
        _, cache = F.lsa_forward(x, (H, W), qkv_w, qkv_b, proj_w, proj_b, heads, ws)
        dout = _normal(rng, x.shape, dtype)
        outs = {"dx": (0,), "dqkv_w": (1,), "dqkv_b": (2,), "dproj_w": (3,), "dproj_b": (4,)}
        out.append(Case(name, _F + "lsa:lsa_backward", (dout, cache), outs, describe=_desc(dtype, x=x) + f", map {H}x{W}"))
    return out


def _gsa(rng: np.random.Generator) -> list[Case]:
    out = []
    for name, dtype, sr in (("float64, sr 2", np.float64, 2), ("float64, sr 1", np.float64, 1), ("float32, sr 2", np.float32, 2)):
        heads = _pick(rng, 2, 4)
        C = heads * _pick(rng, 12, 20)
        H, W = _pick(rng, 13, 19), _pick(rng, 13, 19)
        B = _pick(rng, 1, 2)
        x = _normal(rng, (B, H * W, C), dtype)
        w = {n: _normal(rng, s, dtype, C**-0.5) for n, s in (("q_w", (C, C)), ("kv_w", (2 * C, C)), ("proj_w", (C, C)))}
        b = {n: _normal(rng, s, dtype, 0.1) for n, s in (("q_b", (C,)), ("kv_b", (2 * C,)), ("proj_b", (C,)))}
        extra: dict[str, Any] = {}
        if sr > 1:
            assert SUBSAMPLE_PARAMS["conv"] == ("sr_w", "sr_b")
            extra = {"sr_params": (_normal(rng, (C, C, sr, sr), dtype, (C * sr * sr) ** -0.5), _normal(rng, (C,), dtype, 0.1)),
                     "norm_w": _normal(rng, (C,), dtype) + dtype(1.0), "norm_b": _normal(rng, (C,), dtype)}  # fmt: skip
        _, cache = F.gsa_forward(x, (H, W), w["q_w"], b["q_b"], w["kv_w"], b["kv_b"], w["proj_w"], b["proj_b"], heads,
                                 sr_ratio=sr, **extra)  # fmt: skip
        dout = _normal(rng, x.shape, dtype)
        outs: dict[str, tuple[int, ...]] = {"dx": (0,), "dq_w": (1,), "dq_b": (2,), "dkv_w": (3,), "dkv_b": (4,),
                                            "dproj_w": (5,), "dproj_b": (6,)}  # fmt: skip
        if sr > 1:
            outs.update({"dsr_w": (7, 0), "dsr_b": (7, 1), "dnorm_w": (8,), "dnorm_b": (9,)})
        out.append(Case(name, _F + "gsa:gsa_backward", (dout, cache), outs, describe=_desc(dtype, x=x) + f", map {H}x{W}"))
    return out


def _peg(rng: np.random.Generator) -> list[Case]:
    out = []
    for name, dtype in (("PEG, float64", np.float64), ("PEG, float32", np.float32)):
        B, H, W, C = _pick(rng, 2, 3), _pick(rng, 20, 30), _pick(rng, 20, 30), _pick(rng, 48, 96)
        x = _normal(rng, (B, H * W, C), dtype)
        w, b = _normal(rng, (C, 1, 3, 3), dtype, 1 / 3), _normal(rng, (C,), dtype, 0.1)
        _, cache = F.peg_forward(x, (H, W), w, b)
        dout = _normal(rng, x.shape, dtype)
        out.append(Case(name, _F + "peg:peg_backward", (dout, cache), {"dx": (0,), "dw": (1,), "db": (2,)},
                        describe=_desc(dtype, x=x) + f", map {H}x{W}"))  # fmt: skip
    B, H, W, C = _pick(rng, 2, 3), _pick(rng, 20, 30), _pick(rng, 20, 30), _pick(rng, 48, 96)
    x = _normal(rng, (B, H, W, C), np.float64)
    _, dw_cache = F.depthwise_conv3x3_forward(x, _normal(rng, (C, 1, 3, 3), np.float64, 1 / 3), None)
    dout = _normal(rng, x.shape, np.float64)
    out.append(Case("depthwise conv 3x3 without bias", _F + "depthwise_conv:depthwise_conv3x3_backward", (dout, dw_cache),
                    {"dx": (0,), "dw": (1,)}, describe=_desc(np.float64, x=x)))  # fmt: skip
    return out


def _ffn(rng: np.random.Generator) -> list[Case]:
    out = []
    for name, dtype, lead in (("float64, (B, N, C) input", np.float64, (_pick(rng, 2, 3), _pick(rng, 100, 200))),
                              ("float32, (N, C) input", np.float32, (_pick(rng, 200, 400),))):  # fmt: skip
        C, r = _pick(rng, 32, 64), int(rng.choice([2, 4]))
        x = _normal(rng, (*lead, C), dtype)
        w1, b1 = _normal(rng, (r * C, C), dtype, C**-0.5), _normal(rng, (r * C,), dtype, 0.5)
        w2, b2 = _normal(rng, (C, r * C), dtype, (r * C) ** -0.5), _normal(rng, (C,), dtype, 0.1)
        _, cache = F.mlp_forward(x, w1, b1, w2, b2)
        dout = _normal(rng, x.shape, dtype)
        outs = {"dx": (0,), "dfc1_w": (1,), "dfc1_b": (2,), "dfc2_w": (3,), "dfc2_b": (4,)}
        out.append(Case(name, _F + "mlp:mlp_backward", (dout, cache), outs, describe=_desc(dtype, x=x) + f", hidden {r * C}"))
    return out


def _adamw(rng: np.random.Generator) -> list[Case]:
    out = []
    for name, dtype, first, wd in (("first step, float64", np.float64, True, 0.05),
                                   ("later step, float64", np.float64, False, 0.1),
                                   ("later step without weight decay, float32", np.float32, False, 0.0)):  # fmt: skip
        shape = (_pick(rng, 200, 400), _pick(rng, 150, 300))
        p, g = _normal(rng, shape, dtype), _normal(rng, shape, dtype, 0.5)
        state: dict[str, Any] = {}
        if not first:
            m = _normal(rng, shape, dtype, 0.1)
            v = (np.abs(_normal(rng, shape, dtype, 0.1)) ** 2 + dtype(1e-4)).astype(dtype)
            state = {"step": _pick(rng, 3, 60), "exp_avg": m, "exp_avg_sq": v}
        hyper = {"lr": float(rng.uniform(1e-2, 1e-1)), "betas": (float(rng.uniform(0.8, 0.95)), float(rng.uniform(0.95, 0.999))),
                 "eps": float(rng.choice([1e-8, 1e-6])), "weight_decay": wd}  # fmt: skip
        out.append(Case(name, "twins_np.optim:AdamW", (p, g, state), {"p update": (0,), "exp_avg": (1,), "exp_avg_sq": (2,)},
                        kwargs=hyper, form="optimizer", describe=_desc(dtype, p=p) + f", lr {hyper['lr']:.3g}"))  # fmt: skip
    return out


def _norm2d(rng: np.random.Generator) -> list[Case]:
    out = []
    for name, dtype, affine in (("GroupNorm, float64", np.float64, True),
                                ("GroupNorm without affine, float64", np.float64, False),
                                ("GroupNorm, float32", np.float32, True)):  # fmt: skip
        G = int(rng.choice([2, 4, 8]))
        B, H, W, C = _pick(rng, 2, 3), _pick(rng, 10, 16), _pick(rng, 10, 16), G * _pick(rng, 8, 16)
        x = _normal(rng, (B, H, W, C), dtype, 2.0) + dtype(rng.uniform(-1, 1))
        gamma = _normal(rng, (C,), dtype) + dtype(1.0) if affine else None
        beta = _normal(rng, (C,), dtype) if affine else None
        _, cache = F.group_norm_forward(x, gamma, beta, G)
        dout = _normal(rng, x.shape, dtype)
        out.append(Case(name, _F + "norm2d:group_norm_backward", (dout, cache), {"dx": (0,), "dgamma": (1,), "dbeta": (2,)},
                        describe=_desc(dtype, x=x) + f", {G} groups"))  # fmt: skip
    B, H, W, C = _pick(rng, 2, 4), _pick(rng, 8, 14), _pick(rng, 8, 14), _pick(rng, 128, 200)
    x = _normal(rng, (B, H, W, C), np.float64, 2.0)
    gamma, beta = _normal(rng, (C,), np.float64) + 1.0, _normal(rng, (C,), np.float64)
    _, bn_cache = F.batch_norm_forward(x, gamma, beta, None, None, training=True)
    dout = _normal(rng, x.shape, np.float64)
    out.append(Case("BatchNorm in training, float64", _F + "norm2d:batch_norm_backward", (dout, bn_cache),
                    {"dx": (0,), "dgamma": (1,), "dbeta": (2,)}, describe=_desc(np.float64, x=x)))  # fmt: skip
    return out


def _resize(rng: np.random.Generator) -> list[Case]:
    out = []
    for name, dtype, mode in (("bilinear up, float64", np.float64, "bilinear_up"),
                              ("bilinear down, float64", np.float64, "bilinear_down"),
                              ("nearest, float64", np.float64, "nearest"),
                              ("bilinear up, float32", np.float32, "bilinear_up")):  # fmt: skip
        B, H, W, C = _pick(rng, 2, 3), _pick(rng, 12, 24), _pick(rng, 12, 24), _pick(rng, 16, 48)
        x = _normal(rng, (B, H, W, C), dtype)
        if mode == "bilinear_down":
            size = (_pick(rng, 5, H - 3), _pick(rng, 5, W - 3))
        else:  # not an integer factor: every weight of the matrices differs
            size = (_pick(rng, H + 3, 2 * H + 5), _pick(rng, W + 3, 2 * W + 5))
        forward = F.nearest_resize_forward if mode == "nearest" else F.bilinear_resize_forward
        y, cache = forward(x, size=size)
        dout = _normal(rng, y.shape, dtype)
        out.append(Case(name, _F + "resize:resize_backward", (dout, cache), {"dx": ()},
                        describe=_desc(dtype, x=x) + f", to {size[0]}x{size[1]}"))  # fmt: skip
    return out


CASES: dict[str, Callable[[np.random.Generator], list[Case]]] = {
    "layernorm_backward": _layernorm,
    "gelu_backward": _gelu,
    "attention_backward": _attention,
    "windows": _windows,
    "lsa_backward": _lsa,
    "gsa_backward": _gsa,
    "peg_backward": _peg,
    "ffn_backward": _ffn,
    "adamw_step": _adamw,
    "group_norm_backward": _norm2d,
    "bilinear_resize_backward": _resize,
}


def cases(task: str, seed: int) -> list[Case]:
    """The cases of ``task`` for a grading run's seed (each task draws from its own stream)."""
    rng = np.random.default_rng([seed, *task.encode()])
    return CASES[task](rng)


def check_names(task: str) -> list[str]:
    """The checks of ``task``: "<case>: <output>", the same for every seed."""
    return [f"{c.name}: {o}" for c in cases(task, 0) for o in c.outputs]
