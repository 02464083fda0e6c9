"""Segmenters on a Twins backbone: Semantic FPN and UPerNet, the heads of the Twins paper (Table 5).

Semantic FPN (Kirillov et al., "Panoptic Feature Pyramid Networks", 2019) in
mmsegmentation's layout, so its neck and head ``state_dict`` keys are mmsegmentation's::

    image (B, 3, H, W)
      -> backbone: Twins stages, maps at strides r_0 < r_1 < ... (4, 8, 16, 32)
      -> neck (FPN): 1x1 lateral conv per level; top-down, each level adds the nearest
         upsampling of the level above; a 3x3 conv per level
      -> decode_head (FPNHead): per level, [3x3 conv + norm + ReLU, bilinear 2x] repeated
         until stride r_0; the levels summed; channel dropout; 1x1 classifier conv_seg
      -> logits at stride r_0, resized bilinearly to (H, W)  -> (B, K, H, W)

UPerNet (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", 2018), the head
the paper uses for Twins-SVT on ADE20K, as mmsegmentation's ``UPerHead`` (no neck)::

    image -> backbone maps c_0 .. c_{S-1}
      -> decode_head (UPerHead): pyramid pooling on c_{S-1} (adaptive average pooling to
         1x1, 2x2, 3x3, 6x6, each + 1x1 ConvModule, resized back bilinearly), concatenated
         with c_{S-1}, a 3x3 ConvModule ("bottleneck"); 1x1 lateral ConvModules on c_0 ..
         c_{S-2}; a top-down path of bilinear resizes and sums; a 3x3 ConvModule per level
         but the last; every level resized onto level 0 and concatenated; a 3x3 ConvModule
         ("fpn_bottleneck"), dropout, conv_seg
      -> logits at stride r_0, resized to (H, W)
    training only: auxiliary_head (FCNHead) on c_2: 3x3 ConvModule, dropout, conv_seg, its
    loss weighted 0.4 (mmsegmentation's config)

Notation: B batch, S levels, (H_s, W_s) the level-s map, C_s backbone channels, ``F`` the
neck's channels (256 in the paper), ``D`` the head's (128), K classes. Inside the neck and
head every map is channels-last (B, H_s, W_s, C), as every twins-np conv; the image and
the logits are NCHW, as in torch.

Everything here is a composition of modules from :mod:`twins_np.nn` and functional pairs
(the top-down and level-sum resizes, which have no parameters); each ``backward`` runs the
forward's steps in reverse, and the sums of the forward become explicit gradient sums.
Multiply-adds are counted outside the models, by :func:`twins_np.analysis.count_flops`,
which walks a segmenter as it walks a Twins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .. import functional as F
from ..backend import default_rng, get_xp
from ..functional._checks import check_float, check_ndim
from ..nn import AdaptiveAvgPool2d, Conv2d, ConvModule, Dropout2d, Module, ModuleList, Sequential, Upsample
from ..nn.init import Rng
from .base import LossModel
from .registry import MODEL_CONFIGS, PAPER_MODELS, create_model
from .twins import Twins


class FPNCache(NamedTuple):
    up: list[Any]  # up[i]: ResizeCache of the nearest resize of level i onto level i - 1 (up[0] None)


class FPN(Module):
    """The FPN neck: lateral 1x1 convs, a top-down path of nearest upsampling and sums, 3x3 convs.

    With L_s = lateral_convs[s](c_s) and the top-down sums (from the coarsest level down)::

        P'_{S-1} = L_{S-1},   P'_s = L_s + nearest(P'_{s+1}, size of L_s),   out_s = fpn_convs[s](P'_s)

    ``nearest`` resizes onto the finer level's size, as mmsegmentation does: with Twins'
    flooring patch embeddings a level is not always exactly twice the next (25 rows over 12).
    No norm, no activation (mmsegmentation's FPN defaults).

    Shapes: forward([ (B, H_s, W_s, C_s) for s ]) -> [ (B, H_s, W_s, F) for s ];
    backward(list of S gradients) -> list of S gradients of the inputs.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, rng: Rng = None, dtype: Any = np.float32) -> None:
        super().__init__()
        g = default_rng(rng)
        self.in_channels, self.out_channels = tuple(int(c) for c in in_channels), int(out_channels)
        self.lateral_convs = ModuleList([ConvModule(c, out_channels, 1, rng=g, dtype=dtype) for c in self.in_channels])
        self.fpn_convs = ModuleList(
            [ConvModule(out_channels, out_channels, 3, padding=1, rng=g, dtype=dtype) for _ in self.in_channels]
        )

    def forward(self, feats: Sequence[Any]) -> list[Any]:  # type: ignore[override]
        _check_levels("FPN", feats, self.in_channels)
        lat = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        up: list[Any] = [None] * len(lat)
        for s in range(len(lat) - 1, 0, -1):  # top-down: the coarsest level first
            y, up[s] = F.nearest_resize_forward(lat[s], lat[s - 1].shape[1:3])
            lat[s - 1] = lat[s - 1] + y
        self._save(FPNCache(up))
        return [conv(p) for conv, p in zip(self.fpn_convs, lat)]

    def backward(self, grads: Sequence[Any]) -> list[Any]:  # type: ignore[override]
        up = self._pop().up
        if len(grads) != len(up):
            raise ValueError(f"FPN.backward needs {len(up)} gradients, one per level, got {len(grads)}")
        # dP'_s: from out_s's conv, plus (for s > 0) what P'_{s-1} = L_{s-1} + nearest(P'_s) sends back
        dp = [conv.backward(g) for conv, g in zip(self.fpn_convs, grads)]
        for s in range(1, len(dp)):
            dp[s] = dp[s] + F.resize_backward(dp[s - 1], up[s])
        return [conv.backward(d) for conv, d in zip(self.lateral_convs, dp)]

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"


class FPNHeadCache(NamedTuple):
    sizes: list[tuple[int, int]]  # (H, W) of each scale head's output, before the sum
    resize: list[Any]  # ResizeCache of the bilinear resize onto level 0 (None where sizes agree)


class FPNHead(Module):
    """The Semantic FPN head (mmsegmentation's ``FPNHead``).

    Level s (stride r_s) goes through ``max(1, log2(r_s / r_0))`` repetitions of
    [3x3 ConvModule (conv + norm + ReLU), then bilinear 2x upsampling when r_s > r_0], which
    brings it to stride r_0; the levels are summed (a level that does not land exactly on
    level 0's size, e.g. 24 rows for 25, is resized bilinearly onto it first), then channel
    dropout and the 1x1 classifier ``conv_seg``.

    Shapes: forward([ (B, H_s, W_s, C_s) for s ]) -> logits (B, H_0, W_0, K);
    backward(dlogits) -> list of S gradients of the inputs.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        feature_strides: Sequence[int],
        norm: str | None = "gn",
        num_groups: int = 32,
        dropout_ratio: float = 0.1,
        rng: Rng = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        strides = [int(s) for s in feature_strides]
        if len(strides) != len(in_channels):
            raise ValueError(f"FPNHead: {len(in_channels)} in_channels but {len(strides)} feature_strides")
        if any(s <= 0 or s & (s - 1) for s in strides) or strides != sorted(strides):
            raise ValueError(f"feature_strides must be increasing powers of 2, got {tuple(strides)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        g = default_rng(rng)
        self.in_channels, self.channels, self.num_classes = tuple(int(c) for c in in_channels), int(channels), int(num_classes)
        self.feature_strides = tuple(strides)
        self.scale_heads = ModuleList()
        for c, s in zip(self.in_channels, strides):
            layers: list[Module] = []
            for k in range(max(1, int(math.log2(s) - math.log2(strides[0])))):
                layers.append(ConvModule(c if k == 0 else channels, channels, 3, 1, norm, True, num_groups, g, dtype))
                if s != strides[0]:
                    layers.append(Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(Sequential(layers))
        self.dropout = Dropout2d(dropout_ratio, g)
        self.conv_seg = _classifier(channels, num_classes, g, dtype)

    def forward(self, feats: Sequence[Any]) -> Any:  # type: ignore[override]
        _check_levels("FPNHead", feats, self.in_channels)
        out = self.scale_heads[0](feats[0])
        sizes: list[tuple[int, int]] = [tuple(out.shape[1:3])]
        resize: list[Any] = [None]
        for head, f in zip(list(self.scale_heads)[1:], feats[1:]):
            y = head(f)
            sizes.append(tuple(y.shape[1:3]))
            cache: Any = None
            if y.shape[1:3] != out.shape[1:3]:
                y, cache = F.bilinear_resize_forward(y, out.shape[1:3])
            resize.append(cache)
            out = out + y
        self._save(FPNHeadCache(sizes, resize))
        return self.conv_seg(self.dropout(out))

    def backward(self, dlogits: Any) -> list[Any]:
        cache = self._pop()
        dsum = self.dropout.backward(self.conv_seg.backward(dlogits))
        # the sum hands the same gradient to every level
        grads = []
        for head, rc in zip(self.scale_heads, cache.resize):
            grads.append(head.backward(dsum if rc is None else F.resize_backward(dsum, rc)))
        return grads

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, channels={self.channels}, num_classes={self.num_classes}, "
            f"feature_strides={self.feature_strides}"
        )


def _check_levels(who: str, feats: Sequence[Any], channels: tuple[int, ...]) -> None:
    if not isinstance(feats, (list, tuple)) or len(feats) != len(channels):
        n = len(feats) if isinstance(feats, (list, tuple)) else type(feats).__name__
        raise ValueError(f"{who} takes a list of {len(channels)} maps (one per level), got {n}")
    for s, (f, c) in enumerate(zip(feats, channels)):
        check_float(f"feats[{s}]", f)
        check_ndim(f"feats[{s}]", f, 4, "(B, H, W, C), channels-last")
        if f.shape[-1] != c:
            raise ValueError(f"{who}: level {s} must have {c} channels (channels-last, last axis), got shape {tuple(f.shape)}")


def _classifier(channels: int, num_classes: int, g: Any, dtype: Any) -> Conv2d:
    """mmsegmentation's ``conv_seg``: a 1x1 conv initialised with N(0, 0.01) and a zero bias."""
    conv = Conv2d(channels, num_classes, 1, rng=g, dtype=dtype)
    conv.weight.data = (0.01 * g.standard_normal(conv.weight.shape)).astype(dtype)
    return conv


def _concat(maps: Sequence[Any]) -> Any:
    """Channel concatenation of channels-last maps (B, H, W, C_i) -> (B, H, W, sum C_i)."""
    return get_xp(*maps).concatenate(maps, axis=-1)


def _split(d: Any, channels: Sequence[int]) -> list[Any]:
    """Backward of :func:`_concat`: the gradient of each part is its slice of channels."""
    out, start = [], 0
    for c in channels:
        out.append(d[..., start : start + c])
        start += c
    return out


class PPMCache(NamedTuple):
    resize: list[Any]  # ResizeCache of each pooled map's bilinear resize back to the input's size


class PPM(ModuleList):
    """Pyramid pooling module (PSPNet's, mmsegmentation's ``PPM``): one branch per pool scale.

    Branch i: adaptive average pooling to ``pool_scales[i]`` x ``pool_scales[i]``, a 1x1
    ConvModule (conv + norm + ReLU) to ``channels``, then a bilinear resize back to the input
    map's size. Keys ``i.1.conv.weight``, ``i.1.bn.*`` (``i.0`` is the pooling, no parameters).

    Shapes: forward(x (B, H, W, C_in)) -> list of len(pool_scales) maps (B, H, W, channels);
    backward(list of their gradients) -> dx (B, H, W, C_in), the sum over the branches.
    """

    def __init__(
        self,
        pool_scales: Sequence[int],
        in_channels: int,
        channels: int,
        norm: str | None = "bn",
        num_groups: int = 32,
        rng: Rng = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        g = default_rng(rng)
        self.pool_scales = tuple(int(p) for p in pool_scales)
        for p in self.pool_scales:
            conv = ConvModule(in_channels, channels, 1, 0, norm, True, num_groups, g, dtype)
            self.append(Sequential([AdaptiveAvgPool2d(p), conv]))

    def forward(self, x: Any) -> list[Any]:  # type: ignore[override]
        outs, caches = [], []
        for branch in self:
            y, cache = F.bilinear_resize_forward(branch(x), x.shape[1:3])
            outs.append(y)
            caches.append(cache)
        self._save(PPMCache(caches))
        return outs

    def backward(self, grads: Sequence[Any]) -> Any:  # type: ignore[override]
        caches = self._pop().resize
        dx = None
        for branch, g, cache in zip(self, grads, caches):
            d = branch.backward(F.resize_backward(g, cache))
            dx = d if dx is None else dx + d  # every branch read the same x
        return dx


class UPerHeadCache(NamedTuple):
    top_down: list[Any]  # top_down[i]: ResizeCache of level i onto level i - 1 (None at 0 or where sizes agree)
    to_level0: list[Any]  # to_level0[i]: ResizeCache of output i onto level 0 (None at 0 or where sizes agree)
    cat_channels: list[int]  # the channels of each part of the bottleneck's input: c_{S-1}, then the PPM branches


class UPerHead(Module):
    """mmsegmentation's ``UPerHead``: pyramid pooling on the last level, FPN fusion, one classifier.

    With P the PPM on the last map c_{S-1}, L_i the 1x1 lateral ConvModules, R the bilinear
    resizes (onto the finer level, then onto level 0) and [.] channel concatenation::

        l_{S-1} = bottleneck([c_{S-1}, P(c_{S-1})]),   l_i = L_i(c_i)  (i < S-1)
        l_{i-1} <- l_{i-1} + R(l_i)                       (i = S-1, ..., 1: the top-down path)
        o_i = fpn_convs[i](l_i) (i < S-1),   o_{S-1} = l_{S-1}
        logits = conv_seg(dropout(fpn_bottleneck([o_0, R(o_1), ..., R(o_{S-1})])))

    Every ConvModule is conv + norm + ReLU (3x3 with padding 1, except the 1x1 laterals and
    PPM convs); keys ``psp_modules``, ``bottleneck``, ``lateral_convs``, ``fpn_convs``,
    ``fpn_bottleneck``, ``conv_seg``, as mmsegmentation's.

    Shapes: forward([ (B, H_s, W_s, C_s) for s ]) -> logits (B, H_0, W_0, K);
    backward(dlogits) -> list of S gradients of the inputs.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        norm: str | None = "bn",
        num_groups: int = 32,
        dropout_ratio: float = 0.1,
        rng: Rng = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(in_channels) < 2:
            raise ValueError(f"UPerHead needs at least 2 levels, got in_channels={tuple(in_channels)}")
        g = default_rng(rng)
        self.in_channels, self.channels, self.num_classes = tuple(int(c) for c in in_channels), int(channels), int(num_classes)
        self.pool_scales = tuple(int(p) for p in pool_scales)
        c_last, conv = self.in_channels[-1], (norm, True, num_groups, g, dtype)
        self.psp_modules = PPM(self.pool_scales, c_last, channels, norm, num_groups, g, dtype)
        self.bottleneck = ConvModule(c_last + len(self.pool_scales) * channels, channels, 3, 1, *conv)
        self.lateral_convs = ModuleList([ConvModule(c, channels, 1, 0, *conv) for c in self.in_channels[:-1]])
        self.fpn_convs = ModuleList([ConvModule(channels, channels, 3, 1, *conv) for _ in self.in_channels[:-1]])
        self.fpn_bottleneck = ConvModule(len(self.in_channels) * channels, channels, 3, 1, *conv)
        self.dropout = Dropout2d(dropout_ratio, g)
        self.conv_seg = _classifier(channels, num_classes, g, dtype)

    def forward(self, feats: Sequence[Any]) -> Any:  # type: ignore[override]
        _check_levels("UPerHead", feats, self.in_channels)
        S = len(feats)
        x = feats[-1]
        pooled = self.psp_modules(x)
        lat = [conv(f) for conv, f in zip(self.lateral_convs, feats[:-1])]
        lat.append(self.bottleneck(_concat([x, *pooled])))
        top_down: list[Any] = [None] * S
        for i in range(S - 1, 0, -1):  # the coarsest level first
            y = lat[i]
            if y.shape[1:3] != lat[i - 1].shape[1:3]:
                y, top_down[i] = F.bilinear_resize_forward(y, lat[i - 1].shape[1:3])
            lat[i - 1] = lat[i - 1] + y
        outs = [conv(p) for conv, p in zip(self.fpn_convs, lat[:-1])] + [lat[-1]]
        to_level0: list[Any] = [None] * S
        for i in range(1, S):
            if outs[i].shape[1:3] != outs[0].shape[1:3]:
                outs[i], to_level0[i] = F.bilinear_resize_forward(outs[i], outs[0].shape[1:3])
        self._save(UPerHeadCache(top_down, to_level0, [x.shape[-1]] + [self.channels] * len(pooled)))
        return self.conv_seg(self.dropout(self.fpn_bottleneck(_concat(outs))))

    def backward(self, dlogits: Any) -> list[Any]:
        cache = self._pop()
        S = len(self.in_channels)
        dcat = self.fpn_bottleneck.backward(self.dropout.backward(self.conv_seg.backward(dlogits)))
        douts = _split(dcat, [self.channels] * S)
        for i in range(1, S):
            if cache.to_level0[i] is not None:
                douts[i] = F.resize_backward(douts[i], cache.to_level0[i])
        # dl_i: from its output conv (or directly, for the last level) ...
        dlat = [conv.backward(d) for conv, d in zip(self.fpn_convs, douts[:-1])] + [douts[-1]]
        # ... plus what l_{i-1} <- l_{i-1} + R(l_i) sends back, finest level first
        for i in range(1, S):
            back = dlat[i - 1] if cache.top_down[i] is None else F.resize_backward(dlat[i - 1], cache.top_down[i])
            dlat[i] = dlat[i] + back
        dx, *dpooled = _split(self.bottleneck.backward(dlat[-1]), cache.cat_channels)
        dx = dx + self.psp_modules.backward(dpooled)  # c_{S-1} fed the concatenation and the PPM
        return [conv.backward(d) for conv, d in zip(self.lateral_convs, dlat[:-1])] + [dx]

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, channels={self.channels}, num_classes={self.num_classes}, "
            f"pool_scales={self.pool_scales}"
        )


class FCNHeadCache(NamedTuple):
    cat_channels: tuple[int, int] | None  # (C_in, channels) of conv_cat's input when concat_input, else None


class FCNHead(Module):
    """mmsegmentation's ``FCNHead`` (the auxiliary head of UPerNet): convs on one level, then a classifier.

    ``num_convs`` ConvModules (k x k, padding k // 2, conv + norm + ReLU) on the level's map;
    with ``concat_input`` the map and their output are concatenated and fused by ``conv_cat``;
    then dropout and ``conv_seg``. Keys ``convs.j.conv.weight``, ``convs.j.bn.*``, ``conv_seg.*``.

    Shapes: forward(x (B, H, W, C_in)) -> logits (B, H, W, K); backward(dlogits) -> dx.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_convs: int = 2,
        kernel_size: int = 3,
        concat_input: bool = True,
        norm: str | None = "bn",
        num_groups: int = 32,
        dropout_ratio: float = 0.1,
        rng: Rng = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"FCNHead needs num_convs >= 1, got {num_convs}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        g = default_rng(rng)
        self.in_channels, self.channels, self.num_classes = int(in_channels), int(channels), int(num_classes)
        self.concat_input = bool(concat_input)
        conv = (kernel_size // 2, norm, True, num_groups, g, dtype)
        self.convs = Sequential(
            [ConvModule(in_channels if j == 0 else channels, channels, kernel_size, *conv) for j in range(num_convs)]
        )
        self.conv_cat = ConvModule(in_channels + channels, channels, kernel_size, *conv) if concat_input else None
        self.dropout = Dropout2d(dropout_ratio, g)
        self.conv_seg = _classifier(channels, num_classes, g, dtype)

    def forward(self, x: Any) -> Any:
        _check_levels("FCNHead", [x], (self.in_channels,))
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(_concat([x, out]))
        self._save(FCNHeadCache((self.in_channels, self.channels) if self.conv_cat is not None else None))
        return self.conv_seg(self.dropout(out))

    def backward(self, dlogits: Any) -> Any:
        cat = self._pop().cat_channels
        d = self.dropout.backward(self.conv_seg.backward(dlogits))
        if self.conv_cat is None:
            return self.convs.backward(d)
        dx, dout = _split(self.conv_cat.backward(d), cat)
        return dx + self.convs.backward(dout)  # x fed conv_cat directly and through the convs

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, channels={self.channels}, num_classes={self.num_classes}"


class SegmenterCache(NamedTuple):
    resize: Any  # ResizeCache of the logits' bilinear resize to the image size
    aux_resize: Any = None  # the auxiliary logits' resize (forward_train with an auxiliary head), else None


class Segmenter(LossModel):
    """Backbone + optional neck + decode head (+ auxiliary head): image (B, 3, H, W) -> logits (B, K, H, W).

    Keys as mmsegmentation's ``EncoderDecoder``: ``backbone.*`` (twins-np's Twins names, timm's;
    :mod:`twins_np.models.mmseg` maps mmsegmentation's backbone names onto them),
    ``neck.*`` (FPN: ``neck.lateral_convs.s.conv.*``, ``neck.fpn_convs.s.conv.*``),
    ``decode_head.*`` (FPNHead: ``scale_heads.s.j.conv.weight``, ``.gn.*``/``.bn.*``,
    ``conv_seg.*``; UPerHead: see :class:`UPerHead`) and ``auxiliary_head.*`` (FCNHead).

    Usage::

        seg = create_segmenter("twins_svt_teach64_fpn", num_classes=21)
        loss, logits = seg.loss(images, labels)    # labels (B, H, W), 255 = ignore
        seg.backward_loss()                         # fills every parameter's .grad
        logits = seg.inference(image)              # whole-image or sliding-window, as test_cfg says

    The backbone is a Twins without its classifier and final norm; its stage maps come from
    :meth:`Twins.forward_intermediates` and their gradients go back through
    :meth:`Twins.backward_intermediates`. The auxiliary head runs only in
    :meth:`forward_train` (so in :meth:`loss`), never in :meth:`forward` or :meth:`inference`,
    as in mmsegmentation; its loss counts ``aux_weight`` times.
    """

    loss_forward = staticmethod(F.pixel_cross_entropy_forward)
    loss_backward = staticmethod(F.pixel_cross_entropy_backward)

    def __init__(
        self,
        backbone: Twins,
        neck: Module | None,
        decode_head: Module,
        crop_size: int = 512,
        auxiliary_head: FCNHead | None = None,
        aux_in_index: int = 2,
        aux_weight: float = 0.4,
        test_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone, self.neck, self.decode_head = backbone, neck, decode_head
        self.auxiliary_head = auxiliary_head
        self.aux_in_index, self.aux_weight = int(aux_in_index), float(aux_weight)
        self.num_classes = int(getattr(decode_head, "num_classes"))  # noqa: B009 - any head with K classes
        self.crop_size = crop_size  # the training crop of the config (what `twins-np flops` counts by default)
        self.test_cfg = check_test_cfg({"mode": "whole"} if test_cfg is None else test_cfg)
        self.model_cfg: dict[str, Any] = {}  # stamped by create_segmenter: {"name", "num_classes"} of its config

    def _decode(self, feats: list[Any]) -> Any:
        return self.decode_head(feats if self.neck is None else self.neck(feats))

    def forward(self, x: Any) -> Any:
        """Image (B, 3, H, W) -> logits (B, K, H, W)."""
        feats = self.backbone.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
        # as mmsegmentation's EncoderDecoder: logits at stride r_0, resized bilinearly to the image
        logits, cache = F.bilinear_resize_forward(self._decode(feats), x.shape[2:])
        self._save(SegmenterCache(cache))
        return logits.transpose(0, 3, 1, 2)

    def loss_weights(self) -> tuple[float, ...]:
        return (1.0,) if self.auxiliary_head is None else (1.0, self.aux_weight)

    def forward_train(self, x: Any) -> list[Any]:
        """[logits] or, with an auxiliary head, [logits, auxiliary logits], both (B, K, H, W)."""
        if self.auxiliary_head is None:
            return [self.forward(x)]
        feats = self.backbone.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
        logits, cache = F.bilinear_resize_forward(self._decode(feats), x.shape[2:])
        # mmsegmentation resizes every head's logits to the label size before its loss
        aux, aux_cache = F.bilinear_resize_forward(self.auxiliary_head(feats[self.aux_in_index]), x.shape[2:])
        self._save(SegmenterCache(cache, aux_cache))
        return [logits.transpose(0, 3, 1, 2), aux.transpose(0, 3, 1, 2)]

    def _check_dlogits(self, name: str, d: Any, resize: Any) -> None:
        a_h, a_w = resize
        B = None if getattr(d, "ndim", 0) != 4 else d.shape[0]
        want = (B, self.num_classes, a_h.shape[0], a_w.shape[0])
        if tuple(getattr(d, "shape", ())) != want:
            raise ValueError(f"{name} must have the logits' shape {want}, got {tuple(getattr(d, 'shape', ()))}")

    def backward(self, dlogits: Any) -> Any:
        """dlogits (B, K, H, W) -> dx (B, 3, H, W); fills ``.grad`` of every parameter."""
        self._check_dlogits("dlogits", dlogits, self._peek().resize)  # before anything is used
        return self._backward(dlogits, None)

    def backward_train(self, dlogits: Sequence[Any]) -> Any:
        """Backward of :meth:`forward_train`: [dlogits] or [dlogits, daux] -> dx."""
        cache = self._peek()
        want = 1 if cache.aux_resize is None else 2
        if len(dlogits) != want:
            raise ValueError(f"backward_train needs {want} gradients (one per output of forward_train), got {len(dlogits)}")
        self._check_dlogits("dlogits[0]", dlogits[0], cache.resize)
        if want == 2:
            self._check_dlogits("dlogits[1]", dlogits[1], cache.aux_resize)
        return self._backward(dlogits[0], dlogits[1] if want == 2 else None)

    def _backward(self, dlogits: Any, daux: Any) -> Any:
        cache = self._pop()
        d = F.resize_backward(dlogits.transpose(0, 2, 3, 1), cache.resize)
        dfeats = self.decode_head.backward(d)
        if self.neck is not None:
            dfeats = self.neck.backward(dfeats)
        if daux is not None and self.auxiliary_head is not None:
            # the level the auxiliary head read also fed the decode path: its gradients add up
            dmap = self.auxiliary_head.backward(F.resize_backward(daux.transpose(0, 2, 3, 1), cache.aux_resize))
            dfeats = list(dfeats)
            dfeats[self.aux_in_index] = dfeats[self.aux_in_index] + dmap
        return self.backbone.backward_intermediates(dfeats)

    def loss(
        self, x: Any, target: Any, label_smoothing: float = 0.0, ignore_index: int = 255, **options: Any
    ) -> tuple[float, Any]:
        """Forward + per-pixel cross-entropy (mean over non-ignored pixels); returns (loss, logits).

        The arguments come in :meth:`Twins.loss`'s order (``label_smoothing`` third), so a
        training loop calls either model the same way; ``ignore_index`` comes last.
        The mean is torch's ``cross_entropy(..., ignore_index=255)``: over the counted pixels.
        mmsegmentation's ``CrossEntropyLoss`` divides by *all* pixels unless
        ``avg_non_ignore=True``; with ignored pixels its loss is smaller by the counted share.
        With an auxiliary head the loss is main + ``aux_weight`` x auxiliary (mmsegmentation's
        sum of the heads' weighted losses). Call :meth:`backward_loss` next.
        """
        return super().loss(x, target, label_smoothing, ignore_index=ignore_index, **options)

    def inference(self, x: Any, **test_cfg: Any) -> Any:
        """Test-time logits (B, K, H, W) of image x, as mmsegmentation's ``EncoderDecoder.inference``.

        ``test_cfg`` overrides :attr:`test_cfg` (``mode``: ``"whole"`` or ``"slide"``;
        ``crop_size`` and ``stride`` (h, w) for slide). Whole: one :meth:`forward`. Slide:
        crops of ``crop_size`` every ``stride`` pixels (the last crop of a row or column
        shifted back to end at the border; a side smaller than the crop is taken whole), each
        crop's logits (at the crop's size) summed into place and divided by the number of
        crops that covered each pixel. Forward passes only: run it inside
        :func:`twins_np.no_grad` to keep no caches.
        """
        cfg = check_test_cfg({**self.test_cfg, **test_cfg})
        if cfg["mode"] == "whole":
            return self.forward(x)
        return _slide(self.forward, x, self.num_classes, tuple(cfg["crop_size"]), tuple(cfg["stride"]))


TEST_MODES = ("whole", "slide")


def check_test_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """A test configuration: ``{"mode": "whole"}`` or ``{"mode": "slide", "crop_size": (h, w), "stride": (h, w)}``."""
    if not isinstance(cfg, dict) or cfg.get("mode") not in TEST_MODES:
        raise ValueError(f"test_cfg must be a dict with mode one of {TEST_MODES}, got {cfg!r}")
    out: dict[str, Any] = {"mode": cfg["mode"]}
    unknown = set(cfg) - {"mode", "crop_size", "stride"}
    if unknown:
        raise ValueError(f"test_cfg has unknown keys {sorted(unknown)}; known: mode, crop_size, stride")
    if cfg["mode"] == "slide":
        for key in ("crop_size", "stride"):
            v = cfg.get(key)
            pair = (v, v) if isinstance(v, int) and not isinstance(v, bool) else v
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in pair)
            ):
                raise ValueError(f"test_cfg: slide inference needs {key} as a pair of positive integers, got {v!r}")
            out[key] = (int(pair[0]), int(pair[1]))
    return out


def _slide(forward: Any, x: Any, num_classes: int, crop: tuple[int, int], stride: tuple[int, int]) -> Any:
    """mmsegmentation's ``slide_inference``: overlapping crops, their logits averaged where they overlap."""
    xp = get_xp(x)
    B, _, H, W = x.shape
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(H - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(W - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = xp.zeros((B, num_classes, H, W), dtype=x.dtype)
    count = xp.zeros((1, 1, H, W), dtype=x.dtype)
    for i in range(h_grids):
        for j in range(w_grids):
            y2, x2 = min(i * h_stride + h_crop, H), min(j * w_stride + w_crop, W)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)  # the last crop ends at the border
            preds[:, :, y1:y2, x1:x2] += forward(xp.ascontiguousarray(x[:, :, y1:y2, x1:x2]))
            count[:, :, y1:y2, x1:x2] += 1.0
    return preds / count


# ------------------------------------------------------------------------------------------
# named configurations
# ------------------------------------------------------------------------------------------
_PAPER = dict(head="fpn", neck_channels=256, head_channels=128, norm="bn", num_groups=32, dropout_ratio=0.1)
# teaching: small channels, GroupNorm (batch statistics of a few small images are noisy)
_TEACH = dict(head="fpn", neck_channels=32, head_channels=16, norm="gn", num_groups=4, dropout_ratio=0.1)

# mmsegmentation's backbone flavour of Twins (mmseg/models/backbones/twins.py): ceil-padded
# patch embeddings, LSA's padded keys masked (its rule), LayerNorm eps 1e-5 everywhere; SVT
# adds a LayerNorm after every stage (norm_after_stage=True in its configs, False for PCPVT)
MMSEG_BACKBONE = dict(patch_padding="corner", pad_mask="mmseg", norm_eps=1e-5)

# mmsegmentation's ADE20K configs for Twins (configs/twins/*): SyncBN (BatchNorm here),
# 150 classes, whole-image testing. FPN: twins_<b>_fpn_fpnhead_8xb4-80k_ade20k-512x512.py;
# UPerNet: twins_<b>_uperhead_8xb2-160k_ade20k-512x512.py (UPerHead of 512 channels, an
# auxiliary FCNHead of 256 channels on stage 3 with loss weight 0.4)
_ADE20K = dict(flavor="mmseg", dataset="ade20k", test_cfg={"mode": "whole"})
_MMSEG_FPN = dict(_PAPER, **_ADE20K)
_MMSEG_UPER = dict(
    head="uper",
    head_channels=512,
    pool_scales=(1, 2, 3, 6),
    aux_channels=256,
    aux_in_index=2,
    aux_weight=0.4,
    norm="bn",
    num_groups=32,
    dropout_ratio=0.1,
    **_ADE20K,
)

SEGMENTER_CONFIGS: dict[str, dict[str, Any]] = {
    **{f"{b}_fpn": dict(_PAPER, backbone=b) for b in PAPER_MODELS},
    **{
        f"{b}_fpn": dict(_TEACH, backbone=b)
        for b in ("twins_svt_teach32", "twins_pcpvt_teach32", "twins_svt_teach64", "twins_pcpvt_teach64")
    },
    **{f"{b}_fpn_ade20k": dict(_MMSEG_FPN, backbone=b) for b in PAPER_MODELS},
    **{f"{b}_uperhead_ade20k": dict(_MMSEG_UPER, backbone=b) for b in PAPER_MODELS},
}

# what create_segmenter's overrides may replace, per head
HEAD_OPTIONS = {
    "fpn": ("neck_channels", "head_channels", "norm", "num_groups", "dropout_ratio", "test_cfg"),
    "uper": ("head_channels", "aux_channels", "aux_weight", "norm", "num_groups", "dropout_ratio", "test_cfg"),
}

_PAPER_NAMES = {n for n, c in SEGMENTER_CONFIGS.items() if c["backbone"] in PAPER_MODELS}


def list_segmenters() -> list[str]:
    """Names accepted by :func:`create_segmenter`."""
    return sorted(SEGMENTER_CONFIGS)


def mmseg_backbone_kwargs(backbone: str) -> dict[str, Any]:
    """The Twins options of mmsegmentation's flavour of ``backbone`` (norm_after_stage for SVT)."""
    return {**MMSEG_BACKBONE, "norm_after_stage": MODEL_CONFIGS[backbone].get("wss") is not None}


def create_segmenter(
    name: str,
    num_classes: int = 150,
    seed: int | None = 0,
    dtype: Any = np.float32,
    backbone_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> Segmenter:
    """Build a named segmenter.

    Args:
        name: one of :func:`list_segmenters`:

            - ``<twins model>_fpn``: Semantic FPN on twins-np's (timm's) Twins; the paper's
              backbones get F = 256 neck and D = 128 head channels with BatchNorm
              (mmsegmentation's), the teaching ones 32 / 16 with GroupNorm(4);
            - ``<paper model>_fpn_ade20k`` and ``<paper model>_uperhead_ade20k``:
              mmsegmentation's ADE20K configurations, on its flavour of the backbone
              (:data:`MMSEG_BACKBONE`): the models of its published checkpoints
              (:mod:`twins_np.models.mmseg` loads them).
        num_classes: K (150 for ADE20K).
        seed: seeds the backbone, neck and head initialisation.
        dtype: float32 or float64.
        backbone_kwargs: passed to :func:`twins_np.models.create_model` (e.g. drop_path_rate).
        overrides: replace entries of the config: for FPN ``neck_channels``, ``head_channels``,
            ``norm`` (None, "gn", "bn"), ``num_groups``, ``dropout_ratio``; for UPerNet
            ``head_channels``, ``aux_channels``, ``aux_weight``, ``norm``, ``num_groups``,
            ``dropout_ratio``; for both ``test_cfg`` (see :meth:`Segmenter.inference`).
    """
    if name not in SEGMENTER_CONFIGS:
        raise ValueError(f"unknown segmenter {name!r}; choose one of {', '.join(list_segmenters())}")
    base = SEGMENTER_CONFIGS[name]
    known = HEAD_OPTIONS[base["head"]]
    unknown = set(overrides) - set(known)
    if unknown:
        raise TypeError(f"create_segmenter got unknown options {sorted(unknown)} for {name}; known: {sorted(known)}")
    cfg = {**base, **overrides}
    kwargs = mmseg_backbone_kwargs(cfg["backbone"]) if cfg.get("flavor") == "mmseg" else {}
    backbone = create_model(cfg["backbone"], seed=seed, dtype=dtype, **{**kwargs, **(backbone_kwargs or {})})
    # a backbone: no classifier, no final norm (the head reads the raw stage maps)
    backbone.prune_intermediate_layers(None, prune_norm=True, prune_head=True)
    channels = [int(f["num_chs"]) for f in backbone.feature_info]
    strides = [int(f["reduction"]) for f in backbone.feature_info]
    g = default_rng(None if seed is None else seed + 1)
    norm = dict(norm=cfg["norm"], num_groups=cfg["num_groups"], dropout_ratio=cfg["dropout_ratio"], rng=g, dtype=dtype)
    neck: FPN | None = None
    aux: FCNHead | None = None
    head: Module
    if cfg["head"] == "fpn":
        neck = FPN(channels, cfg["neck_channels"], rng=g, dtype=dtype)
        head = FPNHead([cfg["neck_channels"]] * len(channels), cfg["head_channels"], num_classes, strides, **norm)
    else:
        head = UPerHead(channels, cfg["head_channels"], num_classes, cfg["pool_scales"], **norm)
        aux = FCNHead(channels[cfg["aux_in_index"]], cfg["aux_channels"], num_classes, 1, 3, False, **norm)
    # the paper's configs train on 512x512 ADE20K crops; the teaching ones at their backbone's size
    crop = 512 if name in _PAPER_NAMES else int(MODEL_CONFIGS[cfg["backbone"]].get("img_size", 224))
    seg = Segmenter(
        backbone,
        neck,
        head,
        crop_size=crop,
        auxiliary_head=aux,
        aux_in_index=cfg.get("aux_in_index", 2),
        aux_weight=cfg.get("aux_weight", 0.4),
        test_cfg=cfg.get("test_cfg"),
    )
    seg.model_cfg = {"name": name, "num_classes": 150}  # stamped as create_model stamps a Twins (150: ADE20K)
    return seg
