"""Basic modules: Linear, LayerNorm, Conv2d, Mlp, Dropout, DropPath.

Shapes follow PyTorch's modules except for Conv2d, which works channels-last (see
:mod:`twins_np.functional.conv` for why).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import functional as F
from ..backend import default_rng
from .init import as_dtype, conv_normal, trunc_normal
from .module import Module, Parameter

Rng = np.random.Generator | int | None


class _WeightBias(Module):
    """Shared by Linear and Conv2d: a ``weight`` and an optional ``bias``."""

    weight: Parameter
    bias: Parameter | None

    @property
    def b(self) -> Any:
        """The bias array, or None for a layer without bias."""
        return None if self.bias is None else self.bias.data

    def accumulate_grads(self, dw: Any, db: Any) -> None:
        """Add a weight and bias gradient (used by modules that call the functional ops)."""
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)


class Linear(_WeightBias):
    """``y = x W^T + b`` over the last axis. weight (out, in), bias (out,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng: Rng = None, dtype: Any = np.float32) -> None:
        super().__init__()
        g = default_rng(rng)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(as_dtype(trunc_normal(g, (out_features, in_features)), dtype))
        self.bias: Parameter | None = Parameter(np.zeros(out_features, dtype=dtype), no_weight_decay=True) if bias else None

    def forward(self, x: Any) -> Any:
        out, cache = F.linear_forward(x, self.weight.data, self.b)
        self._save(cache)
        return out

    def backward(self, dout: Any) -> Any:
        cache = self._pop()
        if getattr(dout, "dtype", None) != cache.x.dtype:
            # a float64 dout would make dx float64 while the parameters stay float32
            raise TypeError(
                f"Linear.backward: dout is {getattr(dout, 'dtype', type(dout).__name__)} but the forward ran in {cache.x.dtype}"
            )
        dx, dw, db = F.linear_backward(dout, cache)
        self.accumulate_grads(dw, db)
        return dx

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


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


class Conv2d(_WeightBias):
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


class Dropout(Module):
    """Elementwise dropout with its own seeded generator (identity in eval or at p = 0).

    ``p`` defaults to 0.5, as ``torch.nn.Dropout``; Twins' modules pass their rates.
    """

    def __init__(self, p: float = 0.5, rng: Rng = None) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout p must be in [0, 1], got {p}")
        self.p = p
        self.rng = default_rng(rng)

    def forward(self, x: Any) -> Any:
        out, cache = F.dropout_forward(x, self.p, self.rng, training=self.training)
        self._save(cache)
        return out

    def backward(self, dout: Any) -> Any:
        return F.dropout_backward(dout, self._pop())


class DropPath(Module):
    """Stochastic depth: drops a residual branch per sample with probability drop_prob.

    ``mask`` may be set before a forward to impose a (B,) mask (used by parity tests).
    """

    def __init__(self, drop_prob: float = 0.0, rng: Rng = None) -> None:
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
        self.drop_prob = drop_prob
        self.rng = default_rng(rng)
        self.mask: Any = None

    def forward(self, x: Any) -> Any:
        out, cache = F.drop_path_forward(x, self.drop_prob, self.rng, self.mask, self.training)
        self._save(cache)
        return out

    def backward(self, dout: Any) -> Any:
        return F.drop_path_backward(dout, self._pop())

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(Module):
    """timm's Mlp: fc1 (C -> hidden) -> exact GELU -> dropout -> fc2 (hidden -> C) -> dropout.

    Shapes: x (..., in_features) -> (..., out_features).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        drop: float = 0.0,
        rng: Rng = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        g = default_rng(rng)
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features, rng=g, dtype=dtype)
        self.drop1 = Dropout(drop, rng=g)
        self.fc2 = Linear(hidden_features, out_features, rng=g, dtype=dtype)
        self.drop2 = Dropout(drop, rng=g)

    def forward(self, x: Any) -> Any:
        if self.drop1.p == 0.0 and self.drop2.p == 0.0:
            # the common case: one fused functional call, one cache
            out, cache = F.mlp_forward(x, self.fc1.weight.data, self.fc1.b, self.fc2.weight.data, self.fc2.b)
            self._save(("fused", cache))
            return out
        h = self.fc1(x)
        a, act_cache = F.gelu_forward(h)
        out = self.drop2(self.fc2(self.drop1(a)))
        self._save(("steps", act_cache))
        return out

    def backward(self, dout: Any) -> Any:
        kind, cache = self._pop()
        if kind == "fused":
            dx, dw1, db1, dw2, db2 = F.mlp_backward(dout, cache)
            self.fc1.accumulate_grads(dw1, db1)
            self.fc2.accumulate_grads(dw2, db2)
            return dx
        da = self.drop1.backward(self.fc2.backward(self.drop2.backward(dout)))
        return self.fc1.backward(F.gelu_backward(da, cache))
