"""PatchEmbed, PosConv (the PEG) and the transformer Block, as in timm's Twins."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from ..backend import default_rng
from ..functional._checks import check_channels, check_float, check_ndim
from .attention import GlobalSubSampleAttn, LocallyGroupedAttn
from .conv import Conv2d
from .dropout import DropPath
from .init import Rng
from .linear import Mlp
from .module import Identity, Module, Sequential
from .norm import LayerNorm

PADDINGS = ("floor", "corner")


class PatchEmbed(Module):
    """Image (or feature map) to tokens: conv k = s = patch_size, then LayerNorm (eps 1e-5).

    Shapes: x (B, C_in, H, W) NCHW -> tokens (B, N, C), size (H // p, W // p). With
    ``padding="floor"`` (timm's) the conv floors: pixels that do not fill a patch are dropped
    (and get zero gradient). With ``padding="corner"`` (mmsegmentation's ``AdaptivePadding``)
    zero rows and columns are added at the bottom and right first, so every pixel is covered
    and size is (ceil(H / p), ceil(W / p)). The parameter names are timm's (``proj``, ``norm``)
    either way; mmsegmentation calls the conv ``projection``.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        rng: Rng = None,
        dtype: Any = np.float32,
        padding: str = "floor",
    ) -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"PatchEmbed padding must be one of {PADDINGS}, got {padding!r}")
        g = default_rng(rng)
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.padding = padding
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.proj = Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, rng=g, dtype=dtype)
        self.norm = LayerNorm(embed_dim, eps=1e-5, dtype=dtype)

    def forward(self, x: Any) -> tuple[Any, tuple[int, int]]:
        check_float("x", x)
        check_ndim("x", x, 4, "(B, C, H, W)")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"PatchEmbed expects {self.in_chans} input channels (NCHW), got shape {tuple(x.shape)}")
        p = self.patch_size
        if self.padding == "floor" and (x.shape[2] < p or x.shape[3] < p):
            raise ValueError(f"input {x.shape[2]}x{x.shape[3]} is smaller than the patch size {p}")
        x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC (a view)
        pad = None
        if self.padding == "corner":
            x, pad = F.corner_pad_forward(x, p)
        y = self.proj(x)  # conv -> (B, Ho, Wo, C)
        B, Ho, Wo, C = y.shape
        out = self.norm(y.reshape(B, Ho * Wo, C))
        self._save((Ho, Wo, pad))
        return out, (Ho, Wo)

    def backward(self, dout: Any) -> Any:
        """dout (B, N, C) -> dx (B, C_in, H, W)."""
        Ho, Wo, pad = self._pop()
        dy = self.norm.backward(dout)
        dx = self.proj.backward(dy.reshape(dy.shape[0], Ho, Wo, dy.shape[-1]))
        if pad is not None:
            dx = F.corner_pad_backward(dx, pad)
        return dx.transpose(0, 3, 1, 2)  # NHWC -> NCHW

    def extra_repr(self) -> str:
        return "" if self.padding == "floor" else f"padding={self.padding!r}"


class PosConv(Module):
    """PEG: 3x3 depthwise conv (padding 1, bias) plus the residual; ``proj.0`` as in timm.

    Shapes: x (B, N, C), size (H, W) -> (B, N, C).
    """

    def __init__(self, in_chans: int, embed_dim: int = 768, stride: int = 1, rng: Rng = None, dtype: Any = np.float32) -> None:
        super().__init__()
        if stride != 1:
            raise ValueError(f"PosConv in Twins uses stride 1 (with the residual); got stride={stride}")
        if in_chans != embed_dim:
            raise ValueError(f"PosConv is depthwise: in_chans ({in_chans}) must equal embed_dim ({embed_dim})")
        self.proj = Sequential([Conv2d(in_chans, embed_dim, 3, 1, 1, groups=embed_dim, rng=default_rng(rng), dtype=dtype)])
        self.stride = stride
        for p in self.parameters():  # timm's no_weight_decay lists pos_block.*
            p.no_weight_decay = True

    def forward(self, x: Any, size: tuple[int, int]) -> Any:
        conv = self.proj[0]
        check_channels("PosConv", x, conv.weight.shape[0])
        out, cache = F.peg_forward(x, size, conv.weight.data, conv.bias.data)
        self._save(cache)
        return out

    def backward(self, dout: Any) -> Any:
        conv = self.proj[0]
        dx, dw, db = F.peg_backward(dout, self._pop())
        conv.weight.accumulate(dw)
        conv.bias.accumulate(db)
        return dx


class Block(Module):
    """Pre-norm transformer block.

        x = x + DropPath(Attn(LN1(x), size))
        x = x + DropPath(Mlp(LN2(x)))

    ``ws = 1`` gives GSA (with sub-sampling ``sr_ratio``), ``ws > 1`` gives LSA (with
    ``pad_mask``, see :class:`LocallyGroupedAttn`). The LayerNorms' ``norm_eps`` defaults to
    1e-5, as timm's ``Block`` (whose ``norm_layer`` is ``nn.LayerNorm``); the Twins model
    passes its own 1e-6.

    Shapes: x (B, N, C), size (H, W) -> (B, N, C).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        sr_ratio: int = 1,
        ws: int | None = None,
        norm_eps: float = 1e-5,
        rng: Rng = None,
        dtype: Any = np.float32,
        sr_mode: str = "conv",
        pad_mask: str | None = None,
    ) -> None:
        super().__init__()
        g = default_rng(rng)
        self.norm1 = LayerNorm(dim, eps=norm_eps, dtype=dtype)
        if ws is None or ws == 1:
            # timm's `ws is None` branch (plain ViT Attention) is never reached from Twins;
            # sr_ratio = 1 GSA is exactly that attention, so None maps to it.
            self.attn: Module = GlobalSubSampleAttn(
                dim, num_heads, attn_drop, proj_drop, sr_ratio, rng=g, dtype=dtype, sr_mode=sr_mode
            )
        else:
            self.attn = LocallyGroupedAttn(dim, num_heads, attn_drop, proj_drop, ws, rng=g, dtype=dtype, pad_mask=pad_mask)
        self.drop_path1 = DropPath(drop_path, rng=g) if drop_path > 0.0 else Identity()
        self.norm2 = LayerNorm(dim, eps=norm_eps, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, rng=g, dtype=dtype)
        self.drop_path2 = DropPath(drop_path, rng=g) if drop_path > 0.0 else Identity()

    def forward(self, x: Any, size: tuple[int, int]) -> Any:
        x = x + self.drop_path1(self.attn(self.norm1(x), size))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        self._save(True)  # the children hold the caches; this marks "forward happened"
        return x

    def backward(self, dout: Any) -> Any:
        self._pop()
        # second residual: x2 = x1 + mlp_branch(x1), so dx1 = dout + branch backward
        dx = dout + self.norm2.backward(self.mlp.backward(self.drop_path2.backward(dout)))
        # first residual: x1 = x + attn_branch(x)
        dx += self.norm1.backward(self.attn.backward(self.drop_path1.backward(dx)))
        return dx
