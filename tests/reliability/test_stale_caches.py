"""One backward, one forward: a backward never combines caches of two different forwards.

A forward that stops part-way (Ctrl-C, out of memory, a bad input found inside a
submodule) leaves some modules with the new batch's caches and the others with the old
batch's; a ``loss()`` whose labels are refused keeps the previous batch's loss cache; a
part of the model run on its own after the model's forward replaces that part's caches.
In each case the next backward must raise a RuntimeError naming the module, before it
accumulates any gradient where it can know that, instead of returning gradients that mix
two batches. A normal forward/backward is unchanged, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import twins_np
import twins_np.functional as F
from twins_np.nn import (
    Block,
    Conv2d,
    Dropout,
    DropPath,
    GlobalSubSampleAttn,
    LayerNorm,
    Linear,
    LocallyGroupedAttn,
    Mlp,
    PatchEmbed,
    PosConv,
    Sequential,
)

TEACH = "twins_svt_teach32"


def _x(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _model() -> Any:
    return twins_np.create_model(TEACH, dtype=np.float64, seed=0)


def _grads(model: Any) -> dict[str, Any]:
    return {k: None if p.grad is None else p.grad.copy() for k, p in model.named_parameters()}


def _no_grads(model: Any) -> bool:
    return all(p.grad is None for p in model.parameters())


def _fail_on_call(n: int, exc: BaseException, real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, except that its n-th call raises ``exc``."""
    calls = [0]

    def fn(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            raise exc
        return real(*args, **kwargs)

    return fn


# --- the model: a forward that stops part-way ----------------------------------------------------


def test_keyboard_interrupt_mid_forward_then_backward_raises():
    model = _model()
    x1, x2 = _x(1, 2, 3, 32, 32), _x(2, 2, 3, 32, 32)
    dlogits = _x(3, 2, 10)
    model.forward(x1)
    blk = model.blocks[1][0]  # stage 2: stage 1 has new caches, stages 2-3 and the head old ones
    blk.forward = _fail_on_call(1, KeyboardInterrupt(), blk.forward)
    with pytest.raises(KeyboardInterrupt):
        model.forward(x2)
    stopped = r"Twins.backward\(\): the last forward of Twins stopped part-way \(KeyboardInterrupt\)"
    with pytest.raises(RuntimeError, match=stopped):
        model.backward(dlogits)
    assert _no_grads(model), "the refusal must come before any gradient is accumulated"
    # a part of the model used on its own says the same, naming itself
    with pytest.raises(RuntimeError, match=r"Block.backward\(\) \(blocks.0.0 of Twins\): the last forward of Twins stopped"):
        model.blocks[0][0].backward(_x(4, 2, 256, 32))


def test_memory_error_inside_an_op_then_backward_raises(monkeypatch):
    model = _model()
    x1, x2 = _x(1, 2, 3, 32, 32), _x(2, 2, 3, 32, 32)
    model.forward(x1)
    # the third GSA of the forward runs out of memory (stage 2)
    monkeypatch.setattr(F, "gsa_forward", _fail_on_call(3, MemoryError(), F.gsa_forward))
    with pytest.raises(MemoryError):
        model.forward(x2)
    with pytest.raises(RuntimeError, match=r"stopped part-way \(MemoryError\)"):
        model.backward(_x(3, 2, 10))
    assert _no_grads(model)


def test_interrupted_loss_then_backward_loss_raises(monkeypatch):
    model = _model()
    y = np.array([1, 7])
    model.loss(_x(1, 2, 3, 32, 32), y)
    monkeypatch.setattr(F, "lsa_forward", _fail_on_call(2, KeyboardInterrupt(), F.lsa_forward))
    with pytest.raises(KeyboardInterrupt):
        model.loss(_x(2, 2, 3, 32, 32), y)
    with pytest.raises(RuntimeError, match=r"Twins.backward_loss\(\): the last forward of Twins stopped part-way"):
        model.backward_loss()
    assert _no_grads(model)


def test_refused_labels_then_backward_loss_raises():
    """The forward completed, the cross-entropy refused the labels: the old loss cache must not be used."""
    model = _model()
    model.loss(_x(1, 2, 3, 32, 32), np.array([1, 7]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        model.loss(_x(2, 2, 3, 32, 32), np.array([1, 10]))
    with pytest.raises(RuntimeError, match=r"stopped part-way \(ValueError\)"):
        model.backward_loss()
    assert _no_grads(model)


def test_loss_then_another_forward_then_backward_loss_raises():
    model = _model()
    model.loss(_x(1, 2, 3, 32, 32), np.array([1, 7]))
    model.forward(_x(2, 2, 3, 32, 32))  # e.g. a look at another batch
    with pytest.raises(RuntimeError, match=r"Twins.backward\(\) \(_head_cache\): its cache comes from another forward call"):
        model.backward_loss()


def test_part_of_the_model_run_on_its_own_after_the_forward():
    model = _model()
    model.forward(_x(1, 2, 3, 32, 32))
    model.blocks[2][1](_x(2, 2, 16, 128), (4, 4))  # replaces this block's caches
    with pytest.raises(RuntimeError, match=r"Block.backward\(\): its cache comes from another forward call"):
        model.backward(_x(3, 2, 10))


def test_recovery_gives_the_gradients_of_an_untouched_model(monkeypatch):
    """After a refused backward, forward + backward equals a fresh model's, bit for bit."""
    x, dlogits = _x(5, 2, 3, 32, 32), _x(6, 2, 10)
    ref = _model()
    ref.forward(x)
    ref_dx = ref.backward(dlogits)
    model = _model()
    model.forward(_x(1, 2, 3, 32, 32))
    monkeypatch.setattr(F, "peg_forward", _fail_on_call(2, KeyboardInterrupt(), F.peg_forward))
    with pytest.raises(KeyboardInterrupt):
        model.forward(_x(2, 2, 3, 32, 32))
    with pytest.raises(RuntimeError):
        model.backward(dlogits)
    monkeypatch.undo()
    model.forward(x)
    np.testing.assert_array_equal(model.backward(dlogits), ref_dx)
    for (k, g), (_, want) in zip(_grads(model).items(), _grads(ref).items()):
        np.testing.assert_array_equal(g, want, err_msg=k)


def test_normal_training_steps_and_loss_are_unchanged():
    """forward/backward, loss/backward_loss and forward_features/forward_head pairs still work."""
    model = _model()
    x, y = _x(1, 2, 3, 32, 32), np.array([3, 4])
    loss, logits = model.loss(x, y)
    dx = model.backward_loss()
    g1 = _grads(model)
    model.zero_grad()
    dlogits = F.cross_entropy_backward(1.0, F.cross_entropy_forward(logits, y)[1])
    np.testing.assert_array_equal(model.forward(x), logits)
    np.testing.assert_array_equal(model.backward(dlogits), dx)
    for k, g in _grads(model).items():
        np.testing.assert_array_equal(g, g1[k], err_msg=k)
    # the head and the features, each as its own forward/backward pair
    model.zero_grad()
    tokens = model.forward_features(x)
    np.testing.assert_array_equal(model.forward_head(tokens), logits)
    np.testing.assert_array_equal(model.backward_features(model.backward_head(dlogits)), dx)
    # a second backward for one forward still raises as before
    with pytest.raises(RuntimeError, match=r"called without a forward\(\)"):
        model.backward(dlogits)


def test_forward_features_then_forward_head_is_two_forwards():
    """model.backward is the backward of one forward call; two calls need their own backward each."""
    model = _model()
    x, dlogits = _x(1, 2, 3, 32, 32), _x(2, 2, 10)
    model.forward_head(model.forward_features(x))
    with pytest.raises(RuntimeError, match=r"its cache comes from another forward call"):
        model.backward(dlogits)


# --- a Block: a bad input found inside a submodule ------------------------------------------------


def test_block_refused_half_way_then_backward_raises():
    blk = Block(8, 2, sr_ratio=3, ws=1, rng=0, dtype=np.float64)
    x1, x2, dout = _x(1, 2, 12, 8), _x(2, 2, 12, 8), _x(3, 2, 12, 8)
    blk(x1, (3, 4))
    with pytest.raises(ValueError, match=r"sr = 3 is larger than the 2x6 map"):
        blk(x2, (2, 6))  # norm1 ran on x2, the attention refused the map
    with pytest.raises(RuntimeError, match=r"Block.backward\(\): the last forward of Block stopped part-way \(ValueError\)"):
        blk.backward(dout)
    assert _no_grads(blk)
    blk(x1, (3, 4))
    assert blk.backward(dout).shape == dout.shape


# --- every module used on its own, with and without no_grad ----------------------------------------


def _tok(seed: int = 0) -> np.ndarray:
    return _x(seed, 2, 12, 8)


STANDALONE: dict[str, tuple[Callable[[], Any], Callable[[int], tuple]]] = {
    "Linear": (lambda: Linear(8, 4, rng=0, dtype=np.float64), lambda s: (_tok(s),)),
    "LayerNorm": (lambda: LayerNorm(8, dtype=np.float64), lambda s: (_tok(s),)),
    "Conv2d": (lambda: Conv2d(8, 4, 2, 2, rng=0, dtype=np.float64), lambda s: (_x(s, 2, 4, 4, 8),)),
    "Mlp": (lambda: Mlp(8, 16, rng=0, dtype=np.float64), lambda s: (_tok(s),)),
    "Mlp (dropout)": (lambda: Mlp(8, 16, drop=0.5, rng=0, dtype=np.float64), lambda s: (_tok(s),)),
    "Dropout": (lambda: Dropout(0.5, rng=0), lambda s: (_tok(s),)),
    "DropPath": (lambda: DropPath(0.5, rng=0), lambda s: (_tok(s),)),
    "LocallyGroupedAttn": (lambda: LocallyGroupedAttn(8, 2, ws=2, rng=0, dtype=np.float64), lambda s: (_tok(s), (3, 4))),
    "GlobalSubSampleAttn": (
        lambda: GlobalSubSampleAttn(8, 2, sr_ratio=2, rng=0, dtype=np.float64),
        lambda s: (_tok(s), (3, 4)),
    ),
    "PatchEmbed": (lambda: PatchEmbed(8, 2, 3, 8, rng=0, dtype=np.float64), lambda s: (_x(s, 2, 3, 8, 8),)),
    "PosConv": (lambda: PosConv(8, 8, rng=0, dtype=np.float64), lambda s: (_tok(s), (3, 4))),
    "Block": (lambda: Block(8, 2, ws=2, rng=0, dtype=np.float64), lambda s: (_tok(s), (3, 4))),
    "Sequential": (
        lambda: Sequential([Linear(8, 8, rng=0, dtype=np.float64), LayerNorm(8, dtype=np.float64)]),
        lambda s: (_tok(s),),
    ),
}


def _functional_calls(monkeypatch: Any, wrap: Callable[[str, Any], Any]) -> None:
    """Replace every functional forward a module can call by ``wrap(name, real)``."""
    for name in [n for n in F.__all__ if n.endswith("_forward")]:
        monkeypatch.setattr(F, name, wrap(name, getattr(F, name)))
    for kind, (fwd, bwd) in Conv2d._OPS.items():  # Conv2d keeps its pairs in a table
        monkeypatch.setitem(Conv2d._OPS, kind, (wrap(f"Conv2d.{kind}", fwd), bwd))


def _interrupted(module: Any, make_args: Callable[[int], tuple], monkeypatch: Any, no_grad: bool) -> Any:
    """A complete forward, then one interrupted in its last functional call; returns an output."""
    out = module(*make_args(1))
    calls: list[str] = []

    def counting(name: str, real: Any) -> Any:
        def fn(*a: Any, **k: Any) -> Any:
            calls.append(name)
            return real(*a, **k)

        return fn

    _functional_calls(monkeypatch, counting)
    module(*make_args(2))
    monkeypatch.undo()
    assert calls, "the module called no functional forward"
    module(*make_args(3))  # complete: the forward a stale backward would use
    _functional_calls(monkeypatch, lambda name, real: _fail_on_call(1, KeyboardInterrupt(), real) if name == calls[-1] else real)
    with pytest.raises(KeyboardInterrupt):
        if no_grad:
            with twins_np.no_grad():
                module(*make_args(4))
        else:
            module(*make_args(4))
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("no_grad", [False, True], ids=["grad", "no_grad"])
@pytest.mark.parametrize("name", list(STANDALONE))
def test_every_module_on_its_own_refuses_backward_after_an_interrupted_forward(name, no_grad, monkeypatch):
    make, make_args = STANDALONE[name]
    module = make()
    out = _interrupted(module, make_args, monkeypatch, no_grad)
    dout = np.random.default_rng(9).standard_normal(np.shape(out[0] if isinstance(out, tuple) else out))
    stopped = rf"{name.split()[0]}.backward\(\): the last forward of .* stopped part-way \(KeyboardInterrupt\)"
    with pytest.raises(RuntimeError, match=stopped):
        module.backward(dout)
    assert all(p.grad is None for p in module.parameters())
    # and a complete forward makes it usable again
    module(*make_args(6))
    module.backward(dout)


@pytest.mark.parametrize("name", list(STANDALONE))
def test_every_module_on_its_own_refuses_backward_after_a_refused_input(name):
    """A forward that refuses its input (here: a list instead of an array) leaves nothing to back-propagate."""
    make, make_args = STANDALONE[name]
    module = make()
    out = module(*make_args(1))
    args = make_args(2)
    with pytest.raises((TypeError, ValueError)):
        module([[0.0]], *args[1:])
    dout = np.ones(np.shape(out[0] if isinstance(out, tuple) else out))
    with pytest.raises(RuntimeError, match=r"stopped part-way"):
        module.backward(dout)


def test_no_grad_forward_still_refuses_backward_by_name():
    model = _model()
    with twins_np.no_grad():
        out = model.forward(_x(1, 2, 3, 32, 32))
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(np.ones_like(out))


def test_segmenter_refused_labels_then_backward_loss_raises():
    """The same for the Segmenter: its per-pixel loss cache is tagged like every other cache."""
    from twins_np.models import create_segmenter

    seg = create_segmenter("twins_svt_teach32_fpn", num_classes=3, seed=0, dtype=np.float64)
    y = np.zeros((1, 32, 32), np.int64)
    seg.loss(_x(1, 1, 3, 32, 32), y)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) or equal ignore_index = 255"):
        seg.loss(_x(2, 1, 3, 32, 32), np.full((1, 32, 32), 7))
    with pytest.raises(RuntimeError, match=r"Segmenter.backward_loss\(\): the last forward of Segmenter stopped part-way"):
        seg.backward_loss()
    assert _no_grads(seg)
    seg.loss(_x(3, 1, 3, 32, 32), y)  # a complete forward makes it usable again
    seg.backward_loss()
    assert not _no_grads(seg)
