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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .. import functional as F
from .. import nn
from ..backend import default_rng, get_xp, host_uniform
from ..functional._checks import check_float, check_ndim
from ..nn.module import Module, ModuleList, Sequential
from .twins import Twins

NORMS = (None, "gn", "bn")
Rng = np.random.Generator | int | None

# A FLOP row as analysis.FlopRow takes it: (name, kind, output shape, params, MACs).
Row = tuple[str, str, tuple[int, ...], int, int]


def _conv_row(name: str, conv: Any, B: int, H: int, W: int) -> Row:
    """A stride-1 "same" conv on an H x W map; its MACs from analysis.module_flops, the one conv count."""
    from ..analysis import module_flops  # analysis imports the models: import it when counting

    params = int(conv.weight.data.size) + (0 if conv.bias is None else int(conv.bias.data.size))
    return (name, "conv", (B, int(conv.weight.shape[0]), H, W), params, module_flops(conv, (H, W), B))


class ConvModule(Module):
    """mmcv's ConvModule: conv, then an optional norm, then an optional ReLU.

    Keys as mmcv's: ``conv.weight`` (and ``conv.bias`` only without a norm, as mmcv's
    ``bias="auto"``), ``gn.weight``/``gn.bias`` or ``bn.*`` for the norm.

    Shapes: x (B, H, W, C_in) -> (B, H, W, C_out) (stride 1, "same" padding for k = 3).

    Args:
        norm: None, ``"gn"`` (GroupNorm with ``num_groups``) or ``"bn"`` (BatchNorm2d).
        act: apply ReLU after the norm.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        norm: str | None = None,
        act: bool = False,
        num_groups: int = 32,
        rng: Rng = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=norm is None, rng=rng, dtype=dtype)
        self.norm_name = norm
        if norm == "gn":
            if out_channels % num_groups:
                raise ValueError(f"GroupNorm: {out_channels} channels are not divisible into num_groups = {num_groups}")
            self.gn = nn.GroupNorm(num_groups, out_channels, dtype=dtype)
        elif norm == "bn":
            self.bn = nn.BatchNorm2d(out_channels, dtype=dtype)
        self.activate = nn.ReLU() if act else None

    @property
    def norm(self) -> Module | None:
        return None if self.norm_name is None else getattr(self, self.norm_name)

    def forward(self, x: Any) -> Any:
        if x.shape[-1] != self.in_channels:
            raise ValueError(
                f"ConvModule was built for {self.in_channels} input channels, got a map of shape {tuple(x.shape)} "
                f"(channels-last, C = {x.shape[-1]})"
            )
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activate is not None:
            x = self.activate(x)
        return x

    def backward(self, dout: Any) -> Any:
        if self.activate is not None:
            dout = self.activate.backward(dout)
        if self.norm is not None:
            dout = self.norm.backward(dout)
        return self.conv.backward(dout)

    def flop_rows(self, prefix: str, B: int, H: int, W: int) -> list[Row]:
        """The conv's MACs (norm and ReLU count 0, as LayerNorm and GELU elsewhere) and parameters."""
        rows = [_conv_row(f"{prefix}.conv", self.conv, B, H, W)]
        if self.norm is not None:
            n = sum(int(p.data.size) for p in self.norm.parameters())
            rows.append((f"{prefix}.{self.norm_name}", "norm", (B, self.out_channels, H, W), n, 0))
        return rows

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, norm={self.norm_name}, act={self.activate is not None}"


class Dropout2d(Module):
    """Channel dropout (torch's ``nn.Dropout2d``, used before mmseg's classifier): each (image,
    channel) map is zeroed with probability p, the kept ones scaled by 1/(1-p).

    Shapes: x (B, H, W, C) -> same; the mask is (B, 1, 1, C), broadcast over the map.
    """

    def __init__(self, p: float = 0.1, rng: Rng = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p
        self.rng = default_rng(rng)

    def forward(self, x: Any) -> Any:
        mask = None
        if self.training and self.p > 0.0:
            keep = 1.0 - self.p
            u = host_uniform(self.rng, (x.shape[0], 1, 1, x.shape[-1]), dtype=x.dtype, xp=get_xp(x))
            mask = (u < keep).astype(x.dtype) * (1.0 / keep)
        out, cache = F.dropout_forward(x, self.p, mask=mask, training=self.training)
        self._save(cache)
        return out

    def backward(self, dout: Any) -> Any:
        return F.dropout_backward(dout, self._pop())

    def extra_repr(self) -> str:
        return f"p={self.p}"


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

    def flop_rows(self, prefix: str, B: int, sizes: Sequence[tuple[int, int]]) -> list[Row]:
        rows: list[Row] = []
        for s, (H, W) in enumerate(sizes):
            rows += self.lateral_convs[s].flop_rows(f"{prefix}.lateral_convs.{s}", B, H, W)
        for s, (H, W) in enumerate(sizes):
            rows += self.fpn_convs[s].flop_rows(f"{prefix}.fpn_convs.{s}", B, H, W)
        return rows

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
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(Sequential(layers))
        self.dropout = Dropout2d(dropout_ratio, g)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1, rng=g, dtype=dtype)
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

    def flop_rows(self, prefix: str, B: int, sizes: Sequence[tuple[int, int]]) -> list[Row]:
        rows: list[Row] = []
        for s, (H, W) in enumerate(sizes):
            for j, m in enumerate(self.scale_heads[s]):
                if isinstance(m, ConvModule):
                    rows += m.flop_rows(f"{prefix}.scale_heads.{s}.{j}", B, H, W)
                else:  # the 2x upsampling: no parameters, its weighted sums are not counted
                    H, W = 2 * H, 2 * W
        H0, W0 = sizes[0]
        rows.append(_conv_row(f"{prefix}.conv_seg", self.conv_seg, B, H0, W0))
        return rows

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


class Segmenter(Module):
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

    def __init__(self, backbone: Twins, neck: FPN, decode_head: FPNHead, crop_size: int = 512) -> None:
        super().__init__()
        self.backbone, self.neck, self.decode_head = backbone, neck, decode_head
        self.num_classes = decode_head.num_classes
        self.crop_size = crop_size  # the training crop of the config (what `twins-np flops` counts by default)

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
        cache = self._pop()
        a_h, a_w = cache.resize
        B = None if getattr(dlogits, "ndim", 0) != 4 else dlogits.shape[0]
        want = (B, self.num_classes, a_h.shape[0], a_w.shape[0])
        if tuple(getattr(dlogits, "shape", ())) != want:
            self._save(cache)  # a wrong gradient must not discard the forward
            raise ValueError(f"dlogits must have the logits' shape {want}, got {tuple(getattr(dlogits, 'shape', ()))}")
        d = F.resize_backward(dlogits.transpose(0, 2, 3, 1), cache.resize)
        return self.backbone.backward_intermediates(self.neck.backward(self.decode_head.backward(d)))

    def loss(self, x: Any, target: Any, label_smoothing: float = 0.0, ignore_index: int = 255) -> tuple[float, Any]:
        """Forward + per-pixel cross-entropy (mean over non-ignored pixels); returns (loss, logits).

        The arguments come in :meth:`Twins.loss`'s order (``label_smoothing`` third), so a
        training loop calls either model the same way; ``ignore_index`` comes last.
        The mean is torch's ``cross_entropy(..., ignore_index=255)``: over the counted pixels.
        mmsegmentation's ``CrossEntropyLoss`` divides by *all* pixels unless
        ``avg_non_ignore=True``; with ignored pixels its loss is smaller by the counted share.
        Call :meth:`backward_loss` next.
        """
        logits = self.forward(x)
        loss, cache = F.pixel_cross_entropy_forward(logits, target, ignore_index, label_smoothing)
        self._save(cache, slot="_loss_cache")  # tagged like every cache: backward_loss checks it is this forward's
        return loss, logits

    def backward_loss(self) -> Any:
        """Backward from the loss computed by :meth:`loss`; returns dx."""
        if getattr(self, "_loss_cache", None) is None:
            raise RuntimeError("backward_loss() needs a loss() call before it")
        return self.backward(F.pixel_cross_entropy_backward(1.0, self._pop("_loss_cache")))

    def level_sizes(self, H: int, W: int) -> list[tuple[int, int]]:
        """(H_s, W_s) of each backbone level for an H x W image (the patch embeddings floor)."""
        sizes = []
        for embed in self.backbone.patch_embeds:
            p = int(embed.proj.weight.shape[-1])
            H, W = H // p, W // p
            sizes.append((H, W))
        return sizes

    def flop_rows(self, B: int, H: int, W: int) -> list[Row]:
        """Rows of the neck and the head (the backbone's come from :func:`twins_np.analysis.count_flops`)."""
        sizes = self.level_sizes(H, W)
        return self.neck.flop_rows("neck", B, sizes) + self.decode_head.flop_rows("decode_head", B, sizes)


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
    from .registry import MODEL_CONFIGS, create_model

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
    return Segmenter(backbone, neck, head, crop_size=crop)
