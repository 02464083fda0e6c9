"""Upsample and AdaptiveAvgPool2d: torch's ``nn.Upsample`` and ``nn.AdaptiveAvgPool2d`` for feature maps, channels-last.

Shapes: x (B, H, W, C) -> (B, Ho, Wo, C), as every spatial module of twins-np; the
arguments and their meaning are torch's (``size`` or ``scale_factor``; ``mode`` "nearest"
or "bilinear"; bilinear with ``align_corners=False`` only).
"""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .module import Module

MODES = ("nearest", "bilinear")


class Upsample(Module):
    """Resize feature maps, equal to ``torch.nn.Upsample`` (no parameters).

    ``Upsample(scale_factor=2, mode="nearest")`` copies each pixel to a 2x2 block (the
    FPN's top-down path); ``Upsample(size=(Ho, Wo), mode="bilinear")`` resizes to any
    size, up or down (the head's logits to the image size).

    Args:
        size: (Ho, Wo) output size, or None when ``scale_factor`` is given.
        scale_factor: a positive number or a pair; Ho = floor(H * s).
        mode: "nearest" or "bilinear".
        align_corners: None or False (torch's default for bilinear); True is not supported.
    """

    def __init__(
        self,
        size: Any = None,
        scale_factor: Any = None,
        mode: str = "nearest",
        align_corners: bool | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if (size is None) == (scale_factor is None):
            raise ValueError("Upsample needs exactly one of 'size' and 'scale_factor'")
        if align_corners:
            raise ValueError("align_corners=True is not supported; use align_corners=False (or None)")
        if align_corners is not None and mode == "nearest":
            # torch raises the same: align_corners only has a meaning for interpolating modes
            raise ValueError("align_corners option can only be set with the interpolating mode 'bilinear'")
        self.size = None if size is None else tuple(int(s) for s in (size if isinstance(size, (tuple, list)) else (size, size)))
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x: Any) -> Any:
        if self.mode == "nearest" and self.size is None and self.scale_factor == 2:
            out, cache2x = F.nearest_upsample2x_forward(x)
            self._save((F.nearest_upsample2x_backward, cache2x))
            return out
        fwd = F.nearest_resize_forward if self.mode == "nearest" else F.bilinear_resize_forward
        out, cache = fwd(x, self.size, self.scale_factor)
        self._save((F.bilinear_resize_backward, cache))
        return out

    def backward(self, dout: Any) -> Any:
        backward, cache = self._pop()
        return backward(dout, cache)

    def extra_repr(self) -> str:
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{what}, mode={self.mode!r}"


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size, equal to ``torch.nn.AdaptiveAvgPool2d`` (no parameters).

    UPerNet's pyramid pooling module uses it with output sizes 1, 2, 3 and 6; torch's bin
    boundaries (see :func:`twins_np.functional.adaptive_avg_pool_forward`).

    Shapes: x (B, H, W, C) -> (B, Ho, Wo, C).
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
            raise ValueError(f"output_size must be a positive int or a pair of them, got {output_size!r}")
        self.output_size = (int(size[0]), int(size[1]))

    def forward(self, x: Any) -> Any:
        out, cache = F.adaptive_avg_pool_forward(x, self.output_size)
        self._save(cache)
        return out

    def backward(self, dout: Any) -> Any:
        return F.adaptive_avg_pool_backward(dout, self._pop())

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
