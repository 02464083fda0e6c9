"""LSA and GSA as modules, with timm's class names, arguments and parameter names.

Both take ``forward(x, size)`` with x (B, N, C) and size = (H, W), and return (B, N, C).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from ..backend import default_rng
from ..functional._checks import check_channels, check_heads
from .conv import Conv2d
from .dropout import Dropout
from .init import Rng
from .linear import Linear
from .module import Module
from .norm import LayerNorm


class LocallyGroupedAttn(Module):
    """LSA: self-attention inside non-overlapping ws x ws windows (Twins-SVT).

    Parameters: ``qkv`` Linear(C, 3C), ``proj`` Linear(C, C).

    Args:
        dim: channels C.  num_heads: heads (C divisible by it).
        attn_drop: dropout on attention probabilities.  proj_drop: dropout after proj.
        ws: window size (>= 2; ws = 1 selects GSA in Twins, so it is refused here as in timm).
        pad_mask: None (timm's: the zero-padded tokens are ordinary keys), ``"mmseg"``
            (mmsegmentation's additive mask, with its rule for when it applies) or ``"padded"``
            (always mask the padding); see :func:`twins_np.functional.window_pad_mask`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        ws: int = 1,
        rng: Rng = None,
        dtype: Any = np.float32,
        pad_mask: str | None = None,
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        if pad_mask is not None and pad_mask not in F.PAD_MASK_RULES:
            raise ValueError(f"pad_mask must be None or one of {F.PAD_MASK_RULES}, got {pad_mask!r}")
        if int(ws) != ws or ws < 2:
            raise ValueError(
                f"LocallyGroupedAttn needs a window size ws >= 2, got {ws!r} "
                "(in Twins, ws = 1 means the block uses GlobalSubSampleAttn instead)"
            )
        g = default_rng(rng)
        self.dim, self.num_heads, self.ws = dim, num_heads, int(ws)
        self.pad_mask = pad_mask
        self.attn_drop = attn_drop
        self.qkv = Linear(dim, dim * 3, rng=g, dtype=dtype)
        self.proj = Linear(dim, dim, rng=g, dtype=dtype)
        self.proj_drop = Dropout(proj_drop, rng=g)
        self.rng = g

    def forward(self, x: Any, size: tuple[int, int]) -> Any:
        check_channels(type(self).__name__, x, self.dim)
        out, cache = F.lsa_forward(
            x, size, self.qkv.weight.data, self.qkv.b, self.proj.weight.data, self.proj.b,
            num_heads=self.num_heads, ws=self.ws, attn_drop=self.attn_drop, rng=self.rng, training=self.training,
            pad_mask=self.pad_mask,
        )  # fmt: skip
        self._save(cache)
        return self.proj_drop(out)

    def backward(self, dout: Any) -> Any:
        cache = self._pop()  # first, so a second backward names this module
        dx, dqkv_w, dqkv_b, dproj_w, dproj_b = F.lsa_backward(self.proj_drop.backward(dout), cache)
        self.qkv.accumulate_grads(dqkv_w, dqkv_b)
        self.proj.accumulate_grads(dproj_w, dproj_b)
        return dx

    def extra_repr(self) -> str:
        mask = "" if self.pad_mask is None else f", pad_mask={self.pad_mask!r}"
        return f"dim={self.dim}, num_heads={self.num_heads}, ws={self.ws}{mask}"


class GlobalSubSampleAttn(Module):
    """GSA: every token queries keys/values sub-sampled by a k = s = sr conv (+ LayerNorm).

    Parameters: ``q`` Linear(C, C), ``kv`` Linear(C, 2C), ``proj`` Linear(C, C) and, when
    sr_ratio > 1, ``sr`` Conv2d(C, C, sr, sr) and ``norm`` LayerNorm(C, eps=1e-5).
    With sr_ratio = 1 it is plain global multi-head self-attention.

    ``sr_mode`` picks the sub-sampling function (Twins Table 9): ``"conv"`` (timm's, the
    default), ``"avg"`` (average pooling, no ``sr`` parameters) or ``"sep"``
    (depthwise-separable: ``sr_dw`` Conv2d(C, C, sr, sr, groups=C) then ``sr_pw`` Linear(C, C)).
    Only ``"conv"`` has timm's state_dict keys.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        sr_ratio: int = 1,
        rng: Rng = None,
        dtype: Any = np.float32,
        sr_mode: str = "conv",
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        if int(sr_ratio) != sr_ratio or sr_ratio < 1:
            raise ValueError(f"sr_ratio must be a positive integer, got {sr_ratio!r}")
        if sr_mode not in F.SUBSAMPLE_MODES:
            raise ValueError(f"sr_mode must be one of {F.SUBSAMPLE_MODES}, got {sr_mode!r}")
        self.sr_mode = sr_mode
        g = default_rng(rng)
        self.dim, self.num_heads, self.sr_ratio = dim, num_heads, int(sr_ratio)
        self.attn_drop = attn_drop
        self.q = Linear(dim, dim, rng=g, dtype=dtype)
        self.kv = Linear(dim, dim * 2, rng=g, dtype=dtype)
        self.proj = Linear(dim, dim, rng=g, dtype=dtype)
        self.proj_drop = Dropout(proj_drop, rng=g)
        # sr_ratio == 1: no sub-sampling conv and no extra LayerNorm (plain global MHSA)
        self.sr: Conv2d | None = None
        self.sr_dw: Conv2d | None = None
        self.sr_pw: Linear | None = None
        self.norm: LayerNorm | None = None
        if sr_ratio > 1:
            if sr_mode == "conv":
                self.sr = Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio, rng=g, dtype=dtype)
            elif sr_mode == "sep":
                self.sr_dw = Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio, groups=dim, rng=g, dtype=dtype)
                self.sr_pw = Linear(dim, dim, rng=g, dtype=dtype)
            self.norm = LayerNorm(dim, eps=1e-5, dtype=dtype)
        self.rng = g

    def forward(self, x: Any, size: tuple[int, int]) -> Any:
        check_channels(type(self).__name__, x, self.dim)
        sub: dict[str, Any] = {}
        if self.norm is not None:
            sub = dict(norm_w=self.norm.weight.data, norm_b=self.norm.bias.data, norm_eps=self.norm.eps, sr_mode=self.sr_mode)
            sub["sr_params"] = [w for m in self._sr_modules() for w in (m.weight.data, m.b)]
        out, cache = F.gsa_forward(
            x, size, self.q.weight.data, self.q.b, self.kv.weight.data, self.kv.b, self.proj.weight.data, self.proj.b,
            num_heads=self.num_heads, sr_ratio=self.sr_ratio, attn_drop=self.attn_drop, rng=self.rng,
            training=self.training, **sub,
        )  # fmt: skip
        self._save(cache)
        return self.proj_drop(out)

    def backward(self, dout: Any) -> Any:
        cache = self._pop()  # first, so a second backward names this module
        dx, dq_w, dq_b, dkv_w, dkv_b, dproj_w, dproj_b, dsr, dnorm_w, dnorm_b = F.gsa_backward(
            self.proj_drop.backward(dout), cache
        )
        self.q.accumulate_grads(dq_w, dq_b)
        self.kv.accumulate_grads(dkv_w, dkv_b)
        self.proj.accumulate_grads(dproj_w, dproj_b)
        if self.norm is not None:
            self.norm.weight.accumulate(dnorm_w)
            self.norm.bias.accumulate(dnorm_b)
        for k, m in enumerate(self._sr_modules()):  # (weight, bias) pairs in sr_params' order
            m.accumulate_grads(dsr[2 * k], dsr[2 * k + 1])
        return dx

    def _sr_modules(self) -> list[Any]:
        """The sub-sampling's layers in ``SUBSAMPLE_PARAMS`` order: [sr] (conv), [] (avg), [sr_dw, sr_pw] (sep)."""
        return [m for m in (self.sr, self.sr_dw, self.sr_pw) if m is not None]

    def extra_repr(self) -> str:
        mode = "" if self.sr_mode == "conv" else f", sr_mode={self.sr_mode!r}"
        return f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}{mode}"
