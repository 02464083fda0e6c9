"""Semantic FPN on a Twins backbone: the segmentation model of the Twins paper (Table 4).

Semantic FPN (Kirillov et al., "Panoptic Feature Pyramid Networks", 2019) in
mmsegmentation's layout, so its ``state_dict`` keys are mmsegmentation's::

    image (B, 3, H, W)
      -> backbone: Twins stages, maps at strides r_0 < r_1 < ... (4, 8, 16, 32)
      -> neck (FPN): 1x1 lateral conv per level; top-down, each level adds the nearest
         upsampling of the level above; a 3x3 conv per level
      -> decode_head (FPNHead): per level, [3x3 conv + norm + ReLU, bilinear 2x] repeated
         until stride r_0; the levels summed; channel dropout; 1x1 classifier conv_seg
      -> logits at stride r_0, resized bilinearly to (H, W)  -> (B, K, H, W)

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
from ..backend import default_rng
from ..functional._checks import check_float, check_ndim
from ..nn import Conv2d, ConvModule, Dropout2d, Module, ModuleList, Sequential, Upsample
from ..nn.init import Rng
from .base import LossModel
from .registry import MODEL_CONFIGS, create_model
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
        self.conv_seg = Conv2d(channels, num_classes, 1, rng=g, dtype=dtype)
        # mmsegmentation initialises the classifier with N(0, 0.01) and a zero bias
        self.conv_seg.weight.data = (0.01 * g.standard_normal(self.conv_seg.weight.shape)).astype(dtype)

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


class SegmenterCache(NamedTuple):
    resize: Any  # ResizeCache of the logits' bilinear resize to the image size


class Segmenter(LossModel):
    """Backbone + FPN neck + Semantic FPN head: image (B, 3, H, W) -> logits (B, K, H, W).

    Keys: ``backbone.*`` (Twins' own names), ``neck.lateral_convs.s.conv.*``,
    ``neck.fpn_convs.s.conv.*``, ``decode_head.scale_heads.s.j.conv.weight`` and
    ``.gn.*``/``.bn.*``, ``decode_head.conv_seg.*``: mmsegmentation's ``EncoderDecoder``.

    Usage::

        seg = create_segmenter("twins_svt_teach64_fpn", num_classes=21)
        loss, logits = seg.loss(images, labels)    # labels (B, H, W), 255 = ignore
        seg.backward_loss()                         # fills every parameter's .grad

    The backbone is a Twins without its classifier and final norm; its stage maps come from
    :meth:`Twins.forward_intermediates` and their gradients go back through
    :meth:`Twins.backward_intermediates`.
    """

    loss_forward = staticmethod(F.pixel_cross_entropy_forward)
    loss_backward = staticmethod(F.pixel_cross_entropy_backward)

    def __init__(self, backbone: Twins, neck: FPN, decode_head: FPNHead, crop_size: int = 512) -> None:
        super().__init__()
        self.backbone, self.neck, self.decode_head = backbone, neck, decode_head
        self.num_classes = decode_head.num_classes
        self.crop_size = crop_size  # the training crop of the config (what `twins-np flops` counts by default)
        self.model_cfg: dict[str, Any] = {}  # stamped by create_segmenter: {"name", "num_classes"} of its config

    def forward(self, x: Any) -> Any:
        """Image (B, 3, H, W) -> logits (B, K, H, W)."""
        feats = self.backbone.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
        logits = self.decode_head(self.neck(feats))
        H, W = x.shape[2:]
        # as mmsegmentation's EncoderDecoder: logits at stride r_0, resized bilinearly to the image
        logits, cache = F.bilinear_resize_forward(logits, (H, W))
        self._save(SegmenterCache(cache))
        return logits.transpose(0, 3, 1, 2)

    def backward(self, dlogits: Any) -> Any:
        """dlogits (B, K, H, W) -> dx (B, 3, H, W); fills ``.grad`` of every parameter."""
        a_h, a_w = self._peek().resize  # checked before it is used: a wrong gradient must not discard the forward
        B = None if getattr(dlogits, "ndim", 0) != 4 else dlogits.shape[0]
        want = (B, self.num_classes, a_h.shape[0], a_w.shape[0])
        if tuple(getattr(dlogits, "shape", ())) != want:
            raise ValueError(f"dlogits must have the logits' shape {want}, got {tuple(getattr(dlogits, 'shape', ()))}")
        d = F.resize_backward(dlogits.transpose(0, 2, 3, 1), self._pop().resize)
        return self.backbone.backward_intermediates(self.neck.backward(self.decode_head.backward(d)))

    def loss(
        self, x: Any, target: Any, label_smoothing: float = 0.0, ignore_index: int = 255, **options: Any
    ) -> tuple[float, Any]:
        """Forward + per-pixel cross-entropy (mean over non-ignored pixels); returns (loss, logits).

        The arguments come in :meth:`Twins.loss`'s order (``label_smoothing`` third), so a
        training loop calls either model the same way; ``ignore_index`` comes last.
        The mean is torch's ``cross_entropy(..., ignore_index=255)``: over the counted pixels.
        mmsegmentation's ``CrossEntropyLoss`` divides by *all* pixels unless
        ``avg_non_ignore=True``; with ignored pixels its loss is smaller by the counted share.
        Call :meth:`backward_loss` next.
        """
        return super().loss(x, target, label_smoothing, ignore_index=ignore_index, **options)



# ------------------------------------------------------------------------------------------
# named configurations
# ------------------------------------------------------------------------------------------
_PAPER = dict(neck_channels=256, head_channels=128, norm="bn", num_groups=32, dropout_ratio=0.1)
# teaching: small channels, GroupNorm (batch statistics of a few small images are noisy)
_TEACH = dict(neck_channels=32, head_channels=16, norm="gn", num_groups=4, dropout_ratio=0.1)

SEGMENTER_CONFIGS: dict[str, dict[str, Any]] = {
    **{f"{b}_fpn": dict(_PAPER, backbone=b) for b in ("twins_pcpvt_small", "twins_pcpvt_base", "twins_pcpvt_large")},
    **{f"{b}_fpn": dict(_PAPER, backbone=b) for b in ("twins_svt_small", "twins_svt_base", "twins_svt_large")},
    **{
        f"{b}_fpn": dict(_TEACH, backbone=b)
        for b in ("twins_svt_teach32", "twins_pcpvt_teach32", "twins_svt_teach64", "twins_pcpvt_teach64")
    },
}


_PAPER_NAMES = {n for n, c in SEGMENTER_CONFIGS.items() if c["head_channels"] == _PAPER["head_channels"]}


def list_segmenters() -> list[str]:
    """Names accepted by :func:`create_segmenter`."""
    return sorted(SEGMENTER_CONFIGS)


def create_segmenter(
    name: str,
    num_classes: int = 150,
    seed: int | None = 0,
    dtype: Any = np.float32,
    backbone_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> Segmenter:
    """Build a named Semantic FPN segmenter.

    Args:
        name: one of :func:`list_segmenters`: ``<twins model>_fpn``; the paper's backbones get
            F = 256 neck and D = 128 head channels with BatchNorm (mmsegmentation's), the
            teaching ones 32 / 16 with GroupNorm(4).
        num_classes: K (150 for ADE20K).
        seed: seeds the backbone, neck and head initialisation.
        dtype: float32 or float64.
        backbone_kwargs: passed to :func:`twins_np.models.create_model` (e.g. drop_path_rate).
        overrides: replace ``neck_channels``, ``head_channels``, ``norm`` (None, "gn", "bn"),
            ``num_groups``, ``dropout_ratio``.
    """
    if name not in SEGMENTER_CONFIGS:
        raise ValueError(f"unknown segmenter {name!r}; choose one of {', '.join(list_segmenters())}")
    unknown = set(overrides) - set(_PAPER)
    if unknown:
        raise TypeError(f"create_segmenter got unknown options {sorted(unknown)}; known: {sorted(_PAPER)}")
    cfg = {**SEGMENTER_CONFIGS[name], **overrides}
    backbone = create_model(cfg["backbone"], seed=seed, dtype=dtype, **(backbone_kwargs or {}))
    # a backbone: no classifier, no final norm (the head reads the raw stage maps)
    backbone.prune_intermediate_layers(None, prune_norm=True, prune_head=True)
    channels = [int(f["num_chs"]) for f in backbone.feature_info]
    strides = [int(f["reduction"]) for f in backbone.feature_info]
    g = default_rng(None if seed is None else seed + 1)
    neck = FPN(channels, cfg["neck_channels"], rng=g, dtype=dtype)
    head = FPNHead(
        [cfg["neck_channels"]] * len(channels),
        cfg["head_channels"],
        num_classes,
        strides,
        norm=cfg["norm"],
        num_groups=cfg["num_groups"],
        dropout_ratio=cfg["dropout_ratio"],
        rng=g,
        dtype=dtype,
    )
    # the paper's configs train on 512x512 ADE20K crops; the teaching ones at their backbone's size
    crop = 512 if name in _PAPER_NAMES else int(MODEL_CONFIGS[cfg["backbone"]].get("img_size", 224))
    seg = Segmenter(backbone, neck, head, crop_size=crop)
    seg.model_cfg = {"name": name, "num_classes": 150}  # stamped as create_model stamps a Twins (150: ADE20K)
    return seg
