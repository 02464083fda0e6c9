"""Activation layers without parameters (the FFN's GELU is fused into :class:`twins_np.nn.Mlp`)."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .module import Module


class ReLU(Module):
    """max(x, 0), elementwise; no parameters. Shapes: any -> same."""

    def forward(self, x: Any) -> Any:
        out, cache = F.relu_forward(x)
        self._save(cache)
        return out

    def backward(self, dout: Any) -> Any:
        return F.relu_backward(dout, self._pop())
