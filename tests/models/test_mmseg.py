"""mmsegmentation's Twins segmenters: twins-np's mmseg flavour against a torch reference written from mmseg's source.

The reference (``mmseg_reference.py``) has mmsegmentation's module names, so its
``state_dict`` holds the keys of the published checkpoints; twins-np loads it through
:func:`twins_np.models.mmseg.from_mmseg`, and every gradient is compared under its
mmsegmentation name (:func:`~twins_np.models.mmseg.to_mmseg` stacks GSA's q and kv back into
``in_proj``). Float64 throughout, sizes that are not multiples of 32: 72 x 56 (stage maps
18x14, 9x7, 5x4, 3x2 with the corner padding, where timm's floor gives 4x3 and 2x1), 61 x 83,
and, marked slow, 512 x 683 (an ADE20K image after its test resize) and 512 x 512 (the
training crop, where every LSA window layer is masked).
"""

from __future__ import annotations

import numpy as np
import pytest

from twins_np.gradcheck import TOLERANCES
from twins_np.models import create_segmenter
from twins_np.models.mmseg import create_segmenter_for, from_mmseg, is_mmseg_state, recognise, to_mmseg

TOL = TOLERANCES["parity_f64_rel"]

torch = pytest.importorskip("torch")
import mmseg_reference as ref  # noqa: E402  (torch is needed first)

pytestmark = pytest.mark.parity


def _rel(a, b) -> float:
    b = np.asarray(b)
    return float(np.max(np.abs(np.asarray(a) - b)) / max(float(np.max(np.abs(b))), 1e-300))


def _pair(backbone, head, num_classes=7, channels=None, aux_channels=None, seed=0):
    """The torch reference with random weights and the twins-np segmenter loaded from its state dict."""
    torch.manual_seed(seed)
    tm = ref.randomize(ref.segmenter(backbone, head, num_classes, channels, aux_channels).double(), seed)
    state = {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}
    overrides = {}
    if channels is not None:
        overrides["head_channels"] = channels
    if aux_channels is not None:
        overrides["aux_channels"] = aux_channels
    name = f"twins_{backbone}_{'uperhead' if head == 'uper' else 'fpn'}_ade20k"
    seg = create_segmenter(name, num_classes, dtype=np.float64, **overrides)
    seg.load_state_dict(from_mmseg(state))  # strict: every key placed, none missing
    for m in (seg, tm):
        m.eval()
    return tm, seg


def _grads_by_mmseg_name(seg) -> dict[str, np.ndarray]:
    ours = {k: p.grad for k, p in seg.named_parameters() if p.grad is not None}
    return to_mmseg(ours)


def _check(tm, seg, x, forward_t, forward_n, backward_n):
    tx = torch.tensor(x, requires_grad=True)
    touts = forward_t(tx)
    touts = touts if isinstance(touts, list) else [touts]
    r = np.random.default_rng(5)
    ds = [r.standard_normal(tuple(t.shape)) for t in touts]
    torch.autograd.backward(touts, [torch.tensor(d) for d in ds])
    outs = forward_n(x)
    outs = outs if isinstance(outs, list) else [outs]
    dx = backward_n(ds)
    errs = {f"output {i}": _rel(o, t.detach().numpy()) for i, (o, t) in enumerate(zip(outs, touts))}
    errs["dx"] = _rel(dx, tx.grad.numpy())
    theirs = {k: p.grad.numpy() for k, p in tm.named_parameters() if p.grad is not None}
    ours = _grads_by_mmseg_name(seg)
    assert set(ours) == set(theirs), (sorted(set(ours) ^ set(theirs)))[:6]
    errs.update({k: _rel(ours[k], theirs[k]) for k in theirs})
    worst = max(errs, key=errs.get)
    assert errs[worst] <= TOL, f"worst: {worst} rel err {errs[worst]:.3e}"
    return errs


# the FPN cases are the published configs whole; the UPerNet ones narrow the head to 64 channels
# (every code path is the same, the 512-channel 3x3 convs would only cost time)
CASES = [
    ("pcpvt_small", "fpn", (72, 56), None),
    ("svt_small", "fpn", (72, 56), None),
    ("svt_small", "uper", (72, 56), 64),
    ("pcpvt_small", "uper", (61, 83), 64),
]


@pytest.mark.parametrize(
    ("backbone", "head", "size", "channels"), CASES, ids=[f"{b}-{h}-{s[0]}x{s[1]}" for b, h, s, _ in CASES]
)
def test_segmenter_matches_mmseg_reference(backbone, head, size, channels):
    """Logits, the image gradient and every parameter gradient, float64, BatchNorm in eval mode (running statistics)."""
    tm, seg = _pair(backbone, head, channels=channels, aux_channels=None if channels is None else 32)
    x = np.random.default_rng(4).standard_normal((2, 3, *size))
    _check(tm, seg, x, tm, seg.forward, lambda ds: seg.backward(ds[0]))
    if head == "uper":  # the auxiliary head runs in training only: it received nothing
        assert all(p.grad is None for p in seg.auxiliary_head.parameters())


@pytest.mark.parametrize("backbone", ["svt_small", "pcpvt_small"])
def test_training_outputs_with_the_auxiliary_head_and_batch_statistics(backbone):
    """forward_train: the decode and auxiliary logits, BatchNorm in training mode; every gradient, aux head included.

    Three images: with two, the 1x1 pooled map of the PPM's first branch has two values per
    channel, which BatchNorm maps to exactly -1 and +1 whatever they are, so the gradient
    into that branch is zero up to rounding on both sides and a relative comparison says nothing.
    """
    tm, seg = _pair(backbone, "uper", channels=64, aux_channels=32)
    tm.train()
    seg.train()
    seg.decode_head.dropout.p = seg.auxiliary_head.dropout.p = 0.0  # the reference has no dropout
    x = np.random.default_rng(6).standard_normal((3, 3, 64, 72))
    _check(tm, seg, x, tm.forward_train, seg.forward_train, seg.backward_train)
    # the running statistics moved as torch's did
    theirs = {k: v.numpy() for k, v in tm.state_dict().items() if "running" in k}
    ours = to_mmseg({k: v for k, v in seg.state_dict().items() if "running" in k})
    assert max(_rel(ours[k], theirs[k]) for k in theirs) <= TOL


def test_the_auxiliary_loss_counts_0_4_times():
    """loss = CE(decode) + 0.4 CE(aux), each the mean over counted pixels; backward_loss equals the torch sum's."""
    tm, seg = _pair("svt_small", "uper", num_classes=5, channels=32, aux_channels=16)
    x = np.random.default_rng(7).standard_normal((2, 3, 56, 64))
    y = np.random.default_rng(8).integers(0, 5, size=(2, 56, 64))
    y[:, :6] = 255
    tx = torch.tensor(x, requires_grad=True)
    main, aux = tm.forward_train(tx)
    ty = torch.tensor(y)
    tloss = torch.nn.functional.cross_entropy(main, ty, ignore_index=255) + 0.4 * torch.nn.functional.cross_entropy(
        aux, ty, ignore_index=255
    )
    tloss.backward()
    loss, logits = seg.loss(x, y)
    dx = seg.backward_loss()
    assert abs(loss - float(tloss.detach())) <= TOL * abs(float(tloss.detach()))
    assert _rel(logits, main.detach().numpy()) <= TOL
    assert _rel(dx, tx.grad.numpy()) <= TOL
    theirs = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    ours = _grads_by_mmseg_name(seg)
    assert set(ours) == set(theirs)
    assert max(_rel(ours[k], theirs[k]) for k in theirs) <= TOL


@pytest.mark.slow
def test_svt_small_at_512x683():
    """An ADE20K image after its test resize (683 = 4 * 170.75: every stage pads), UPerNet with narrow heads."""
    tm, seg = _pair("svt_small", "uper", num_classes=3, channels=16, aux_channels=8)
    x = np.random.default_rng(9).standard_normal((1, 3, 512, 683))
    _check(tm, seg, x, tm, seg.forward, lambda ds: seg.backward(ds[0]))


@pytest.mark.slow
def test_pcpvt_small_uperhead_at_512x512():
    """The training crop: the PPM pools a 16x16 map into 3x3 and 6x6 overlapping bins; heads narrowed."""
    tm, seg = _pair("pcpvt_small", "uper", num_classes=3, channels=16, aux_channels=8)
    x = np.random.default_rng(10).standard_normal((1, 3, 512, 512))
    _check(tm, seg, x, tm, seg.forward, lambda ds: seg.backward(ds[0]))


def test_slide_inference_matches_mmseg():
    """Sliding-window inference: crops every stride, the last one shifted to the border, overlaps averaged."""
    tm, seg = _pair("pcpvt_small", "fpn", num_classes=4, channels=32)
    x = np.random.default_rng(11).standard_normal((1, 3, 70, 100))
    with torch.no_grad():
        want = tm.slide_inference(torch.tensor(x), (48, 64), (32, 40), 4).numpy()
    got = seg.inference(x, mode="slide", crop_size=(48, 64), stride=(32, 40))
    assert got.shape == (1, 4, 70, 100)
    assert _rel(got, want) <= TOL
    # a crop larger than the image: one window, the whole image, as whole-image inference
    assert _rel(seg.inference(x, mode="slide", crop_size=(128, 128), stride=(85, 85)), seg.inference(x)) <= TOL


def test_key_map_round_trip_and_recognition():
    tm, seg = _pair("svt_small", "uper", channels=64, aux_channels=32)
    state = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    assert is_mmseg_state(state) and not is_mmseg_state(seg.state_dict())
    ours = from_mmseg(state)
    assert set(ours) == set(seg.state_dict())
    back = to_mmseg(ours)
    assert set(back) == set(state) and all(np.array_equal(back[k], state[k]) for k in state)
    narrowed = {"head_channels": 64, "aux_channels": 32}
    assert recognise(state) == ("twins_svt_small_uperhead_ade20k", 7, narrowed)
    assert recognise(ours) == ("twins_svt_small_uperhead_ade20k", 7, narrowed)
    # the published widths need no override
    full = {k: np.empty(tuple(v.shape), np.float32) for k, v in ref.segmenter("svt_small", "uper", 150).state_dict().items()}
    assert recognise(full) == ("twins_svt_small_uperhead_ade20k", 150, {})
    assert set(from_mmseg(full)) == set(create_segmenter("twins_svt_small_uperhead_ade20k").state_dict())
    narrow = ref.segmenter("pcpvt_small", "fpn", 3, channels=32).state_dict()
    assert recognise(narrow) == ("twins_pcpvt_small_fpn_ade20k", 3, {"head_channels": 32})
    assert type(create_segmenter_for(narrow).decode_head).__name__ == "FPNHead"


def test_an_unmapped_key_is_named():
    tm, _ = _pair("pcpvt_small", "fpn")
    state = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    with pytest.raises(KeyError, match=r"'backbone\.layers\.0\.0\.attn\.extra\.weight' has no place"):
        from_mmseg({**state, "backbone.layers.0.0.attn.extra.weight": np.zeros(3)})
    with pytest.raises(KeyError, match=r"'ema\.weight' has no place"):
        from_mmseg({**state, "ema.weight": np.zeros(3)})


def test_the_flavour_options_change_what_they_should():
    """At 72 x 56 the corner padding changes the maps' sizes, the stage norms and the mask the values."""
    mm = create_segmenter("twins_svt_small_fpn_ade20k", 3)
    timm_like = create_segmenter("twins_svt_small_fpn", 3)
    from twins_np.analysis import level_sizes

    assert level_sizes(mm.backbone, 72, 56) == [(18, 14), (9, 7), (5, 4), (3, 2)]
    assert level_sizes(timm_like.backbone, 72, 56) == [(18, 14), (9, 7), (4, 3), (2, 1)]
    assert mm.backbone.norm_list is not None and timm_like.backbone.norm_list is None
    assert "backbone.norm_list.3.weight" in mm.state_dict()
    assert all(b.attn.pad_mask == "mmseg" for stage in mm.backbone.blocks for b in stage if hasattr(b.attn, "ws"))
    assert mm.backbone.blocks[0][0].norm1.eps == 1e-5 and timm_like.backbone.blocks[0][0].norm1.eps == 1e-6
    # PCPVT: no stage norms (norm_after_stage=False in mmsegmentation's configs)
    assert create_segmenter("twins_pcpvt_small_uperhead_ade20k", 3).backbone.norm_list is None


# --- loading mmsegmentation's checkpoint files --------------------------------------------------


def _write_mmseg_pth(tm, path):
    """A file laid out as mmsegmentation saves its checkpoints: state_dict plus meta."""
    meta = {"mmseg_version": "0.20.0", "config": "model = dict(type='EncoderDecoder', ...)", "CLASSES": ("a", "b", "c")}
    torch.save({"meta": meta, "state_dict": tm.state_dict()}, path)


def test_an_mmseg_pth_loads_strictly_and_reproduces_the_logits(tmp_path):
    """The acceptance case: an mmseg-keyed .pth from the reference with random weights, loaded strictly."""
    from twins_np.io import load_segmenter, load_weights

    tm, _ = _pair("svt_small", "uper", num_classes=3, channels=32, aux_channels=16)
    path = tmp_path / "twins_svt-s_uperhead_8x2_512x512_160k_ade20k.pth"
    _write_mmseg_pth(tm, path)
    x = np.random.default_rng(12).standard_normal((1, 3, 61, 83))
    with torch.no_grad():
        want = tm(torch.tensor(x)).numpy()
    seg = load_segmenter(path, dtype=np.float64)  # recognised: the model is built from the keys
    assert seg.model_cfg["name"] == "twins_svt_small_uperhead_ade20k" and seg.num_classes == 3
    seg.eval()
    assert _rel(seg.inference(x), want) <= TOL
    # load_weights into a model built by name: strict, buffers included
    same = create_segmenter("twins_svt_small_uperhead_ade20k", 3, dtype=np.float64, head_channels=32, aux_channels=16)
    load_weights(same, path)
    same.eval()
    assert _rel(same(x), want) <= TOL
    assert int(same.decode_head.bottleneck.bn.num_batches_tracked) == 7  # the file's buffers, not the init's


def test_loading_an_mmseg_file_names_what_does_not_fit(tmp_path):
    from twins_np.io import load_weights

    tm, _ = _pair("pcpvt_small", "fpn", num_classes=3, channels=16)
    state = tm.state_dict()
    state["backbone.layers.0.0.attn.relative_position_bias"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    torch.save({"meta": {}, "state_dict": state}, path)
    seg = create_segmenter("twins_pcpvt_small_fpn_ade20k", 3, head_channels=16)
    before = {k: v.copy() for k, v in seg.state_dict().items()}
    with pytest.raises(KeyError, match=r"'backbone\.layers\.0\.0\.attn\.relative_position_bias' has no place"):
        load_weights(seg, path)
    # strict=False that would load the neck and head but no backbone parameter: an error, nothing changed
    heads_only = {k: v for k, v in tm.state_dict().items() if not k.startswith("backbone.")}
    torch.save({"meta": {}, "state_dict": heads_only}, tmp_path / "heads.pth")
    with pytest.raises(KeyError, match="holds no parameter of the backbone"):
        load_weights(seg, tmp_path / "heads.pth", strict=False)
    assert all(np.array_equal(v, before[k]) for k, v in seg.state_dict().items())
    # timm's flavour of PCPVT has mmsegmentation's keys once mapped, but computes something else: refused
    torch.save({"meta": {}, "state_dict": tm.state_dict()}, tmp_path / "good.pth")
    timm_flavour = create_segmenter("twins_pcpvt_small_fpn", 3, head_channels=16)
    with pytest.raises(ValueError, match="built on timm's flavour of Twins .*patch_padding='floor'"):
        load_weights(timm_flavour, tmp_path / "good.pth")
    load_weights(seg, tmp_path / "good.pth")


def test_convert_writes_twins_np_names(tmp_path, capsys):
    from twins_np.cli import main
    from twins_np.io import load_weights, read_weights

    tm, _ = _pair("pcpvt_small", "fpn", num_classes=3, channels=16)
    src = tmp_path / "mmseg.pth"
    _write_mmseg_pth(tm, src)
    assert main(["convert", str(src), str(tmp_path / "w.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "twins_pcpvt_small_fpn_ade20k segmenter (3 classes, head_channels=16)" in out
    arrays = read_weights(tmp_path / "w.safetensors")
    assert "backbone.blocks.0.0.attn.q.weight" in arrays and not any(k.startswith("backbone.layers.") for k in arrays)
    seg = create_segmenter("twins_pcpvt_small_fpn_ade20k", 3, dtype=np.float64, head_channels=16)
    load_weights(seg, tmp_path / "w.safetensors")
    seg.eval()
    x = np.random.default_rng(13).standard_normal((1, 3, 40, 52))
    with torch.no_grad():
        assert _rel(seg(x), tm(torch.tensor(x)).numpy()) <= TOL


@pytest.mark.slow
def test_evaluate_an_mmseg_checkpoint_on_an_ade20k_folder(tmp_path, capsys):
    """`twins-np evaluate --weights CHECKPOINT.pth --data folder:ADEChallengeData2016`: the model from the keys,
    ADE20K's pipeline (rescale to fit 2048x512, reduce_zero_label, labels >= 150 scored as mmseg scores them),
    mmsegmentation's table; the areas equal those of the torch reference's whole inference and histc metric."""
    import json

    from PIL import Image

    from twins_np.cli import main
    from twins_np.data.segmentation import ADE20K_CLASSES, load_segmentation_images
    from twins_np.io import load_segmenter
    from twins_np.training import evaluate_segmenter_images

    torch.manual_seed(0)
    tm = ref.randomize(ref.segmenter("pcpvt_small", "fpn", 150, channels=16, neck_channels=32).double(), 14).eval()
    ckpt = tmp_path / "twins_pcpvt-s_fpn_fpnhead_8x4_512x512_80k_ade20k.pth"
    torch.save({"meta": {"CLASSES": ADE20K_CLASSES}, "state_dict": {k: v.float() for k, v in tm.state_dict().items()}}, ckpt)
    root = tmp_path / "ADEChallengeData2016"
    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations" / "validation").mkdir(parents=True)
    rng = np.random.default_rng(15)
    for name, (h, w) in (("ADE_val_1", (512, 683)), ("ADE_val_2", (300, 200))):  # kept; rescaled to 768x512
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(root / "images" / "validation" / f"{name}.jpg")
        label = rng.integers(0, 170, (h, w)).astype(np.uint8)  # 151..169 become 150..168: outside the 150 classes
        label[:20] = 255
        Image.fromarray(label).save(root / "annotations" / "validation" / f"{name}.png")

    assert main(["evaluate", "--weights", str(ckpt), "--data", f"folder:{root}", "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "twins_pcpvt_small_fpn_ade20k on folder:" in out and "2 images at their own sizes, rescaled to fit 2048x512" in out
    assert "per class results:" in out and "Summary:" in out and "| aAcc |" in out.replace("  ", " ")
    assert "chest of drawers" in out
    report = json.loads((tmp_path / "eval" / "evaluation_test.json").read_text())

    data = load_segmentation_images(root, "test", ADE20K_CLASSES, reduce_zero_label=True)
    seg32 = load_segmenter(ckpt)
    again = evaluate_segmenter_images(seg32, data, "cpu")
    assert report["area_intersect"] == again.scores["area_intersect"].tolist()  # the command is this evaluation
    assert report["miou"] == again.miou

    seg64 = load_segmenter(ckpt, dtype=np.float64)
    mine = evaluate_segmenter_images(seg64, data, "cpu").scores
    totals = [torch.zeros(150, dtype=torch.float64) for _ in range(4)]
    for i, (_, ann) in enumerate(data.pairs):
        image, _ = data.read(i)  # the pipeline's input; its resize is checked on its own
        label = ref.mmseg_labels(torch.from_numpy(np.asarray(Image.open(ann)).astype(np.int64)), reduce_zero_label=True)
        with torch.no_grad():
            logits = ref.resize(tm.double()(torch.from_numpy(image.astype(np.float64))[None]), label.shape)
        for t, a in zip(totals, ref.intersect_and_union(logits.argmax(1)[0], label, 150)):
            t += a
    for key, t in zip(("area_intersect", "area_union", "area_pred", "area_label"), totals):
        assert np.array_equal(mine[key], t.numpy().astype(np.int64)), key
    assert mine["area_pred"].sum() > mine["area_label"].sum()  # the out-of-range labels count as predictions only


@pytest.mark.gpu
def test_mmseg_segmenter_on_the_gpu_matches_numpy():
    """The mmseg flavour (corner pad, masks, stage norms) and UPerNet with its auxiliary loss, and slide
    inference, on CuPy: every array stays on the device and the numbers are NumPy's."""
    from twins_np.backend import asnumpy, cupy_available, is_cupy_array, to_device

    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    _, cpu = _pair("svt_small", "uper", num_classes=4, channels=16, aux_channels=8)
    _, gpu = _pair("svt_small", "uper", num_classes=4, channels=16, aux_channels=8)
    gpu.to_device("gpu")
    x = np.random.default_rng(16).standard_normal((2, 3, 61, 83))
    y = np.random.default_rng(17).integers(0, 4, size=(2, 61, 83))
    y[:, :5] = 255
    results = []
    for model, dev in ((cpu, "cpu"), (gpu, "gpu")):
        loss, logits = model.loss(to_device(x, dev), to_device(y, dev))
        dx = model.backward_loss()
        slide = model.inference(to_device(x, dev), mode="slide", crop_size=(48, 64), stride=(32, 40))
        results.append((loss, logits, dx, slide, {k: p.grad for k, p in model.named_parameters()}))
    (l_c, lo_c, dx_c, s_c, g_c), (l_g, lo_g, dx_g, s_g, g_g) = results
    assert all(is_cupy_array(a) for a in (lo_g, dx_g, s_g, *g_g.values()))
    tol = TOLERANCES["parity_model_f64_rel"]
    assert abs(l_c - l_g) <= tol * abs(l_c)
    for name, a, b in [("logits", lo_c, lo_g), ("dx", dx_c, dx_g), ("slide", s_c, s_g)] + [(k, g_c[k], g_g[k]) for k in g_c]:
        assert _rel(asnumpy(b), a) <= tol, name


@pytest.mark.gpu
def test_mmseg_evaluation_on_the_gpu_matches_numpy(tmp_path):
    from PIL import Image

    from twins_np.backend import cupy_available
    from twins_np.data.segmentation import load_segmentation_images
    from twins_np.training import evaluate_segmenter_images

    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    rng = np.random.default_rng(18)
    for i, (h, w) in enumerate([(40, 53), (37, 30)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 7, (h, w)).astype(np.uint8)).save(tmp_path / "annotations" / f"{i}.png")
    data = load_segmentation_images(tmp_path, "test", ["a", "b", "c", "d"], reduce_zero_label=True, scale=(96, 64))
    _, seg = _pair("pcpvt_small", "fpn", num_classes=4, channels=16)
    on_cpu = evaluate_segmenter_images(seg, data, "cpu").scores
    seg.to_device("gpu")
    on_gpu = evaluate_segmenter_images(seg, data, "gpu").scores
    for key in ("area_intersect", "area_union", "area_pred", "area_label"):
        assert np.array_equal(on_cpu[key], on_gpu[key]), key
