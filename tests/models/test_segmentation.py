"""Semantic FPN (neck, head, whole segmenter) against a PyTorch reference built here from torch.nn.

The reference follows mmsegmentation's FPN, FPNHead and EncoderDecoder: lateral 1x1 convs,
top-down nearest resizing onto the finer level's size, 3x3 output convs; per level
[3x3 conv (+ norm) + ReLU, bilinear 2x] to stride r_0, levels summed (bilinear onto level 0),
dropout, 1x1 conv_seg, logits resized bilinearly to the image. Its modules carry the same
names as twins-np's, so one state_dict fills both, and every parameter gradient is compared
by key. The backbone is timm's Twins through ``forward_intermediates``.

Sizes are not multiples of 32 (100x132, 72x56): the levels are 25x33, 12x16, 6x8 (stride 4,
8, 16) and 12x16 lands on 25x33 only through the resizes.
"""

from __future__ import annotations

import numpy as np
import pytest

from twins_np.gradcheck import TOLERANCES
from twins_np.models import MODEL_CONFIGS
from twins_np.models.segmentation import FPN, FCNHead, FPNHead, Segmenter, UPerHead, create_segmenter, list_segmenters

TOL = TOLERANCES["parity_f64_rel"]
NORMS = [None, "gn", "bn"]


def _torch_reference(torch, ours_head: FPNHead, ours_neck: FPN, backbone=None):
    """A torch.nn Segmenter with the same structure and names as twins-np's."""
    tnn, tF = torch.nn, torch.nn.functional

    class ConvModule(tnn.Module):
        def __init__(self, m):
            super().__init__()
            w = m.conv.weight.shape
            self.conv = tnn.Conv2d(w[1], w[0], w[2], padding=m.conv.padding, bias=m.conv.bias is not None)
            if m.norm_name == "gn":
                self.gn = tnn.GroupNorm(m.gn.num_groups, w[0], eps=m.gn.eps)
            if m.norm_name == "bn":
                self.bn = tnn.BatchNorm2d(w[0], eps=m.bn.eps, momentum=m.bn.momentum)
            self.norm_name, self.act = m.norm_name, m.activate is not None

        def forward(self, x):
            x = self.conv(x)
            if self.norm_name:
                x = getattr(self, self.norm_name)(x)
            return tF.relu(x) if self.act else x

    class Neck(tnn.Module):
        def __init__(self):
            super().__init__()
            self.lateral_convs = tnn.ModuleList([ConvModule(m) for m in ours_neck.lateral_convs])
            self.fpn_convs = tnn.ModuleList([ConvModule(m) for m in ours_neck.fpn_convs])

        def forward(self, feats):
            lat = [c(f) for c, f in zip(self.lateral_convs, feats)]
            for i in range(len(lat) - 1, 0, -1):
                lat[i - 1] = lat[i - 1] + tF.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
            return [c(p) for c, p in zip(self.fpn_convs, lat)]

    class Head(tnn.Module):
        def __init__(self):
            super().__init__()
            self.scale_heads = tnn.ModuleList()
            for seq in ours_head.scale_heads:
                layers = [
                    ConvModule(m) if hasattr(m, "conv") else tnn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
                    for m in seq
                ]
                self.scale_heads.append(tnn.Sequential(*layers))
            self.dropout = tnn.Dropout2d(ours_head.dropout.p)
            self.conv_seg = tnn.Conv2d(ours_head.channels, ours_head.num_classes, 1)

        def forward(self, feats):
            out = self.scale_heads[0](feats[0])
            for head, f in zip(list(self.scale_heads)[1:], feats[1:]):
                out = out + tF.interpolate(head(f), size=out.shape[2:], mode="bilinear", align_corners=False)
            return self.conv_seg(self.dropout(out))

    class Seg(tnn.Module):
        def __init__(self):
            super().__init__()
            if backbone is not None:
                self.backbone = backbone
            self.neck, self.decode_head = Neck(), Head()

        def forward(self, x):
            feats = self.backbone.forward_intermediates(x, intermediates_only=True)
            logits = self.decode_head(self.neck(feats))
            return tF.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)

    return Seg().double()


def _randomize(torch, module):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 0.3) + (1.0 if p.ndim == 1 else 0.0) * 0)


def _rel(a, b) -> float:
    b = np.asarray(b)
    return float(np.max(np.abs(np.asarray(a) - b)) / max(float(np.max(np.abs(b))), 1e-300))


def _compare_grads(ours, tm, skip=()) -> dict[str, float]:
    tgrads = {k: p.grad.numpy() for k, p in tm.named_parameters() if p.grad is not None}
    errs = {}
    for k, p in ours.named_parameters():
        assert p.grad is not None, f"{k} received no gradient"
        errs[k] = _rel(p.grad, tgrads[k])
    return errs


def _worst(errs):
    k = max(errs, key=errs.get)
    return k, errs[k]


@pytest.mark.parity
@pytest.mark.parametrize("norm", NORMS, ids=["nonorm", "gn", "bn"])
@pytest.mark.parametrize("sizes", [[(25, 33), (12, 16), (6, 8), (3, 4)], [(18, 14), (9, 7), (4, 3)]], ids=["4lvl", "3lvl"])
def test_neck_and_head_match_torch(norm, sizes):
    torch = pytest.importorskip("torch")
    L = len(sizes)
    chans, strides = [6, 10, 12, 16][:L], [4, 8, 16, 32][:L]
    neck = FPN(chans, 8, rng=1, dtype=np.float64)
    head = FPNHead([8] * L, 8, 5, strides, norm=norm, num_groups=2, dropout_ratio=0.1, rng=2, dtype=np.float64)
    tm = _torch_reference(torch, head, neck)
    _randomize(torch, tm)
    state = {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}
    neck.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("neck.")})
    head.load_state_dict({k[12:]: v for k, v in state.items() if k.startswith("decode_head.")}, strict=False)
    head.train(norm == "bn")  # BatchNorm in training mode uses batch statistics; dropout stays off
    head.dropout.p = 0.0
    tm.decode_head.train(norm == "bn")
    tm.decode_head.dropout.p = 0.0
    r = np.random.default_rng(3)
    feats = [r.standard_normal((2, c, h, w)) for c, (h, w) in zip(chans, sizes)]
    tfeats = [torch.tensor(f, requires_grad=True) for f in feats]
    tout = tm.decode_head(tm.neck(tfeats))
    d = r.standard_normal(tuple(tout.shape))
    tout.backward(torch.tensor(d))
    out = head(neck([f.transpose(0, 2, 3, 1) for f in feats]))
    dfeats = neck.backward(head.backward(d.transpose(0, 2, 3, 1)))
    assert out.shape == (2, *sizes[0], 5)
    assert _rel(out.transpose(0, 3, 1, 2), tout.detach().numpy()) <= TOL
    for s in range(L):
        assert _rel(dfeats[s].transpose(0, 3, 1, 2), tfeats[s].grad.numpy()) <= TOL, f"level {s}"
    errs = {**{"neck." + k: v for k, v in _compare_grads(neck, tm.neck).items()},
            **{"decode_head." + k: v for k, v in _compare_grads(head, tm.decode_head).items()}}  # fmt: skip
    k, e = _worst(errs)
    assert e <= TOL, f"worst gradient {k}: {e:.3e}"


def _timm_backbone(torch, name):
    from timm.models.twins import Twins as TimmTwins

    torch.manual_seed(0)
    tb = TimmTwins(**MODEL_CONFIGS[name]).double()
    with torch.no_grad():
        for p in tb.parameters():
            if p.ndim == 1:  # zero biases and unit gammas would hide bugs
                p.normal_(0.0, 0.1)
    return tb


@pytest.mark.parity
@pytest.mark.parametrize(
    ("name", "size", "norm"),
    [
        ("twins_svt_teach64_fpn", (100, 132), "gn"),
        ("twins_pcpvt_teach64_fpn", (72, 56), "gn"),
        ("twins_svt_teach64_fpn", (72, 56), None),
        ("twins_pcpvt_teach64_fpn", (100, 132), "bn"),
    ],
)
def test_segmenter_matches_torch(name, size, norm):
    """Logits, the image gradient and every parameter gradient (backbone included), float64."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    seg = create_segmenter(name, num_classes=7, dtype=np.float64, norm=norm)
    # BatchNorm runs in training mode (batch statistics, the hard case); dropout is off on both sides
    seg.train(norm == "bn")
    seg.decode_head.dropout.p = 0.0
    tb = _timm_backbone(torch, seg_backbone_name(name))
    tm = _torch_reference(torch, seg.decode_head, seg.neck, backbone=tb)
    torch.manual_seed(1)
    with torch.no_grad():
        for k, p in tm.named_parameters():
            if not k.startswith("backbone."):
                p.copy_(torch.randn_like(p) * 0.2)
    tm.train(norm == "bn")
    tm.decode_head.dropout.p = 0.0
    ours_keys = set(seg.state_dict())
    seg.load_state_dict({k: v.detach().numpy().copy() for k, v in tm.state_dict().items() if k in ours_keys})
    x = np.random.default_rng(4).standard_normal((2, 3, *size))
    tx = torch.tensor(x, requires_grad=True)
    tout = tm(tx)
    d = np.random.default_rng(5).standard_normal(tuple(tout.shape))
    tout.backward(torch.tensor(d))
    out = seg(x)
    dx = seg.backward(d)
    assert out.shape == (2, 7, *size)
    errs = {"logits": _rel(out, tout.detach().numpy()), "dx": _rel(dx, tx.grad.numpy()), **_compare_grads(seg, tm)}
    k, e = _worst(errs)
    assert e <= TOL, f"worst: {k} rel err {e:.3e}"


def seg_backbone_name(name: str) -> str:
    return name[: -len("_fpn")]


def test_state_dict_keys_are_mmsegmentations():
    seg = create_segmenter("twins_svt_teach64_fpn", num_classes=4, norm=None)
    keys = list(seg.state_dict())
    for k in [
        "backbone.patch_embeds.0.proj.weight",
        "neck.lateral_convs.0.conv.weight",
        "neck.lateral_convs.0.conv.bias",
        "neck.fpn_convs.2.conv.weight",
        "decode_head.scale_heads.0.0.conv.weight",
        "decode_head.scale_heads.2.2.conv.weight",
        "decode_head.conv_seg.weight",
        "decode_head.conv_seg.bias",
    ]:
        assert k in keys, k
    assert not any(k.startswith(("backbone.head", "backbone.norm.")) for k in keys)


def test_names_and_configs():
    names = list_segmenters()
    assert "twins_pcpvt_small_fpn" in names and "twins_svt_teach32_fpn" in names
    with pytest.raises(ValueError, match="unknown segmenter 'twins_fpn'"):
        create_segmenter("twins_fpn")
    with pytest.raises(TypeError, match=r"unknown options \['channels'\]"):
        create_segmenter("twins_svt_teach32_fpn", channels=3)


def test_loss_and_backward_loss_fill_every_gradient():
    seg = create_segmenter("twins_svt_teach32_fpn", num_classes=3, dtype=np.float64, norm=None)
    x = np.random.default_rng(6).standard_normal((2, 3, 40, 36))
    y = np.random.default_rng(7).integers(0, 3, size=(2, 40, 36))
    y[0, :5] = 255
    loss, logits = seg.loss(x, y, label_smoothing=0.1)
    assert logits.shape == (2, 3, 40, 36) and np.isfinite(loss)
    dx = seg.backward_loss()
    assert dx.shape == x.shape
    assert all(p.grad is not None for p in seg.parameters())
    with pytest.raises(RuntimeError, match="backward_loss\\(\\) needs a loss\\(\\) call"):
        seg.backward_loss()


def test_float32_in_float32_out():
    seg = create_segmenter("twins_svt_teach32_fpn", num_classes=3, norm=None)
    x = np.random.default_rng(8).standard_normal((1, 3, 32, 32)).astype(np.float32)
    out = seg(x)
    assert out.dtype == np.float32
    assert seg.backward(np.ones_like(out)).dtype == np.float32


def test_bad_inputs():
    seg = create_segmenter("twins_svt_teach32_fpn", num_classes=3, norm=None)
    with pytest.raises(ValueError, match="'x' must have 3 channels on axis 1"):
        seg(np.zeros((1, 4, 32, 32), np.float32))
    with pytest.raises(ValueError, match="smallest input it accepts is 8x8"):
        seg(np.zeros((1, 3, 4, 4), np.float32))
    out = seg(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"dlogits must have the logits' shape \(1, 3, 32, 32\)"):
        seg.backward(np.zeros((1, 4, 32, 32), np.float32))
    seg.backward(np.zeros_like(out))  # the forward survived the refused gradient
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) or equal ignore_index = 255"):
        seg.loss(np.zeros((1, 3, 32, 32), np.float32), np.full((1, 32, 32), 3))
    with pytest.raises(ValueError, match="FPN takes a list of 3 maps"):
        seg.neck([np.zeros((1, 4, 4, 32), np.float32)])
    with pytest.raises(ValueError, match=r"FPN: level 1 must have 64 channels"):
        seg.neck([np.zeros((1, 8, 8, 32), np.float32), np.zeros((1, 4, 4, 8), np.float32), np.zeros((1, 2, 2, 128), np.float32)])


def test_is_a_segmenter():
    assert isinstance(create_segmenter("twins_svt_teach32_fpn", num_classes=2, norm=None), Segmenter)


def test_flops_count_every_parameter_and_the_convs():
    from twins_np.analysis import count_flops, count_params

    seg = create_segmenter("twins_svt_teach64_fpn", num_classes=5)
    rep = count_flops(seg, (100, 132), batch_size=2)
    assert rep.params == count_params(seg)
    rows = {r.name: r for r in rep.rows}
    # level 0 is 25x33; the 3x3 fpn conv there: 2 * 25 * 33 * F * F * 9 with F = 32
    assert rows["neck.fpn_convs.0.conv"].macs == 2 * 25 * 33 * 32 * 32 * 9
    # level 2 (6x8) reaches stride 4 through two conv + 2x steps: 6x8 then 12x16
    assert rows["decode_head.scale_heads.2.2.conv"].macs == 2 * 12 * 16 * 16 * 16 * 9
    assert rows["decode_head.conv_seg"].macs == 2 * 25 * 33 * 16 * 5
    assert rep.groups()["FPN convs"] == sum(r.macs for r in rep.rows if r.kind == "conv")
    assert sum(rep.groups().values()) == rep.total
    by_name = count_flops("twins_svt_teach64_fpn", (100, 132), batch_size=2)
    assert by_name.total == count_flops(create_segmenter("twins_svt_teach64_fpn"), (100, 132), batch_size=2).total


def test_flops_command_lists_segmenters(capsys):
    from twins_np.cli import main

    assert main(["flops", "twins_svt_teach32_fpn", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "neck" in out and "decode_head" in out and "twins_svt_teach32_fpn at 32x32" in out


def test_a_few_adamw_steps_fit_one_batch():
    """The pieces train together: 30 AdamW steps on one batch of two-region images cut the loss."""
    from twins_np.optim import AdamW

    seg = create_segmenter("twins_svt_teach32_fpn", num_classes=2, seed=0)
    r = np.random.default_rng(9)
    x = r.standard_normal((2, 3, 16, 16)).astype(np.float32)
    y = np.zeros((2, 16, 16), np.int64)
    y[:, :, 8:] = 1  # left half class 0, right half class 1
    x[:, 0] += 2.0 * y  # ... with a visible cue in channel 0
    y[:, 0, :] = 255  # an ignored row
    opt = AdamW(seg.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(30):
        seg.zero_grad()
        loss, _ = seg.loss(x, y)
        seg.backward_loss()
        opt.step()
        first = loss if first is None else first
    assert loss < 0.3 * first, (first, loss)


# --- UPerNet and mmsegmentation's configurations ------------------------------------------------


def test_uperhead_flops_and_parameters():
    """The walker counts every conv of UPerHead at its level (PPM convs on their pooled maps), the auxiliary
    head's parameters but not its MACs (it runs in training only), and the corner-padded level sizes."""
    from twins_np.analysis import count_flops, count_params, level_sizes

    seg = create_segmenter("twins_svt_small_uperhead_ade20k", num_classes=5, head_channels=16, aux_channels=8)
    rep = count_flops(seg, (72, 56))
    assert rep.params == count_params(seg)
    assert level_sizes(seg.backbone, 72, 56) == [(18, 14), (9, 7), (5, 4), (3, 2)]
    rows = {r.name: r for r in rep.rows}
    assert rows["decode_head.psp_modules.3.1.conv"].macs == 6 * 6 * 512 * 16  # a 1x1 conv on the 6x6 pooled map
    assert rows["decode_head.bottleneck.conv"].macs == 3 * 2 * 16 * (512 + 4 * 16) * 9
    assert rows["decode_head.fpn_bottleneck.conv"].macs == 18 * 14 * 16 * (4 * 16) * 9
    assert rows["decode_head.conv_seg"].macs == 18 * 14 * 16 * 5
    aux = [r for r in rep.rows if r.name.startswith("auxiliary_head.")]
    assert aux and all(r.macs == 0 and r.kind == "aux (training only)" for r in aux)
    assert sum(r.params for r in aux) == count_params(seg.auxiliary_head)
    assert rep.total == sum(r.macs for r in rep.rows) and "backbone.norm_list.3" in rows


def test_mmseg_configs_match_mmsegmentations():
    """The published configurations: UPerHead of 512 channels on every stage, PPM 1/2/3/6, an FCN auxiliary
    head of 256 on stage 3 weighted 0.4, BatchNorm, whole-image testing; FPN 256/128 on the mmseg flavour."""
    for b in ("twins_pcpvt_small", "twins_svt_small"):
        seg = create_segmenter(f"{b}_uperhead_ade20k")
        dims = MODEL_CONFIGS[b]["embed_dims"]
        head = seg.decode_head
        assert head.in_channels == tuple(dims) and head.channels == 512 and head.psp_modules.pool_scales == (1, 2, 3, 6)
        assert seg.neck is None and seg.auxiliary_head.in_channels == dims[2] and seg.auxiliary_head.channels == 256
        assert seg.aux_weight == 0.4 and seg.test_cfg == {"mode": "whole"} and seg.num_classes == 150
        assert head.bottleneck.norm_name == "bn" and head.dropout.p == 0.1 and not seg.auxiliary_head.concat_input
        assert seg.backbone.patch_padding == "corner" and (seg.backbone.norm_list is not None) == ("svt" in b)
    fpn = create_segmenter("twins_pcpvt_small_fpn_ade20k")
    assert fpn.neck.out_channels == 256 and fpn.decode_head.channels == 128 and fpn.auxiliary_head is None
    with pytest.raises(TypeError, match=r"unknown options \['neck_channels'\] for twins_svt_small_uperhead_ade20k"):
        create_segmenter("twins_svt_small_uperhead_ade20k", neck_channels=64)
    with pytest.raises(ValueError, match="slide inference needs crop_size"):
        create_segmenter("twins_svt_small_uperhead_ade20k", head_channels=8, aux_channels=8, test_cfg={"mode": "slide"})


def test_segment_task_checks_head_options():
    from twins_np.training import ConfigError, TrainConfig, validate_config

    def config(overrides):
        return TrainConfig(task="segment", model="twins_svt_small_uperhead_ade20k", data="shapes", model_overrides=overrides)

    validate_config(config({"head_channels": 16, "aux_channels": 8, "aux_weight": 0.0}))
    with pytest.raises(ConfigError, match="neck_channels not an option of twins_svt_small_uperhead_ade20k"):
        validate_config(config({"neck_channels": 16}))
    with pytest.raises(ConfigError, match="aux_weight must be a number >= 0"):
        validate_config(config({"aux_weight": -1}))
    with pytest.raises(ConfigError, match="test_cfg must be a dict with mode one of"):
        validate_config(config({"test_cfg": {"mode": "tiles"}}))
    # the flavour options of the backbone are checked with the backbone's overrides
    validate_config(config({"patch_padding": "floor", "pad_mask": None, "norm_after_stage": False}))
    with pytest.raises(ConfigError, match="pad_mask must be one of None, 'mmseg', 'padded', got \"all\""):
        validate_config(config({"pad_mask": "all"}))
    with pytest.raises(ConfigError, match="patch_padding must be one of 'floor', 'corner'"):
        validate_config(config({"patch_padding": "ceil"}))


def test_uperhead_trains_a_few_steps():
    """The heads train together through LossModel's weighted sum: loss falls on one batch."""
    from twins_np.optim import AdamW

    seg = create_segmenter("twins_svt_teach32_fpn", num_classes=2, seed=0)  # keeps the teaching backbone's size
    uper = Segmenter(
        seg.backbone,
        None,
        UPerHead([32, 64, 128], 16, 2, norm="gn", num_groups=4, rng=1),
        crop_size=32,
        auxiliary_head=FCNHead(64, 8, 2, num_convs=1, concat_input=True, norm="gn", num_groups=4, rng=2),
        aux_in_index=1,
    )
    r = np.random.default_rng(9)
    x = r.standard_normal((2, 3, 16, 16)).astype(np.float32)
    y = np.zeros((2, 16, 16), np.int64)
    y[:, :, 8:] = 1
    x[:, 0] += 2.0 * y
    opt = AdamW(uper.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(40):
        uper.zero_grad()
        loss, _ = uper.loss(x, y)
        uper.backward_loss()
        opt.step()
        losses.append(loss)
    assert all(p.grad is not None for p in uper.parameters())  # the auxiliary head (conv_cat too) trained
    assert losses[-1] < 0.4 * losses[0], losses
