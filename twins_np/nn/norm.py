"""Normalisation layers: LayerNorm (over the last axis) and the map norms GroupNorm and BatchNorm2d.

Each owns its parameters (and, for BatchNorm2d, its running statistics) and calls the
functional pairs of :mod:`twins_np.functional.layernorm` and
:mod:`twins_np.functional.norm2d`. Signatures, defaults and ``state_dict`` names equal
PyTorch's (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``);
GroupNorm's and BatchNorm2d's maps are channels-last, x (B, H, W, C), like every twins-np conv.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from ..functional._checks import check_channels
from .module import Module, Parameter


class LayerNorm(Module):
    """LayerNorm over the last axis; weight (C,) = 1, bias (C,) = 0 at init."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, dtype: Any = np.float32) -> None:
        super().__init__()
        self.eps = eps
        self.weight = Parameter(np.ones(normalized_shape, dtype=dtype), no_weight_decay=True)
        self.bias = Parameter(np.zeros(normalized_shape, dtype=dtype), no_weight_decay=True)

    def forward(self, x: Any) -> Any:
        out, cache = F.layernorm_forward(x, self.weight.data, self.bias.data, self.eps)
        self._save(cache)
        return out

    def backward(self, dout: Any) -> Any:
        dx, dg, db = F.layernorm_backward(dout, self._pop())
        self.weight.accumulate(dg)
        self.bias.accumulate(db)
        return dx

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GroupNorm(Module):
    """GroupNorm with PyTorch's signature, channels-last: x (B, H, W, C) -> same shape.

    The C = ``num_channels`` channels form ``num_groups`` groups of consecutive channels;
    each image's group is normalised on its own, so the result does not depend on the
    batch. weight (C,) = 1 and bias (C,) = 0 at init, absent with ``affine=False``.
    """

    def __init__(
        self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, dtype: Any = np.float32
    ) -> None:
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_groups = {num_groups} must be a positive divisor of num_channels = {num_channels}")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        self.weight: Parameter | None = Parameter(np.ones(num_channels, dtype=dtype), no_weight_decay=True) if affine else None
        self.bias: Parameter | None = Parameter(np.zeros(num_channels, dtype=dtype), no_weight_decay=True) if affine else None

    def forward(self, x: Any) -> Any:
        _check_map_channels("GroupNorm", x, self.num_channels)
        out, cache = F.group_norm_forward(x, _data(self.weight), _data(self.bias), self.num_groups, self.eps)
        self._save(cache)
        return out

    def backward(self, dout: Any) -> Any:
        dx, dg, db = F.group_norm_backward(dout, self._pop())
        if self.weight is not None and self.bias is not None:
            self.weight.accumulate(dg)
            self.bias.accumulate(db)
        return dx

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class BatchNorm2d(Module):
    """BatchNorm2d with PyTorch's signature and train/eval behaviour, channels-last (B, H, W, C).

    Training: normalise with the batch's per-channel mean and biased variance; update the
    buffers ``running_mean`` (init 0) and ``running_var`` (init 1) with ``momentum`` and
    the unbiased variance, and count ``num_batches_tracked``. ``momentum=None`` gives the
    cumulative average (factor 1 / num_batches_tracked), as in PyTorch. Evaluation:
    normalise with the running statistics. With ``track_running_stats=False`` there are no
    buffers and the batch statistics are used in both modes.

    The buffers are in ``state_dict`` under PyTorch's names but are not Parameters: the
    optimiser never updates them.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm2d: momentum must be in [0, 1] or None, got {momentum}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight: Parameter | None = Parameter(np.ones(num_features, dtype=dtype), no_weight_decay=True) if affine else None
        self.bias: Parameter | None = Parameter(np.zeros(num_features, dtype=dtype), no_weight_decay=True) if affine else None
        track = track_running_stats
        self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype) if track else None)
        self.register_buffer("running_var", np.ones(num_features, dtype=dtype) if track else None)
        self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64) if track else None)

    running_mean: Any
    running_var: Any
    num_batches_tracked: Any

    def forward(self, x: Any) -> Any:
        _check_map_channels("BatchNorm2d", x, self.num_features)
        update = self.training and self.running_mean is not None
        factor = 0.0
        if update:
            factor = 1.0 / (int(self.num_batches_tracked) + 1) if self.momentum is None else self.momentum
        out, cache = F.batch_norm_forward(
            x, _data(self.weight), _data(self.bias), self.running_mean, self.running_var, self.training, factor, self.eps
        )
        if update:  # counted once the forward has succeeded
            self.num_batches_tracked = self.num_batches_tracked + 1
        self._save(cache)
        return out

    def backward(self, dout: Any) -> Any:
        dx, dg, db = F.batch_norm_backward(dout, self._pop())
        if self.weight is not None and self.bias is not None:
            self.weight.accumulate(dg)
            self.bias.accumulate(db)
        return dx

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )


def _data(p: Parameter | None) -> Any:
    return None if p is None else p.data


def _check_map_channels(module: str, x: Any, C: int) -> None:
    """x's last axis holds C channels; an NCHW map (C on axis 1) gets a hint saying so."""
    try:
        check_channels(module, x, C)
    except ValueError as e:
        if getattr(x, "ndim", 0) == 4 and x.shape[1] == C:
            raise ValueError(
                f"{e}; twins-np maps are channels-last (B, H, W, C) and this one looks NCHW: pass x.transpose(0, 2, 3, 1)"
            ) from None
        raise
