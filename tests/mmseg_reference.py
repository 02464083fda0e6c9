"""A torch reference of mmsegmentation's Twins segmenters, written for these tests from mmsegmentation's source.

mmsegmentation and mmcv are not dependencies: what their modules compute is restated here
in plain torch, with their module names, so ``state_dict()`` gives mmsegmentation's keys:

- backbone (mmseg/models/backbones/twins.py): ``PCPVT`` / ``SVT`` with ``patch_embeds``
  (utils/embed.py ``PatchEmbed``: ``AdaptivePadding(padding="corner")``, ``projection``
  conv, LayerNorm), ``position_encodings`` (CPE), ``layers`` of ``GSAEncoderLayer`` (GSA =
  mit.py's ``EfficientMultiheadAttention``: torch's ``nn.MultiheadAttention`` on the
  sub-sampled keys) and, in SVT, ``LSAEncoderLayer`` (its window mask included, with the
  ``[-pad:]`` slices as written there), mmcv's ``FFN`` (``layers.0.0``, ``layers.1``), and
  ``norm_list`` when ``norm_after_stage``; LayerNorms with torch's eps 1e-5;
- neck (necks/fpn.py ``FPN``, no norm, nearest top-down), decode heads
  (decode_heads/fpn_head.py, uper_head.py + psp_head.py ``PPM``, fcn_head.py), mmcv's
  ``ConvModule`` (conv without bias when normed, BatchNorm, ReLU);
- ``EncoderDecoder`` (segmentors/encoder_decoder.py): logits resized to the input,
  ``slide_inference``, and the auxiliary head's logits for training;
- the evaluation: ``LoadAnnotations``' ``reduce_zero_label`` and ``label_map`` and
  ``IoUMetric.intersect_and_union`` (``torch.histc``).

Dropout and drop path are left out: the tests compare with them off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as tF
from torch import nn


def resize(x, size):
    return tF.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PatchEmbed(nn.Module):
    def __init__(self, in_channels, embed_dims, patch):
        super().__init__()
        self.patch = patch
        self.projection = nn.Conv2d(in_channels, embed_dims, patch, patch)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x):
        h, w = x.shape[2:]
        p = self.patch
        pad_h = max((-(-h // p) - 1) * p + p - h, 0)  # AdaptivePadding: ceil(h / p) outputs
        pad_w = max((-(-w // p) - 1) * p + p - w, 0)
        if pad_h or pad_w:
            x = tF.pad(x, [0, pad_w, 0, pad_h])  # "corner": right and bottom
        x = self.projection(x)
        size = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), size


class LocallyGroupedSelfAttention(nn.Module):
    def __init__(self, dim, num_heads, window_size):
        super().__init__()
        self.num_heads, self.window_size = num_heads, window_size
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, hw):
        b, n, c = x.shape
        h, w = hw
        ws = self.window_size
        x = x.view(b, h, w, c)
        pad_r = (ws - w % ws) % ws
        pad_b = (ws - h % ws) % ws
        x = tF.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = x.shape[1:-1]
        _h, _w = Hp // ws, Wp // ws
        mask = torch.zeros((1, Hp, Wp), dtype=x.dtype)
        mask[:, -pad_b:, :].fill_(1)  # as written in mmsegmentation: -0 selects the whole axis
        mask[:, :, -pad_r:].fill_(1)
        x = x.reshape(b, _h, ws, _w, ws, c).transpose(2, 3)
        mask = mask.reshape(1, _h, ws, _w, ws).transpose(2, 3).reshape(1, _h * _w, ws * ws)
        attn_mask = mask.unsqueeze(2) - mask.unsqueeze(3)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, -1000.0).masked_fill(attn_mask == 0, 0.0)
        qkv = self.qkv(x).reshape(b, _h * _w, ws * ws, 3, self.num_heads, c // self.num_heads).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale + attn_mask.unsqueeze(2)
        attn = attn.softmax(dim=-1)
        attn = (attn @ v).transpose(2, 3).reshape(b, _h, _w, ws, ws, c)
        x = attn.transpose(2, 3).reshape(b, _h * ws, _w * ws, c)
        if pad_r > 0 or pad_b > 0:
            x = x[:, :h, :w, :].contiguous()
        return self.proj(x.reshape(b, n, c))


class GlobalSubsampledAttention(nn.Module):
    def __init__(self, dim, num_heads, sr_ratio):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, bias=True)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, hw):
        x_kv = x
        if self.sr_ratio > 1:
            b, n, c = x.shape
            x_kv = self.sr(x.transpose(1, 2).reshape(b, c, *hw))
            x_kv = self.norm(x_kv.flatten(2).transpose(1, 2))
        out = self.attn(query=x.transpose(0, 1), key=x_kv.transpose(0, 1), value=x_kv.transpose(0, 1))[0]
        return out.transpose(0, 1)  # identity=0 in GSAEncoderLayer: no residual here


class FFN(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        fc1 = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0))
        self.layers = nn.Sequential(fc1, nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x):
        return self.layers(x)


class EncoderLayer(nn.Module):
    def __init__(self, dim, num_heads, hidden, sr_ratio=1, window_size=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        if window_size is None:
            self.attn = GlobalSubsampledAttention(dim, num_heads, sr_ratio)
        else:
            self.attn = LocallyGroupedSelfAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, hidden)

    def forward(self, x, hw):
        x = x + self.attn(self.norm1(x), hw)
        return x + self.ffn(self.norm2(x))


class ConditionalPositionEncoding(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x, hw):
        b, n, c = x.shape
        feat = x.transpose(1, 2).view(b, c, *hw)
        return (self.proj(feat) + feat).flatten(2).transpose(1, 2)


class Twins(nn.Module):
    """mmsegmentation's PCPVT (``windows=None``) or SVT: stage maps (B, C_s, H_s, W_s)."""

    def __init__(self, embed_dims, num_heads, mlp_ratios, depths, sr_ratios, windows=None, norm_after_stage=False, in_channels=3):
        super().__init__()
        self.patch_embeds = nn.ModuleList()
        for i, d in enumerate(embed_dims):
            self.patch_embeds.append(PatchEmbed(in_channels if i == 0 else embed_dims[i - 1], d, 4 if i == 0 else 2))
        self.position_encodings = nn.ModuleList([ConditionalPositionEncoding(d) for d in embed_dims])
        self.layers = nn.ModuleList()
        for k, d in enumerate(embed_dims):
            blocks = []
            for i in range(depths[k]):
                lsa = windows is not None and i % 2 == 0  # SVT: even layers LSA, odd GSA
                blocks.append(
                    EncoderLayer(d, num_heads[k], mlp_ratios[k] * d, sr_ratios[k], windows[k] if lsa else None)
                )
            self.layers.append(nn.ModuleList(blocks))
        self.norm_after_stage = norm_after_stage
        if norm_after_stage:
            self.norm_list = nn.ModuleList([nn.LayerNorm(d) for d in embed_dims])

    def forward(self, x):
        outs = []
        b = x.shape[0]
        for i in range(len(self.layers)):
            x, hw = self.patch_embeds[i](x)
            for j, blk in enumerate(self.layers[i]):
                x = blk(x, hw)
                if j == 0:
                    x = self.position_encodings[i](x, hw)
            if self.norm_after_stage:
                x = self.norm_list[i](x)
            x = x.reshape(b, *hw, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs


class ConvModule(nn.Module):
    def __init__(self, cin, cout, k, padding=0, norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=padding, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x):
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return tF.relu(x) if self.act else x


class FPN(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.lateral_convs = nn.ModuleList([ConvModule(c, out_channels, 1, norm=False, act=False) for c in in_channels])
        self.fpn_convs = nn.ModuleList([ConvModule(out_channels, out_channels, 3, 1, norm=False, act=False) for _ in in_channels])

    def forward(self, inputs):
        lat = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + tF.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
        return [conv(x) for conv, x in zip(self.fpn_convs, lat)]


class FPNHead(nn.Module):
    def __init__(self, in_channels, channels, num_classes, strides=(4, 8, 16, 32)):
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for i, s in enumerate(strides):
            steps = max(1, (s // strides[0]).bit_length() - 1)
            layers = []
            for k in range(steps):
                layers.append(ConvModule(in_channels[i] if k == 0 else channels, channels, 3, 1))
                if s != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        out = self.scale_heads[0](x[0])
        for i in range(1, len(x)):
            out = out + resize(self.scale_heads[i](x[i]), out.shape[2:])
        return self.conv_seg(out)


class PPM(nn.ModuleList):
    def __init__(self, pool_scales, in_channels, channels):
        super().__init__()
        for s in pool_scales:
            self.append(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1)))

    def forward(self, x):
        return [resize(ppm(x), x.shape[2:]) for ppm in self]


class UPerHead(nn.Module):
    def __init__(self, in_channels, channels, num_classes, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.psp_modules = PPM(pool_scales, in_channels[-1], channels)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3, 1)
        self.lateral_convs = nn.ModuleList([ConvModule(c, channels, 1) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([ConvModule(channels, channels, 3, 1) for _ in in_channels[:-1]])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, 1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, inputs):
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        x = inputs[-1]
        laterals.append(self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1)))
        n = len(laterals)
        for i in range(n - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [self.fpn_convs[i](laterals[i]) for i in range(n - 1)]
        outs.append(laterals[-1])
        for i in range(n - 1, 0, -1):
            outs[i] = resize(outs[i], outs[0].shape[2:])
        return self.conv_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(nn.Module):
    def __init__(self, in_channels, channels, num_classes, in_index=2):
        super().__init__()
        self.in_index = in_index
        self.convs = nn.Sequential(ConvModule(in_channels, channels, 3, 1))  # num_convs=1, concat_input=False
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, inputs):
        return self.conv_seg(self.convs(inputs[self.in_index]))


class EncoderDecoder(nn.Module):
    def __init__(self, backbone, decode_head, neck=None, auxiliary_head=None):
        super().__init__()
        self.backbone = backbone
        if neck is not None:
            self.neck = neck
        self.decode_head = decode_head
        if auxiliary_head is not None:
            self.auxiliary_head = auxiliary_head

    def extract_feat(self, x):
        feats = self.backbone(x)
        return self.neck(feats) if hasattr(self, "neck") else feats

    def forward(self, x):
        """encode_decode: the decode head's logits resized to the input."""
        return resize(self.decode_head(self.extract_feat(x)), x.shape[2:])

    def forward_train(self, x):
        """[decode logits, auxiliary logits], each resized to the input (the label's size in training)."""
        feats = self.backbone(x)
        main = self.decode_head(self.neck(feats) if hasattr(self, "neck") else feats)
        return [resize(main, x.shape[2:]), resize(self.auxiliary_head(feats), x.shape[2:])]

    def slide_inference(self, x, crop, stride, num_classes):
        h_stride, w_stride = stride
        h_crop, w_crop = crop
        b, _, h_img, w_img = x.shape
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        preds = x.new_zeros((b, num_classes, h_img, w_img))
        count_mat = x.new_zeros((b, 1, h_img, w_img))
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y1 = h_idx * h_stride
                x1 = w_idx * w_stride
                y2 = min(y1 + h_crop, h_img)
                x2 = min(x1 + w_crop, w_img)
                y1 = max(y2 - h_crop, 0)
                x1 = max(x2 - w_crop, 0)
                crop_logit = self(x[:, :, y1:y2, x1:x2])
                preds += tF.pad(crop_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
                count_mat[:, :, y1:y2, x1:x2] += 1
        assert (count_mat == 0).sum() == 0
        return preds / count_mat


def pcpvt_small():
    return Twins([64, 128, 320, 512], [1, 2, 5, 8], [8, 8, 4, 4], [3, 4, 6, 3], [8, 4, 2, 1])


def svt_small():
    return Twins([64, 128, 256, 512], [2, 4, 8, 16], [4, 4, 4, 4], [2, 2, 10, 4], [8, 4, 2, 1], [7, 7, 7, 7], True)


def segmenter(
    backbone: str,
    head: str,
    num_classes: int,
    channels: int | None = None,
    aux_channels: int | None = None,
    neck_channels: int = 256,
):
    """mmsegmentation's ``twins_<backbone>_<head>`` ADE20K config as a torch EncoderDecoder (head widths adjustable)."""
    bb = {"pcpvt_small": pcpvt_small, "svt_small": svt_small}[backbone]()
    dims = [pe.projection.out_channels for pe in bb.patch_embeds]
    if head == "fpn":
        ch = 128 if channels is None else channels
        return EncoderDecoder(bb, FPNHead([neck_channels] * 4, ch, num_classes), neck=FPN(dims, neck_channels))
    ch = 512 if channels is None else channels
    aux = 256 if aux_channels is None else aux_channels
    return EncoderDecoder(bb, UPerHead(dims, ch, num_classes), auxiliary_head=FCNHead(dims[2], aux, num_classes))


def randomize(model, seed=0, scale=0.2):
    """Random weights everywhere (unit LayerNorm gammas and zero biases would hide mistakes); BN statistics too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (1.0 / fan_in) ** 0.5)
            elif name.endswith("weight"):  # norms' gammas
                p.copy_(1.0 + scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g, dtype=m.running_mean.dtype))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g, dtype=m.running_var.dtype))
                m.num_batches_tracked.fill_(7)
    return model


def mmseg_labels(label, reduce_zero_label=False, label_map=None):
    """mmsegmentation 1.x's LoadAnnotations: reduce_zero_label first, then label_map (on a copy)."""
    label = label.clone()
    if reduce_zero_label:
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    if label_map:
        copy = label.clone()
        for old, new in label_map.items():
            label[copy == old] = new
    return label


def intersect_and_union(pred, label, num_classes, ignore_index=255):
    """IoUMetric.intersect_and_union: histograms with torch.histc over [0, num_classes - 1]."""
    mask = label != ignore_index
    pred, label = pred[mask], label[mask]
    intersect = pred[pred == label]
    hist = lambda t: torch.histc(t.double(), bins=num_classes, min=0, max=num_classes - 1)  # noqa: E731
    area_intersect, area_pred, area_label = hist(intersect), hist(pred), hist(label)
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label
