"""The PyTorch side of the segmentation benchmark: timm's Twins + a Semantic FPN from torch.nn.

Built to mirror a twins-np :class:`~twins_np.models.Segmenter` of the same name (same
channels, norms and level count, mmsegmentation's structure), so both libraries time the same
network. The parity tests (tests/models/test_segmentation.py) build their own reference and
compare weights, outputs and gradients; this one only has to cost the same.
"""

from __future__ import annotations

from typing import Any


def build(name: str, num_classes: int) -> Any:
    import torch
    from timm.models.twins import Twins

    from twins_np.models import MODEL_CONFIGS, SEGMENTER_CONFIGS

    tnn, tF = torch.nn, torch.nn.functional
    cfg = SEGMENTER_CONFIGS[name]
    bcfg = dict(MODEL_CONFIGS[cfg["backbone"]], num_classes=0)
    Fc, Dc, norm, groups = cfg["neck_channels"], cfg["head_channels"], cfg["norm"], cfg["num_groups"]

    def conv_module(cin: int, cout: int, k: int, with_norm: bool) -> Any:
        layers: list[Any] = [tnn.Conv2d(cin, cout, k, padding=k // 2, bias=not (with_norm and norm))]
        if with_norm and norm == "gn":
            layers.append(tnn.GroupNorm(groups, cout))
        if with_norm and norm == "bn":
            layers.append(tnn.BatchNorm2d(cout))
        if with_norm:
            layers.append(tnn.ReLU())
        return tnn.Sequential(*layers)

    class Seg(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = Twins(**bcfg)
            chans = list(bcfg["embed_dims"])
            strides = [bcfg.get("patch_size", 4) * 2**s for s in range(len(chans))]
            self.lateral_convs = tnn.ModuleList([conv_module(c, Fc, 1, False) for c in chans])
            self.fpn_convs = tnn.ModuleList([conv_module(Fc, Fc, 3, False) for _ in chans])
            self.scale_heads = tnn.ModuleList()
            for s in strides:
                n = max(1, (s // strides[0]).bit_length() - 1)
                layers: list[Any] = []
                for k in range(n):
                    layers.append(conv_module(Fc if k == 0 else Dc, Dc, 3, True))
                    if s != strides[0]:
                        layers.append(tnn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
                self.scale_heads.append(tnn.Sequential(*layers))
            self.dropout = tnn.Dropout2d(cfg["dropout_ratio"])
            self.conv_seg = tnn.Conv2d(Dc, num_classes, 1)

        def forward(self, x: Any) -> Any:
            feats = self.backbone.forward_intermediates(x, intermediates_only=True)
            lat = [c(f) for c, f in zip(self.lateral_convs, feats)]
            for i in range(len(lat) - 1, 0, -1):
                lat[i - 1] = lat[i - 1] + tF.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
            outs = [c(p) for c, p in zip(self.fpn_convs, lat)]
            out = self.scale_heads[0](outs[0])
            for head, f in zip(list(self.scale_heads)[1:], outs[1:]):
                out = out + tF.interpolate(head(f), size=out.shape[2:], mode="bilinear", align_corners=False)
            logits = self.conv_seg(self.dropout(out))
            return tF.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)

    return Seg()
