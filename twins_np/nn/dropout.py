"""Dropout layers, each with its own seeded generator: elementwise, drop path, channel.

All three draw their masks with :func:`twins_np.functional.dropout_mask` (one rule) and are
the identity in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import functional as F
from ..backend import default_rng, get_xp
from .init import Rng
from .module import Module


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


class Dropout2d(Module):
    """Channel dropout (torch's ``nn.Dropout2d``, used before mmseg's classifier): each (image,
    channel) map is zeroed with probability p, the kept ones scaled by 1/(1-p).

    Shapes: x (B, H, W, C) -> same; the mask is (B, 1, 1, C), broadcast over the map.
    """

    def __init__(self, p: float = 0.5, rng: Rng = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p
        self.rng = default_rng(rng)

    def forward(self, x: Any) -> Any:
        mask = None
        if self.training and self.p > 0.0:  # one draw per (image, channel), broadcast over the map
            mask = F.dropout_mask(self.rng, (x.shape[0], 1, 1, x.shape[-1]), self.p, x.dtype, get_xp(x))
        out, cache = F.dropout_forward(x, self.p, mask=mask, training=self.training)
        self._save(cache)
        return out

    def backward(self, dout: Any) -> Any:
        return F.dropout_backward(dout, self._pop())

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Drop-path rate of every block: linear from 0 to ``drop_path_rate`` over all blocks.

    timm's Twins builds ``linspace(0, drop_path_rate, sum(depths))`` and gives block j
    of stage k the entry ``sum(depths[:k]) + j``. This returns the same list split per
    stage, so ``rates[k][j]`` is the rate of that block. The values are float64; timm's
    come from a float32 ``torch.linspace`` and differ from these by float32 rounding
    (relative ~1e-7), which does not matter for a drop probability.

    Args:
        drop_path_rate: rate of the last block, in [0, 1].
        depths: number of blocks per stage, e.g. ``(2, 2, 10, 4)`` for Twins-SVT-S.

    Returns:
        one list of Python floats per stage, ``len(rates[k]) == depths[k]``.

    Raises:
        ValueError: if drop_path_rate is outside [0, 1] or a depth is negative.
    """
    if not 0.0 <= float(drop_path_rate) <= 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1], got {drop_path_rate}")
    if any(int(d) < 0 for d in depths):
        raise ValueError(f"depths must be >= 0, got {list(depths)}")
    flat = np.linspace(0.0, float(drop_path_rate), sum(int(d) for d in depths)).tolist()
    rates: list[list[float]] = []
    start = 0
    for d in depths:
        rates.append(flat[start : start + int(d)])
        start += int(d)
    return rates
