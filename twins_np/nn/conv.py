"""Convolution layers: Conv2d (every kind twins-np has) and mmcv's ConvModule (conv + norm + ReLU).

Shapes follow PyTorch's modules except that maps are channels-last, (B, H, W, C): Twins
keeps its tokens as (B, N, C), and (B, H, W, C) is then a free reshape (see
:mod:`twins_np.functional.patch_conv`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import functional as F
from ..backend import default_rng
from .activation import ReLU
from .init import Rng, as_dtype, conv_normal
from .linear import WeightBias
from .module import Module, Parameter
from .norm import BatchNorm2d, GroupNorm

NORMS = (None, "gn", "bn")


class Conv2d(WeightBias):
    """2-D convolution with PyTorch's signature and parameter layout, channels-last I/O.

    Any ``kernel_size``, ``stride`` and ``padding`` with ``groups == 1`` (the general conv of
    :mod:`twins_np.functional.conv2d`, for dense heads), plus the depthwise convs Twins uses:
    ``kernel_size == stride, padding == 0, groups == channels`` (separable GSA sub-sampling)
    and ``3x3, stride 1, padding 1, groups == channels`` (PEG). ``kernel_size == stride,
    padding == 0, groups == 1`` (patch embedding, GSA sub-sampling) keeps its own
    non-overlapping routine, which floors like the general one but needs no im2col copy.

    Shapes: x (B, H, W, C_in) -> (B, H', W', C_out) with H' = (H + 2 padding - k) // stride + 1;
    weight (C_out, C_in/groups, k, k).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = True,
        rng: Rng = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        patch = kernel_size == stride and padding == 0
        dw = groups == in_channels == out_channels
        if patch and groups == 1:
            self.kind = "patch"  # patch embedding, GSA sub-sampling
        elif patch and dw:
            self.kind = "depthwise_patch"  # depthwise-separable GSA sub-sampling
        elif (kernel_size, stride, padding) == (3, 1, 1) and dw:
            self.kind = "depthwise3x3"  # the PEG
        elif groups == 1:
            self.kind = "general"  # dense heads: k x k, any stride and zero padding
            if kernel_size < 1 or stride < 1 or padding < 0:
                raise ValueError(
                    f"Conv2d needs kernel_size >= 1, stride >= 1 and padding >= 0; got kernel_size={kernel_size}, "
                    f"stride={stride}, padding={padding}"
                )
        else:
            raise ValueError(
                "twins-np's Conv2d implements groups == 1 with any kernel, stride and padding, and the two grouped "
                "convolutions Twins needs: kernel_size == stride with padding 0 and groups == channels, or a 3x3 "
                f"depthwise conv with stride 1 and padding 1; got kernel_size={kernel_size}, "
                f"stride={stride}, padding={padding}, groups={groups}"
            )
        self.kernel_size, self.stride, self.padding, self.groups = kernel_size, stride, padding, groups
        shape = (out_channels, in_channels // groups, kernel_size, kernel_size)
        self.weight = Parameter(as_dtype(conv_normal(default_rng(rng), shape, groups), dtype))
        self.bias: Parameter | None = Parameter(np.zeros(out_channels, dtype=dtype), no_weight_decay=True) if bias else None

    _OPS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
        "patch": (F.patch_conv_forward, F.patch_conv_backward),
        "depthwise_patch": (F.depthwise_patch_conv_forward, F.depthwise_patch_conv_backward),
        "depthwise3x3": (F.depthwise_conv3x3_forward, F.depthwise_conv3x3_backward),
        "general": (F.conv2d_forward, F.conv2d_backward),
    }

    def forward(self, x: Any) -> Any:
        if self.kind == "general":
            out, cache = F.conv2d_forward(x, self.weight.data, self.b, self.stride, self.padding)
            self._save(cache)
            return out
        out, cache = self._OPS[self.kind][0](x, self.weight.data, self.b)
        self._save(cache)
        return out

    def backward(self, dout: Any) -> Any:
        dx, dw, db = self._OPS[self.kind][1](dout, self._pop())
        self.accumulate_grads(dw, db)
        return dx

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i * self.groups}, {o}, kernel_size={k}, stride={self.stride}, padding={self.padding}, groups={self.groups}"


class ConvModule(Module):
    """mmcv's ConvModule: conv, then an optional norm, then an optional ReLU.

    Keys as mmcv's: ``conv.weight`` (and ``conv.bias`` only without a norm, as mmcv's
    ``bias="auto"``), ``gn.weight``/``gn.bias`` or ``bn.*`` for the norm.

    Shapes: x (B, H, W, C_in) -> (B, H, W, C_out) (stride 1, "same" padding for k = 3).

    Args:
        norm: None, ``"gn"`` (GroupNorm with ``num_groups``) or ``"bn"`` (BatchNorm2d).
        act: apply ReLU after the norm.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        norm: str | None = None,
        act: bool = False,
        num_groups: int = 32,
        rng: Rng = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv = Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=norm is None, rng=rng, dtype=dtype)
        self.norm_name = norm
        if norm == "gn":
            if out_channels % num_groups:
                raise ValueError(f"GroupNorm: {out_channels} channels are not divisible into num_groups = {num_groups}")
            self.gn = GroupNorm(num_groups, out_channels, dtype=dtype)
        elif norm == "bn":
            self.bn = BatchNorm2d(out_channels, dtype=dtype)
        self.activate = ReLU() if act else None

    @property
    def norm(self) -> Module | None:
        return None if self.norm_name is None else getattr(self, self.norm_name)

    def forward(self, x: Any) -> Any:
        if x.shape[-1] != self.in_channels:
            raise ValueError(
                f"ConvModule was built for {self.in_channels} input channels, got a map of shape {tuple(x.shape)} "
                f"(channels-last, C = {x.shape[-1]})"
            )
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activate is not None:
            x = self.activate(x)
        return x

    def backward(self, dout: Any) -> Any:
        if self.activate is not None:
            dout = self.activate.backward(dout)
        if self.norm is not None:
            dout = self.norm.backward(dout)
        return self.conv.backward(dout)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, norm={self.norm_name}, act={self.activate is not None}"
