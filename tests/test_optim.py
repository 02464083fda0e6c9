"""Tests for twins_np.optim: AdamW, SGD, param_groups, CosineSchedule, clipping, drop path.

Each optimiser is run side by side with its PyTorch / timm counterpart on the same
random gradient sequence (torch tests skip cleanly when torch is absent). Errors are
measured as max |ours - reference| / max |reference| per array.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from twins_np.backend import cupy_available, to_device
from twins_np.nn.module import Module, Parameter
from twins_np.optim import (
    SGD,
    AdamW,
    CosineSchedule,
    Optimizer,
    clip_grad_norm,
    param_groups,
)

# Relative tolerances against PyTorch. float64 should agree to rounding; float32
# accumulates ~1 ulp per operation over the steps below.
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-6}
# timm's schedule is the same Python-float formula, so it agrees to the last bit or two.
SCHEDULE_RTOL = 1e-14
DTYPES = [np.float64, np.float32]
N_STEPS = 25

# Parameter names and shapes as in a Twins model (one stage, shrunk).
TWINS_LIKE = {
    "patch_embeds.0.proj.weight": (8, 3, 2, 2),
    "patch_embeds.0.proj.bias": (8,),
    "patch_embeds.0.norm.weight": (8,),
    "patch_embeds.0.norm.bias": (8,),
    "pos_block.0.proj.0.weight": (8, 1, 3, 3),
    "pos_block.0.proj.0.bias": (8,),
    "blocks.0.0.attn.qkv.weight": (24, 8),
    "blocks.0.0.attn.qkv.bias": (24,),
    "blocks.0.0.mlp.fc1.weight": (16, 8),
    "blocks.0.0.mlp.fc2.weight": (8, 16),
    "head.weight": (5, 8),
    "head.bias": (5,),
    "head.scale.bias": (1, 5),  # a 2-D bias: exempt from decay by its name alone
}
# What timm's Twins.no_weight_decay() lists: the PEG.
PEG_NAMES = {"pos_block.0.proj.0.weight", "pos_block.0.proj.0.bias"}


class _TwinsLike(Module):
    """A bare module tree with TWINS_LIKE's names; lists the PEG like timm's Twins."""

    def no_weight_decay(self) -> set[str]:
        return set(PEG_NAMES)


def _model(dtype: Any, seed: int = 0) -> _TwinsLike:
    rng = np.random.default_rng(seed)
    root = _TwinsLike()
    for name, shape in TWINS_LIKE.items():
        *path, leaf = name.split(".")
        m: Module = root
        for part in path:
            child = getattr(m, part, None)
            if child is None:
                child = Module()
                setattr(m, part, child)
            m = child
        setattr(m, leaf, Parameter(rng.standard_normal(shape).astype(dtype)))
    return root


def _torch_mirror(torch: Any, model: Module) -> Any:
    """A torch.nn.Module with the same parameter names, values and order."""
    root = torch.nn.Module()
    for name, p in model.named_parameters():
        *path, leaf = name.split(".")
        m = root
        for part in path:
            if not hasattr(m, part):
                m.add_module(part, torch.nn.Module())
            m = getattr(m, part)
        m.register_parameter(leaf, torch.nn.Parameter(torch.from_numpy(p.data.copy())))
    return root


def _torch_groups(groups: list[dict[str, Any]], model: Module, tmodel: Any) -> list[dict[str, Any]]:
    """The same param groups with each Parameter replaced by its torch twin."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    tparams = dict(tmodel.named_parameters())
    return [{**g, "params": [tparams[name_of[id(p)]] for p in g["params"]]} for g in groups]


def _rel(ours: Any, ref: Any) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(ours - ref)) / max(float(np.max(np.abs(ref))), 1e-300))


def _grads(rng: np.random.Generator, model: Module, step: int) -> dict[str, Any]:
    """Random gradients; every third step the head bias gets none (it must be skipped)."""
    out: dict[str, Any] = {}
    for name, p in model.named_parameters():
        if name == "head.bias" and step % 3 == 1:
            out[name] = None
        else:
            out[name] = rng.standard_normal(p.shape).astype(p.dtype)
    return out


def _run_side_by_side(
    torch: Any,
    model: Module,
    tmodel: Any,
    opt: Optimizer,
    topt: Any,
    steps: int = N_STEPS,
    seed: int = 1,
) -> None:
    """Feed both optimisers the same gradients and a changing lr for `steps` updates."""
    rng = np.random.default_rng(seed)
    tparams = dict(tmodel.named_parameters())
    base_lrs = [g["lr"] for g in opt.param_groups]
    for t in range(steps):
        for g, tg, base in zip(opt.param_groups, topt.param_groups, base_lrs):
            g["lr"] = tg["lr"] = base * (1.0 - t / (2 * steps))  # as a scheduler would
        for name, grad in _grads(rng, model, t).items():
            p = dict(model.named_parameters())[name]
            p.grad = None if grad is None else grad.copy()
            tparams[name].grad = None if grad is None else torch.from_numpy(grad.copy())
        opt.step()
        topt.step()


# --- AdamW -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_matches_torch_with_groups_and_no_decay(dtype: Any) -> None:
    torch = pytest.importorskip("torch")
    model = _model(dtype)
    tmodel = _torch_mirror(torch, model)
    groups = param_groups(model, weight_decay=0.3)
    groups[1]["betas"] = (0.8, 0.99)  # a per-group override must be honoured
    groups[1]["lr"] = 3e-3
    opt = AdamW(groups, lr=1e-2, eps=1e-6)
    tgroups = _torch_groups(groups, model, tmodel)
    topt = torch.optim.AdamW(tgroups, lr=1e-2, eps=1e-6, weight_decay=0.05)

    _run_side_by_side(torch, model, tmodel, opt, topt)

    tparams = dict(tmodel.named_parameters())
    tol = RTOL[np.dtype(dtype)]
    for i, (name, p) in enumerate(_names_in_opt_order(opt, model)):
        tp = tparams[name]
        assert p.data.dtype == dtype
        assert _rel(p.data, tp.detach().numpy()) < tol, name
        tstate = topt.state[tp]
        assert opt.state[i]["step"] == int(tstate["step"].item()), name
        assert _rel(opt.state[i]["exp_avg"], tstate["exp_avg"].numpy()) < tol, name
        assert _rel(opt.state[i]["exp_avg_sq"], tstate["exp_avg_sq"].numpy()) < tol, name
    # The bias without gradients every third step really had fewer updates.
    names = [name for name, _ in _names_in_opt_order(opt, model)]
    steps = {name: opt.state[i]["step"] for i, name in enumerate(names)}
    assert steps["head.bias"] < steps["head.weight"] == N_STEPS


def _names_in_opt_order(opt: Optimizer, model: Module) -> list[tuple[str, Parameter]]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [(name_of[id(p)], p) for _, _, p in opt._each_param()]


def test_adamw_plain_parameter_list_decays_everything_like_torch() -> None:
    torch = pytest.importorskip("torch")
    model = _model(np.float64)
    tmodel = _torch_mirror(torch, model)
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    topt = torch.optim.AdamW(tmodel.parameters(), lr=1e-2, weight_decay=0.5)
    _run_side_by_side(torch, model, tmodel, opt, topt, steps=10)
    for (name, p), (_, tp) in zip(model.named_parameters(), tmodel.named_parameters()):
        assert _rel(p.data, tp.detach().numpy()) < RTOL[np.dtype(np.float64)], name


def test_adamw_first_step_by_hand() -> None:
    # After one step m_hat = g and v_hat = g*g, so the update is lr * g / (|g| + eps).
    p = Parameter(np.array([1.0, -2.0, 0.5]))
    p.grad = np.array([0.1, -3.0, 0.0])
    lr, wd, eps = 0.1, 0.2, 1e-8
    AdamW([p], lr=lr, weight_decay=wd, eps=eps).step()
    decayed = np.array([1.0, -2.0, 0.5]) * (1.0 - lr * wd)
    expected = decayed - lr * np.array([0.1, -3.0, 0.0]) / (np.array([0.1, 3.0, 0.0]) + eps)
    np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=0.0)


def test_params_without_grad_are_skipped_and_zero_grad_clears() -> None:
    a, b = Parameter(np.ones(3)), Parameter(np.ones(2))
    a.grad = np.full(3, 0.5)
    for opt in (AdamW([a, b], lr=0.1), SGD([a, b], lr=0.1)):
        opt.step()
        np.testing.assert_array_equal(b.data, np.ones(2))
        assert opt.state[1] == {}
        assert opt.state[0] != {}
    AdamW([a, b]).zero_grad()
    assert a.grad is None and b.grad is None


# --- SGD ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("momentum", "nesterov", "weight_decay"),
    [(0.0, False, 0.0), (0.0, False, 1e-2), (0.9, False, 0.0), (0.9, False, 1e-2),
     (0.8, True, 1e-2)],
)
def test_sgd_matches_torch(
    dtype: Any, momentum: float, nesterov: bool, weight_decay: float
) -> None:
    torch = pytest.importorskip("torch")
    model = _model(dtype)
    tmodel = _torch_mirror(torch, model)
    opt = SGD(
        model.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )
    topt = torch.optim.SGD(
        tmodel.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )
    _run_side_by_side(torch, model, tmodel, opt, topt)
    tol = RTOL[np.dtype(dtype)]
    pairs = zip(model.named_parameters(), tmodel.named_parameters())
    for i, ((name, p), (_, tp)) in enumerate(pairs):
        assert p.data.dtype == dtype
        assert _rel(p.data, tp.detach().numpy()) < tol, name
        if momentum:
            buf = opt.state[i]["momentum_buffer"]
            assert _rel(buf, topt.state[tp]["momentum_buffer"].numpy()) < tol, name


# --- param_groups ------------------------------------------------------------------------


def test_param_groups_matches_timm() -> None:
    pytest.importorskip("torch")
    timm_groups = pytest.importorskip("timm.optim._param_groups")
    import torch

    model = _model(np.float32)
    tmodel = _torch_mirror(torch, model)
    extra = ["blocks.*.mlp.fc2.*"]  # a wildcard pattern, as timm allows
    ours = param_groups(model, 0.05, no_weight_decay=extra)
    ref = timm_groups.param_groups_weight_decay(
        tmodel, 0.05, no_weight_decay_list=set(extra) | PEG_NAMES
    )
    name_of = {id(p): n for n, p in model.named_parameters()}
    tname_of = {id(p): n for n, p in tmodel.named_parameters()}
    assert [g["weight_decay"] for g in ours] == [g["weight_decay"] for g in ref]
    assert [[name_of[id(p)] for p in g["params"]] for g in ours] == [
        [tname_of[id(p)] for p in g["params"]] for g in ref
    ]


def test_param_groups_rules_without_timm() -> None:
    model = _model(np.float32)
    # The twins-np flag exempts a parameter too, here a 2-D weight.
    dict(model.named_parameters())["head.weight"].no_weight_decay = True
    no_decay, decay = param_groups(model, 0.05)
    name_of = {id(p): n for n, p in model.named_parameters()}
    assert {name_of[id(p)] for p in decay["params"]} == {
        "patch_embeds.0.proj.weight",
        "blocks.0.0.attn.qkv.weight",
        "blocks.0.0.mlp.fc1.weight",
        "blocks.0.0.mlp.fc2.weight",
    }
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) + len(decay["params"]) == len(TWINS_LIKE)
    # weight_decay == 0: a single no-decay group, as timm.
    (only,) = param_groups(model, 0.0)
    assert len(only["params"]) == len(TWINS_LIKE) and only["weight_decay"] == 0.0


# --- CosineSchedule ----------------------------------------------------------------------

SCHEDULES = [
    {"base_lr": 5e-4, "total_steps": 60, "warmup_steps": 7, "warmup_lr": 1e-6, "min_lr": 1e-5},
    {"base_lr": 1e-3, "total_steps": 37, "warmup_steps": 0, "warmup_lr": 1e-6, "min_lr": 0.0},
    {"base_lr": 2e-3, "total_steps": 8, "warmup_steps": 8, "warmup_lr": 0.0, "min_lr": 1e-5},
    {"base_lr": 1e-2, "total_steps": 100, "warmup_steps": 1, "warmup_lr": 1e-4, "min_lr": 1e-3},
]


@pytest.mark.parametrize("cfg", SCHEDULES)
def test_schedule_matches_timm_every_step(cfg: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch")
    cosine = pytest.importorskip("timm.scheduler.cosine_lr")
    w = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    tgroups = [{"params": [w[0]]}, {"params": [w[1]], "lr_scale": 0.5}]
    topt = torch.optim.SGD(tgroups, lr=cfg["base_lr"])
    ref = cosine.CosineLRScheduler(
        topt,
        t_initial=cfg["total_steps"],
        lr_min=cfg["min_lr"],
        warmup_t=cfg["warmup_steps"],
        warmup_lr_init=cfg["warmup_lr"],
        t_in_epochs=False,
    )
    a, b = Parameter(np.zeros(1)), Parameter(np.zeros(1))
    opt = AdamW([{"params": [a]}, {"params": [b], "lr_scale": 0.5}], lr=1.0)
    sched = CosineSchedule(**cfg)
    for t in range(cfg["total_steps"] + 5):  # past the end too: lr stays at min_lr
        lr = sched.step(opt)  # the lr of update t
        assert lr == sched.lr_at(t)
        for g, tg in zip(opt.param_groups, topt.param_groups):
            assert math.isclose(g["lr"], tg["lr"], rel_tol=SCHEDULE_RTOL, abs_tol=0.0), t
        ref.step_update(num_updates=t + 1)  # timm: called after the update, for the next one


def test_schedule_shape_by_hand() -> None:
    s = CosineSchedule(1e-3, total_steps=100, warmup_steps=0, min_lr=1e-5)
    assert s.lr_at(0) == 1e-3
    assert math.isclose(s.lr_at(50), 0.5 * (1e-3 + 1e-5), rel_tol=1e-15)
    assert s.lr_at(100) == s.lr_at(1000) == 1e-5
    w = CosineSchedule(1e-3, total_steps=100, warmup_steps=10, warmup_lr=1e-6)
    assert w.lr_at(0) == 1e-6
    assert math.isclose(w.lr_at(5), 1e-6 + 5 * (1e-3 - 1e-6) / 10, rel_tol=1e-15)
    warmup = [w.lr_at(t) for t in range(10)]
    assert all(x < y for x, y in itertools.pairwise(warmup))  # rising during warm-up


def test_schedule_state_dict_resume() -> None:
    s = CosineSchedule(1e-3, total_steps=40, warmup_steps=5)
    for _ in range(12):
        s.step()
    buf = io.BytesIO()
    np.savez(buf, **s.state_dict())
    buf.seek(0)
    resumed = CosineSchedule(1.0, total_steps=3)
    resumed.load_state_dict(dict(np.load(buf)))
    assert [resumed.step() for _ in range(30)] == [s.step() for _ in range(30)]


# --- clip_grad_norm ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_norm", [1.0, 1e3], ids=["clipped", "unclipped"])
def test_clip_grad_norm_matches_torch(dtype: Any, max_norm: float) -> None:
    torch = pytest.importorskip("torch")
    model = _model(dtype)
    tmodel = _torch_mirror(torch, model)
    grads = _grads(np.random.default_rng(3), model, step=1)  # head.bias has no grad
    tparams = dict(tmodel.named_parameters())
    for name, p in model.named_parameters():
        p.grad = None if grads[name] is None else grads[name].copy()
        tparams[name].grad = None if grads[name] is None else torch.from_numpy(grads[name].copy())

    total = clip_grad_norm(model.parameters(), max_norm)
    ttotal = float(torch.nn.utils.clip_grad_norm_(tmodel.parameters(), max_norm))

    tol = RTOL[np.dtype(dtype)]
    assert isinstance(total, float)
    assert abs(total - ttotal) / ttotal < tol
    for name, p in model.named_parameters():
        if grads[name] is None:
            assert p.grad is None
            continue
        assert p.grad.dtype == dtype
        assert _rel(p.grad, tparams[name].grad.numpy()) < tol, name
        if max_norm > total:  # unclipped: untouched
            np.testing.assert_array_equal(p.grad, grads[name])
    kept = [p.grad.astype(np.float64) for p in model.parameters() if p.grad is not None]
    after = math.sqrt(sum(float(np.sum(g * g)) for g in kept))
    assert math.isclose(after, min(total, max_norm), rel_tol=1e-5)


def test_clip_grad_norm_by_hand() -> None:
    a, b = Parameter(np.zeros(1)), Parameter(np.zeros(1))
    a.grad, b.grad = np.array([3.0]), np.array([4.0])
    assert clip_grad_norm([a, b], max_norm=1.0) == 5.0
    scale = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose([a.grad[0], b.grad[0]], [3.0 * scale, 4.0 * scale], rtol=1e-15)
    assert clip_grad_norm([Parameter(np.zeros(2))], max_norm=1.0) == 0.0  # no grads at all


# --- checkpoints -------------------------------------------------------------------------

OPTIMIZERS: dict[str, Callable[[list[Parameter]], Optimizer]] = {
    "adamw": lambda ps: AdamW(ps, lr=1e-2, weight_decay=0.1),
    "sgd_nesterov": lambda ps: SGD(ps, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-3),
}


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_state_dict_round_trip_is_bit_identical(kind: str) -> None:
    make = OPTIMIZERS[kind]
    rng = np.random.default_rng(5)
    model = _model(np.float32)
    opt = make(model.parameters())

    def train(m: Module, o: Optimizer, steps: int, seed: int) -> None:
        r = np.random.default_rng(seed)
        for t in range(steps):
            for name, grad in _grads(r, m, t).items():
                dict(m.named_parameters())[name].grad = grad
            o.step()

    train(model, opt, 6, seed=int(rng.integers(1 << 30)))
    # Checkpoint: weights (copies) + optimiser state, once as a dict and once through .npz.
    weights = {k: v.copy() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    buf = io.BytesIO()
    np.savez(buf, **sd)
    buf.seek(0)
    from_npz = dict(np.load(buf))

    train(model, opt, 7, seed=99)  # the original run goes on (and must not alter `sd`)
    for saved in (sd, from_npz):
        twin = _model(np.float32, seed=123).load_state_dict(weights)
        opt2 = make(twin.parameters())
        opt2.load_state_dict(saved)
        train(twin, opt2, 7, seed=99)
        for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
            np.testing.assert_array_equal(q.data, p.data, err_msg=name)
        for s, s2 in zip(opt.state, opt2.state):
            assert s.keys() == s2.keys()
            for key in s:
                np.testing.assert_array_equal(np.asarray(s2[key]), np.asarray(s[key]), err_msg=key)


def test_load_state_dict_rejects_mismatch() -> None:
    opt = AdamW([Parameter(np.ones((2, 3)))])
    opt.param_groups[0]["params"][0].grad = np.ones((2, 3))
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="shape"):
        AdamW([Parameter(np.ones((3, 2)))]).load_state_dict(sd)
    with pytest.raises(ValueError, match="param group"):
        AdamW([Parameter(np.ones((2, 3))), Parameter(np.ones(2))]).load_state_dict(sd)


# --- dtype -------------------------------------------------------------------------------


def test_float32_stays_float32() -> None:
    model = _model(np.float32)
    # A NumPy float64 lr is the classic trap: under NumPy 2 it would upcast float32 arrays.
    lr = np.float64(1e-3)
    for opt in (AdamW(model.parameters(), lr=lr), SGD(model.parameters(), lr=lr)):
        for t in range(3):
            for name, grad in _grads(np.random.default_rng(t), model, 0).items():
                dict(model.named_parameters())[name].grad = grad
            clip_grad_norm(model.parameters(), max_norm=np.float64(0.5))
            opt.step()
        for p in model.parameters():
            assert p.data.dtype == np.float32 and p.grad.dtype == np.float32
        for st in opt.state:
            for key, value in st.items():
                if key != "step":
                    assert value.dtype == np.float32, key


# --- bad input ---------------------------------------------------------------------------


def _ps() -> list[Parameter]:
    return [Parameter(np.ones(3))]


BAD_INPUT: list[tuple[str, Callable[[], object]]] = [
    ("lr", lambda: AdamW(_ps(), lr=-1e-3)),
    ("lr", lambda: AdamW([{"params": _ps(), "lr": -1.0}])),  # a group override is checked too
    ("betas", lambda: AdamW(_ps(), betas=(1.0, 0.999))),
    ("betas", lambda: AdamW(_ps(), betas=(0.9, -0.1))),
    ("eps", lambda: AdamW(_ps(), eps=-1e-8)),
    ("weight_decay", lambda: AdamW(_ps(), weight_decay=-0.05)),
    ("params", lambda: AdamW([])),
    ("more than once", lambda: AdamW(_ps() * 2)),
    ("lr", lambda: SGD(_ps(), lr=-0.1)),
    ("momentum", lambda: SGD(_ps(), lr=0.1, momentum=-0.9)),
    ("nesterov", lambda: SGD(_ps(), lr=0.1, momentum=0.0, nesterov=True)),
    ("max_norm", lambda: clip_grad_norm(_ps(), 0.0)),
    ("max_norm", lambda: clip_grad_norm(_ps(), -1.0)),
    ("warmup_steps", lambda: CosineSchedule(1e-3, total_steps=5, warmup_steps=10)),
    ("total_steps", lambda: CosineSchedule(1e-3, total_steps=0)),
    ("base_lr", lambda: CosineSchedule(-1e-3, total_steps=10)),
    ("min_lr", lambda: CosineSchedule(1e-3, total_steps=10, min_lr=-1.0)),
    ("step", lambda: CosineSchedule(1e-3, total_steps=10).lr_at(-1)),
    ("weight_decay", lambda: param_groups(_model(np.float32), -0.1)),
]


@pytest.mark.parametrize(
    ("argument", "call"), BAD_INPUT, ids=[f"{i}-{a}" for i, (a, _) in enumerate(BAD_INPUT)]
)
def test_bad_input_raises_value_error_naming_argument(
    argument: str, call: Callable[[], object]
) -> None:
    with pytest.raises(ValueError, match=argument):
        call()


def test_module_instead_of_parameters_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="parameters"):
        AdamW(_model(np.float32))  # type: ignore[arg-type]


# --- GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_gpu_matches_cpu(kind: str) -> None:
    # checked inside (not in a skipif): the CuPy stand-in is installed after collection starts
    if not cupy_available():
        pytest.skip("needs CuPy and a CUDA GPU")
    make = OPTIMIZERS[kind]
    cpu, gpu = _model(np.float64), _model(np.float64).to_device("gpu")
    opt_cpu, opt_gpu = make(cpu.parameters()), make(gpu.parameters())
    for t in range(5):
        grads = _grads(np.random.default_rng(t), cpu, t)
        for (name, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters()):
            p.grad = None if grads[name] is None else grads[name].copy()
            q.grad = None if grads[name] is None else to_device(grads[name], "gpu")
        norm_cpu = clip_grad_norm(cpu.parameters(), 5.0)
        norm_gpu = clip_grad_norm(gpu.parameters(), 5.0)
        assert abs(norm_gpu - norm_cpu) / norm_cpu < RTOL[np.dtype(np.float64)]
        opt_cpu.step()
        opt_gpu.step()
    for (name, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters()):
        assert _rel(to_device(q.data, "cpu"), p.data) < RTOL[np.dtype(np.float64)], name
    # A GPU checkpoint loads into a CPU optimiser (state_dict holds host arrays).
    make(_model(np.float64).parameters()).load_state_dict(opt_gpu.state_dict())
