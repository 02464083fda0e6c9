"""Linear layers: Linear and timm's Mlp (the transformer block's FFN).

Shapes follow PyTorch's modules: x (..., in_features) -> (..., out_features).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from ..backend import default_rng
from .dropout import Dropout
from .init import Rng, as_dtype, trunc_normal
from .module import Module, Parameter


class WeightBias(Module):
    """Base of Linear and Conv2d: a ``weight`` and an optional ``bias``."""

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


class Linear(WeightBias):
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
