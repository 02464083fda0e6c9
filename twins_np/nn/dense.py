"""Modules for dense-prediction heads: ReLU, GroupNorm, BatchNorm2d.

Each owns its parameters (and, for BatchNorm2d, its running statistics) and calls the
functional pairs of :mod:`twins_np.functional.activation` and
:mod:`twins_np.functional.norm2d`. Signatures, defaults and ``state_dict`` names equal
PyTorch's (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``);
the maps are channels-last, x (B, H, W, C), like every twins-np conv.
"""

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
