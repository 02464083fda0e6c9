"""Optimisers, learning-rate schedule and gradient clipping.

These are the pieces of the recipe used to train Twins (the DeiT recipe, as in timm):
AdamW with weight decay 0.05 and no decay on biases, norms and the PEG, a cosine
learning-rate schedule with linear warm-up applied per update, clipping of the global
gradient norm. (The drop-path rates that grow linearly with depth are a rule of the model:
:func:`twins_np.nn.dropout.drop_path_rates`.)

Notation: ``p`` a parameter array, ``g`` its gradient (same shape and dtype), ``lr``
the learning rate, ``wd`` the weight decay, ``t`` the number of updates a parameter
has had (1 at its first update).

Every update works in place on ``Parameter.data`` with the array module of the
parameter (NumPy or CuPy, found with :func:`~twins_np.backend.get_xp`), keeps the
dtype (float32 stays float32; optimiser state has the parameter's dtype) and skips
parameters whose ``.grad`` is None. Each function names the PyTorch/timm routine it
reproduces; ``tests/test_optim.py`` checks it against that routine.

Typical use::

    opt = AdamW(param_groups(model, weight_decay=0.05), lr=5e-4)
    sched = CosineSchedule(5e-4, total_steps=epochs * steps_per_epoch,
                           warmup_steps=5 * steps_per_epoch)
    for x, y in batches:
        sched.step(opt)                  # sets the lr of this update
        opt.zero_grad()
        ...                              # forward, loss, backward
        clip_grad_norm(model.parameters(), max_norm=5.0)
        opt.step()
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Collection, Iterable, Iterator
from typing import Any

import numpy as np

from . import kernels
from .backend import asnumpy, get_xp, use_fused
from .nn.module import Module, Parameter

__all__ = [
    "SGD",
    "AdamW",
    "CosineSchedule",
    "Optimizer",
    "clip_grad_norm",
    "param_groups",
]


# --- helpers ---------------------------------------------------------------------------


def _check_nonneg(name: str, value: float, where: str = "") -> None:
    # `not value >= 0` also rejects NaN.
    if not float(value) >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}{where}")


def _python(value: Any) -> Any:
    """A Python scalar or tuple from a value that may have been through ``np.savez``."""
    out = np.asarray(asnumpy(value)).tolist()
    return tuple(out) if isinstance(out, list) else out


# --- optimiser base ----------------------------------------------------------------------


class Optimizer:
    """Parameter groups, per-parameter state, ``zero_grad`` and ``state_dict``.

    Attributes:
        param_groups: list of dicts like PyTorch's: ``"params"`` (a list of
            :class:`Parameter`) plus the hyperparameters of that group (``"lr"``,
            ``"weight_decay"``, ...). A scheduler changes ``group["lr"]`` between steps.
        state: one dict per parameter, in the order of the groups (the numbering
            PyTorch uses in its ``state_dict``); empty until the parameter's first update.

    Subclasses set the defaults, check a group's hyperparameters in ``_check_group``
    and update one parameter in ``_update``.
    """

    # Names of per-parameter state entries that are integers; every other entry is an array.
    _counters: tuple[str, ...] = ("step",)

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        items: list[Any] = [params] if isinstance(params, (Parameter, Module)) else list(params)
        if any(isinstance(x, Module) for x in items):
            raise TypeError(
                "params must be Parameters or param-group dicts, got a Module; pass "
                "model.parameters() or param_groups(model, weight_decay)"
            )
        if not items:
            raise ValueError("params is empty: the optimizer got no parameters")
        if all(isinstance(x, dict) for x in items):
            raw_groups: list[dict[str, Any]] = items
        elif all(isinstance(x, Parameter) for x in items):
            raw_groups = [{"params": items}]
        else:
            raise TypeError("params must be an iterable of Parameters or of param-group dicts")

        self.param_groups: list[dict[str, Any]] = []
        seen: set[int] = set()
        for gi, raw in enumerate(raw_groups):
            if "params" not in raw:
                raise ValueError(f"param group {gi} has no 'params' entry")
            group = {**defaults, **raw, "params": list(raw["params"])}
            for p in group["params"]:
                if not isinstance(p, Parameter):
                    raise TypeError(f"param group {gi} holds a {type(p).__name__}, not a Parameter")
                if id(p) in seen:
                    raise ValueError("a Parameter appears more than once in params")
                seen.add(id(p))
            self._check_group(group, f" (param group {gi})")
            self.param_groups.append(group)
        if not seen:
            raise ValueError("params is empty: the optimizer got no parameters")
        self.state: list[dict[str, Any]] = [{} for _ in seen]

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        _check_nonneg("lr", group["lr"], where)

    def _update(self, p: Parameter, group: dict[str, Any], state: dict[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def _each_param(self) -> Iterator[tuple[int, dict[str, Any], Parameter]]:
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield i, group, p
                i += 1

    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for i, group, p in self._each_param():
            if p.grad is None:
                continue
            if tuple(p.grad.shape) != tuple(p.data.shape):
                raise ValueError(f"parameter {i}: grad has shape {tuple(p.grad.shape)}, data has shape {tuple(p.data.shape)}")
            self._update(p, group, self.state[i])

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None (PyTorch's ``set_to_none=True``)."""
        for _, _, p in self._each_param():
            p.grad = None

    # -- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as a flat dict that ``np.savez(f, **sd)`` can store.

        Keys are ``"param_groups.<g>.<name>"`` for group hyperparameters (``params``
        holds the parameter numbers of the group) and ``"state.<i>.<name>"`` for the
        state of parameter ``i`` (step counts as ints, moments as host NumPy *copies*,
        so later updates do not change a checkpoint already taken).
        """
        sd: dict[str, Any] = {}
        i = 0
        for gi, group in enumerate(self.param_groups):
            n = len(group["params"])
            sd[f"param_groups.{gi}.params"] = np.arange(i, i + n, dtype=np.int64)
            i += n
            for key, value in group.items():
                if key != "params":
                    sd[f"param_groups.{gi}.{key}"] = value
        for i, st in enumerate(self.state):
            for key, value in st.items():
                is_count = key in self._counters
                sd[f"state.{i}.{key}"] = int(value) if is_count else np.array(asnumpy(value))
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and state saved by :meth:`state_dict` (or read from .npz).

        Arrays are copied onto each parameter's device with the parameter's dtype.

        Raises:
            ValueError: if the groups or the parameter shapes do not match this optimiser.
        """
        params = [p for _, _, p in self._each_param()]
        # Work on copies and assign at the end, so a bad state_dict changes nothing.
        groups = [dict(g) for g in self.param_groups]
        state: list[dict[str, Any]] = [{} for _ in params]
        saved_params: dict[int, list[int]] = {}
        for key, value in state_dict.items():
            kind, index, name = (key.split(".", 2) + ["", ""])[:3]
            limit = len(groups) if kind == "param_groups" else len(params)
            known = kind in ("param_groups", "state") and index.isdigit() and name
            if not known or int(index) >= limit:
                raise ValueError(f"unexpected key in optimizer state_dict: '{key}'")
            i = int(index)
            if kind == "param_groups":
                if name == "params":
                    saved_params[i] = np.asarray(value).ravel().tolist()
                else:
                    groups[i][name] = _python(value)
            elif name in self._counters:
                state[i][name] = int(_python(value))
            elif tuple(np.shape(value)) != params[i].shape:
                raise ValueError(
                    f"state_dict['{key}'] has shape {tuple(np.shape(value))}, parameter {i} has shape {params[i].shape}"
                )
            else:
                xp = get_xp(params[i].data)
                host = asnumpy(value) if xp is np else value
                state[i][name] = xp.array(host, dtype=params[i].data.dtype)  # a copy
        first = 0
        for gi, group in enumerate(groups):
            own = list(range(first, first + len(group["params"])))
            first += len(own)
            if saved_params.get(gi) != own:
                raise ValueError(
                    f"param group {gi}: state_dict holds parameters {saved_params.get(gi)}, "
                    f"this optimizer has {own} (were the groups built the same way?)"
                )
            self._check_group(group, f" (param group {gi} of the loaded state_dict)")
        self.param_groups, self.state = groups, state


# --- AdamW -------------------------------------------------------------------------------


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

    Args:
        params: an iterable of :class:`Parameter`, or of param-group dicts such as
            ``{"params": [...], "weight_decay": 0.0, "lr": 1e-3}`` whose entries
            override the defaults below (see :func:`param_groups`).
        lr: learning rate, >= 0.
        betas: (beta1, beta2), each in [0, 1): decay rates of the first and second
            moment averages.
        eps: added to the denominator, >= 0.
        weight_decay: decoupled weight decay, >= 0. It applies to *every* parameter of
            a group; use :func:`param_groups` to exempt biases, norms and the PEG.

    State per parameter: ``step`` (int), ``exp_avg`` = m and ``exp_avg_sq`` = v, both
    of the parameter's shape and dtype, zero before the first update.

    Math:
        At the t-th update of a parameter p with gradient g::

            p <- p * (1 - lr * wd)                    # decay, independent of g
            m <- beta1 * m + (1 - beta1) * g
            v <- beta2 * v + (1 - beta2) * g * g
            m_hat = m / (1 - beta1**t)                # bias corrections: m, v start
            v_hat = v / (1 - beta2**t)                # at 0, so early averages are small
            p <- p - lr * m_hat / (sqrt(v_hat) + eps)

    Raises:
        ValueError: for lr, eps or weight_decay < 0, or betas outside [0, 1).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.05,
    ) -> None:
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        super()._check_group(group, where)
        betas = tuple(group["betas"])
        if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {group['betas']}{where}")
        _check_nonneg("eps", group["eps"], where)
        _check_nonneg("weight_decay", group["weight_decay"], where)

    def _update(self, p: Parameter, group: dict[str, Any], state: dict[str, Any]) -> None:
        """One AdamW step of one parameter, in place (the Math of the class docstring).

        Args:
            p: the parameter; ``p.data`` (any shape) is updated in place, ``p.grad`` (its
                shape and dtype) is the gradient g.
            group: its hyperparameters: ``lr``, ``betas`` = (beta1, beta2), ``eps``,
                ``weight_decay`` (wd).
            state: its state: ``step`` (t, already counted for this update, from 1),
                ``exp_avg`` m and ``exp_avg_sq`` v (p.data's shape and dtype, zeros before
                the first update), updated in place.
        """
        xp = get_xp(param=p.data, grad=p.grad)
        # Python floats: a NumPy float64 scalar would upcast float32 arrays (NumPy 2).
        lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        g, m, v = p.grad, state["exp_avg"], state["exp_avg_sq"]
        if use_fused(p.data, "adamw") and g.dtype == p.data.dtype and all(a.flags.c_contiguous for a in (p.data, g, m, v)):
            # one pass instead of about a dozen (twins_np/kernels/adamw_cpu.py or adamw.cu); the lines below are its twin
            kernels.for_array(p.data).adamw_update(p.data, g, m, v, lr=lr, beta1=beta1, beta2=beta2, eps=eps, wd=wd, t=t)
            return

        # BEGIN SOLUTION adamw_step
        if wd != 0.0:
            p.data *= 1.0 - lr * wd
        m += (1.0 - beta1) * (g - m)  # = beta1*m + (1-beta1)*g, written as torch's lerp
        v *= beta2
        v += (1.0 - beta2) * (g * g)
        step_size = lr / (1.0 - beta1**t)
        denom = xp.sqrt(v) / math.sqrt(1.0 - beta2**t) + eps
        p.data -= step_size * (m / denom)
        # END SOLUTION


# --- SGD ---------------------------------------------------------------------------------


class SGD(Optimizer):
    """Stochastic gradient descent with (Nesterov) momentum, as ``torch.optim.SGD``.

    Args:
        params: an iterable of :class:`Parameter` or of param-group dicts (see
            :class:`AdamW`).
        lr: learning rate, >= 0.
        momentum: momentum factor, >= 0 (0 gives plain SGD).
        weight_decay: L2 penalty added to the gradient (coupled, as in PyTorch), >= 0.
        nesterov: use Nesterov momentum (needs momentum > 0).

    State per parameter: ``momentum_buffer`` b (parameter's shape and dtype), created
    from the first gradient. PyTorch's ``dampening`` and ``maximize`` are not offered
    (they are 0 and False here).

    Math:
        With gradient g of parameter p::

            g <- g + wd * p                           # coupled weight decay
            b <- g at the first update, else momentum * b + g
            d <- g + momentum * b  if nesterov  else  b
            p <- p - lr * d

    Raises:
        ValueError: for lr, momentum or weight_decay < 0, or nesterov without momentum.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        defaults["nesterov"] = nesterov
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        super()._check_group(group, where)
        _check_nonneg("momentum", group["momentum"], where)
        _check_nonneg("weight_decay", group["weight_decay"], where)
        if group["nesterov"] and not float(group["momentum"]) > 0.0:
            raise ValueError(f"nesterov=True needs momentum > 0, got momentum={group['momentum']}{where}")

    def _update(self, p: Parameter, group: dict[str, Any], state: dict[str, Any]) -> None:
        get_xp(param=p.data, grad=p.grad)  # TypeError with names if devices are mixed
        lr, momentum = float(group["lr"]), float(group["momentum"])
        wd = float(group["weight_decay"])
        g = p.grad
        if wd != 0.0:
            g = g + wd * p.data
        if momentum != 0.0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.astype(p.data.dtype, copy=True)
            else:
                buf = state["momentum_buffer"]
                buf *= momentum
                buf += g
            buf = state["momentum_buffer"]
            g = g + momentum * buf if group["nesterov"] else buf
        p.data -= lr * g


# --- parameter groups --------------------------------------------------------------------


def param_groups(model: Module, weight_decay: float, no_weight_decay: Collection[str] = ()) -> list[dict[str, Any]]:
    """Split a model's parameters into a no-decay and a decay group (timm's rule).

    A parameter gets no weight decay when any of these holds:

    * it has ``ndim <= 1`` (biases, LayerNorm weights) or its name ends in ``.bias``;
    * its name matches an entry of ``no_weight_decay`` or of ``model.no_weight_decay()``
      when the model defines it (Twins lists its PEG, ``pos_block.*``); entries may use
      shell wildcards (``fnmatch``), as in timm;
    * it is flagged ``Parameter.no_weight_decay``.

    As in timm's ``param_groups_weight_decay``: with ``weight_decay == 0`` every
    parameter goes to the no-decay group, the no-decay group comes first, and an empty
    group is left out.

    Args:
        model: a twins-np :class:`Module`.
        weight_decay: decay of the decay group, >= 0.
        no_weight_decay: extra parameter names (or patterns) to exempt.

    Returns:
        ``[{"params": [...], "weight_decay": 0.0}, {"params": [...], "weight_decay": wd}]``,
        ready for :class:`AdamW` or :class:`SGD`.
    """
    _check_nonneg("weight_decay", weight_decay)
    skip = set(no_weight_decay)
    model_skip = getattr(model, "no_weight_decay", None)
    if callable(model_skip):
        skip |= set(model_skip())
    decay: list[Parameter] = []
    no_decay: list[Parameter] = []
    for name, p in model.named_parameters():
        exempt = (
            not weight_decay
            or p.data.ndim <= 1
            or name.endswith(".bias")
            or any(fnmatch.fnmatch(name, pattern) for pattern in skip)
            or p.no_weight_decay
        )
        (no_decay if exempt else decay).append(p)
    groups: list[dict[str, Any]] = []
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if decay:
        groups.append({"params": decay, "weight_decay": float(weight_decay)})
    return groups


# --- learning-rate schedule --------------------------------------------------------------


class CosineSchedule:
    """Linear warm-up, then cosine decay to ``min_lr``, per update (timm's ``CosineLRScheduler``).

    Same values as ``CosineLRScheduler(opt, t_initial=total_steps, lr_min=min_lr,
    warmup_t=warmup_steps, warmup_lr_init=warmup_lr, t_in_epochs=False)`` with its other
    options at their defaults (one cycle, no noise, ``warmup_prefix=False``). As in
    timm, the warm-up *overlaps* the start of the cosine: the cosine is evaluated at the
    global step, so right after warm-up the lr is already a little below ``base_lr``.

    Args:
        base_lr: peak learning rate, >= 0.
        total_steps: length of the cosine in updates (timm's ``t_initial``), > 0.
        warmup_steps: updates of linear warm-up, in [0, total_steps].
        warmup_lr: lr of the first warm-up update, >= 0 (DeiT/Twins use 1e-6).
        min_lr: lr at and after ``total_steps``, >= 0 (DeiT/Twins use 1e-5).

    Attributes:
        t: number of :meth:`step` calls so far, i.e. the index of the next update.

    Math:
        For update t = 0, 1, 2, ...::

            lr(t) = warmup_lr + t * (base_lr - warmup_lr) / warmup_steps     t < warmup_steps
            lr(t) = min_lr + 0.5 * (base_lr - min_lr) * (1 + cos(pi * t / total_steps))
                                                                     warmup_steps <= t < total_steps
            lr(t) = min_lr                                                    t >= total_steps

    Raises:
        ValueError: for negative rates, total_steps <= 0, or warmup_steps outside
            [0, total_steps].
    """

    def __init__(
        self,
        base_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_lr: float = 1e-6,
        min_lr: float = 1e-5,
    ) -> None:
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_lr = float(warmup_lr)
        self.min_lr = float(min_lr)
        self.t = 0
        self._check()

    def _check(self) -> None:
        for name in ("base_lr", "warmup_lr", "min_lr"):
            _check_nonneg(name, getattr(self, name))
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, total_steps={self.total_steps}], "
                f"got {self.warmup_steps} (total_steps < warmup_steps)"
            )

    def lr_at(self, step: int) -> float:
        """The learning rate of update ``step`` (0-based), a Python float."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return self.warmup_lr + step * ((self.base_lr - self.warmup_lr) / self.warmup_steps)
        if step >= self.total_steps:
            return self.min_lr
        cosine = 1.0 + math.cos(math.pi * step / self.total_steps)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * cosine

    def step(self, optimizer: Optimizer | None = None) -> float:
        """Set the lr of the next update and advance: once per update, before ``optimizer.step()``.

        A group with an ``"lr_scale"`` entry gets ``lr * lr_scale`` (timm's rule, used
        for layer-wise lr decay).

        Returns:
            the lr set (before any ``lr_scale``).
        """
        lr = self.lr_at(self.t)
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
        self.t += 1
        return lr

    def state_dict(self) -> dict[str, Any]:
        """The settings and the step counter, as Python numbers (``np.savez``-able)."""
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_lr": self.warmup_lr,
            "min_lr": self.min_lr,
            "t": self.t,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (0-d arrays from .npz are accepted)."""
        for key in ("base_lr", "warmup_lr", "min_lr"):
            setattr(self, key, float(_python(state_dict[key])))
        for key in ("total_steps", "warmup_steps", "t"):
            setattr(self, key, int(_python(state_dict[key])))
        self._check()


# --- gradient clipping -------------------------------------------------------------------


def clip_grad_norm(params: Parameter | Iterable[Parameter], max_norm: float, eps: float = 1e-6) -> float:
    """Scale all gradients together so their global 2-norm is at most ``max_norm``.

    Reproduces ``torch.nn.utils.clip_grad_norm_`` (2-norm): parameters whose ``.grad``
    is None are ignored, the gradients are scaled in place (keeping their dtype) on
    their own device. Unlike PyTorch, a non-finite norm leaves the gradients untouched;
    it is returned, so the caller can skip the step.

    Args:
        params: a Parameter or an iterable of them.
        max_norm: largest allowed global norm, > 0.
        eps: added to the norm before dividing, as in PyTorch.

    Returns:
        the global norm *before* clipping, a Python float (0.0 when no gradients).

    Math:
        With gradients g_1, ..., g_k::

            total = sqrt(sum_i ||g_i||^2)
            g_i <- g_i * max_norm / (total + eps)      only when that factor is < 1

    Raises:
        ValueError: if max_norm <= 0.
        TypeError: if gradients live on different devices.
    """
    if not float(max_norm) > 0.0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    items = [params] if isinstance(params, Parameter) else list(params)
    grads = [p.grad for p in items if p.grad is not None]
    if not grads:
        return 0.0
    xp = get_xp(**{f"grad of parameter {i}": g for i, g in enumerate(grads)})
    # Norm of the per-array norms, as PyTorch: one device-to-host sync, not one per array.
    norms = xp.stack([xp.linalg.norm(g.ravel()) for g in grads])
    total = float(xp.linalg.norm(norms))
    coef = float(max_norm) / (total + float(eps))
    if coef < 1.0:
        for g in grads:
            g *= coef
    return total
