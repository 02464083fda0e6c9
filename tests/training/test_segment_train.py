"""`twins-np train --task segment`, `evaluate` and `demo --task segment`: the segmentation runs.

Tiny settings: a small backbone and head (--model-overrides) on 32 shapes images of 32 x 32,
one or two epochs. The loop is the classification Trainer's; these tests check what the
segment task adds (metrics, figures, the joint flip) and that the loop's guarantees
(bit-identical resume, NaN stop, the --out rules) hold for a segmenter too.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from twins_np.cli import main
from twins_np.data import DataLoader, Dataset, PairedHorizontalFlip, load_dataset
from twins_np.models import Segmenter
from twins_np.training import (
    SEGMENT_METRIC_COLUMNS,
    TrainConfig,
    Trainer,
    blas_threads,
    evaluate_segmenter,
    load_checkpoint,
    read_metrics,
    validate_config,
)

TINY = json.dumps(
    {
        "embed_dims": [8, 16, 32],
        "num_heads": [1, 2, 2],
        "depths": [2, 2, 2],
        "neck_channels": 8,
        "head_channels": 8,
        "num_groups": 2,
    }
)
MODEL = "twins_svt_teach32_fpn"
QUICK = [
    "--task", "segment", "--model", MODEL, "--data", "shapes", "--image-size", "32", "--model-overrides", TINY,
    "--batch-size", "16", "--limit-train", "32", "--limit-test", "16", "--warmup-epochs", "0.5",
]  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with blas_threads(1):
        yield


def train(out: Path, *extra: str, epochs: int = 2) -> int:
    return main(["train", *QUICK, "--epochs", str(epochs), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seg")
    assert train(out) == 0
    return out


def test_train_writes_metrics_and_figures(trained: Path) -> None:
    for name in ("checkpoint.npz", "weights.npz", "metrics.csv", "metrics.json"):
        assert (trained / name).is_file(), name
    for name in ("learning_curves.png", "class_iou.png", "overlays.png"):
        assert (trained / name).read_bytes()[:8] == PNG, name
    assert not (trained / "confusion_matrix.png").exists()
    with open(trained / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == SEGMENT_METRIC_COLUMNS and len(rows) == 2
    history = read_metrics(trained / "metrics.json")
    for row in history:
        assert 0.0 <= row["test_miou"] <= row["test_pixel_acc"] + 1.0 and 0.0 <= row["test_pixel_acc"] <= 1.0
        assert np.isfinite(row["train_loss"]) and np.isfinite(row["test_loss"]) and row["lr"] > 0
    config = load_checkpoint(trained / "checkpoint.npz")["config"]
    assert (config["task"], config["model"], config["data"], config["image_size"]) == ("segment", MODEL, "shapes", 32)


def test_epoch_scores_are_mmseg_sums_over_the_test_split(trained: Path) -> None:
    """The history's test mIoU and loss, recomputed here from the saved weights without SegmentationMetrics."""
    from twins_np import functional as F

    trainer = Trainer.resume(trained, progress=False, log=None)
    model, test = trainer.model, trainer.test_set
    model.eval()
    logits = model(test.images)
    pred, y = logits.argmax(axis=1), test.labels
    keep = y != 255
    ious = []
    for k in range(test.num_classes):
        inter = int(((pred == k) & (y == k) & keep).sum())
        union = int((((pred == k) | (y == k)) & keep).sum())
        if union:
            ious.append(inter / union)
    last = trainer.history[-1]
    assert last["test_miou"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert last["test_pixel_acc"] == pytest.approx(((pred == y) & keep).sum() / keep.sum(), abs=1e-12)
    loss, _ = F.pixel_cross_entropy_forward(logits, y, trainer.config.label_smoothing, 255)
    assert last["test_loss"] == pytest.approx(loss, rel=1e-5)  # per-batch means weighted by counted pixels


def test_resume_is_bit_identical(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stop after epoch 1, resume: the same weights, bit for bit, as the uninterrupted run (flips, dropout on)."""
    assert train(tmp_path, "--stop-after", "1") == 0
    assert "stopped after epoch 1/2" in capsys.readouterr().out
    assert not (tmp_path / "weights.npz").exists()
    assert main(["train", "--resume", "--out", str(tmp_path)]) == 0
    assert "resuming" in capsys.readouterr().out
    with np.load(trained / "weights.npz") as a, np.load(tmp_path / "weights.npz") as b:
        assert sorted(a.files) == sorted(b.files) and len(a.files) > 20
        for name in a.files:
            assert a[name].tobytes() == b[name].tobytes(), name
    timing = ("seconds", "images_per_s")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(tmp_path / "metrics.json")]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(trained / "metrics.json")]


def test_nan_loss_stops_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    assert train(tmp_path, "--stop-after", "1") == 0
    ckpt = tmp_path / "checkpoint.npz"
    before = ckpt.read_bytes()
    real_loss = Segmenter.loss
    monkeypatch.setattr(Segmenter, "loss", lambda self, x, y, *a, **kw: (float("nan"), real_loss(self, x, y, *a, **kw)[1]))
    assert main(["train", "--resume", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "loss is nan at epoch 2, step 1/2" in err and f"{ckpt} (after epoch 1), was left untouched" in err
    assert ckpt.read_bytes() == before


def test_out_rules_apply_to_segment_runs(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from twins_np.training import claim_out_dir

    assert train(trained) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    with claim_out_dir(tmp_path):  # another run holds the folder
        assert train(tmp_path) == 2
    assert "twins-np train: error: " in capsys.readouterr().err
    (tmp_path / "class_iou.png").write_bytes(b"old")
    assert train(tmp_path, "--epochs", "1") == 2
    assert "class_iou.png" in capsys.readouterr().err  # an earlier run's figure is named, not silently replaced
    assert train(tmp_path, "--overwrite", epochs=1) == 0
    assert (tmp_path / "class_iou.png").read_bytes()[:8] == PNG


def test_evaluate_prints_miou_and_the_iou_table(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the training evaluated its 16 test images in batches of 2 x 16: the same batches give the same float32 logits
    argv = ["evaluate", "--weights", str(trained / "weights.npz"), "--out", str(tmp_path), "--batch-size", "32", "--limit", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "pixel accuracy" in out and "mIoU" in out
    for name in ("background", "square", "disc", "triangle"):
        assert name in out
    report = json.loads((tmp_path / "evaluation_test.json").read_text())
    last = read_metrics(trained / "metrics.json")[-1]
    assert report["miou"] == last["test_miou"] and report["pixel_accuracy"] == last["test_pixel_acc"]
    assert report["images"] == 16 and set(report["iou"]) == {"background", "square", "disc", "triangle"}
    for name in ("class_iou_test.png", "overlays_test.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_train_on_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--data folder:PATH with --reduce-zero-label: images/ + annotations/, label 0 ignored, k -> k - 1."""
    from PIL import Image

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        label = np.ones((40, 48), np.uint8)  # class 0 after the reduction
        label[8:24, 10 + i : 30 + i] = 2
        label[:, :3] = 0  # ignored after the reduction
        image = rng.integers(0, 60, (40, 48, 3)).astype(np.uint8)
        image[label == 2] = 200
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(label).save(root / "annotations" / f"im{i}.png")
    (root / "classes.txt").write_text("ground\nblock\n")
    argv = [a if a != "shapes" else f"folder:{root}" for a in QUICK]
    out = tmp_path / "run"
    assert main(["train", *argv, "--reduce-zero-label", "--epochs", "1", "--out", str(out)]) == 0
    assert "6 train / 6 test images, 32x32 pixels, 3 channel(s), 2 classes" in capsys.readouterr().out
    assert main(["evaluate", "--weights", str(out / "weights.npz")]) == 0
    assert "block" in capsys.readouterr().out


def _ade_like(root: Path, train_labels: list[list[int]], val_labels: list[list[int]]) -> None:
    """images/training, images/validation (ADE20K's layout): one 32x32 image per label list (horizontal bands)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, labels in (("training", train_labels), ("validation", val_labels)):
        for kind in ("images", "annotations"):
            (root / kind / split).mkdir(parents=True, exist_ok=True)
        for i, values in enumerate(labels):
            label = np.repeat(np.asarray(values, np.uint8), -(-32 // len(values)))[:32][:, None].repeat(32, 1)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.png")
            Image.fromarray(label).save(root / "annotations" / split / f"{i}.png")


def test_a_validation_split_without_the_rarest_class_trains_and_evaluates(tmp_path: Path, capsys) -> None:
    """Each split used to count its own classes: the first evaluation stopped the run."""
    _ade_like(tmp_path / "data", [[0, 1, 2, 3, 4], [0, 1]], [[0, 1, 2, 3]])
    argv = [a if a != "shapes" else f"folder:{tmp_path / 'data'}" for a in QUICK]
    assert main(["train", *argv, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "2 train / 1 test images, 32x32 pixels, 3 channel(s), 5 classes" in out and "finished" in out


def test_num_classes_gives_the_model_classes_the_label_maps_do_not_show(tmp_path: Path, capsys) -> None:
    """--num-classes 7 on label maps holding 0-3: a 7-class model, recorded, and evaluate rebuilds it from the record."""
    _ade_like(tmp_path / "data", [[0, 1, 2, 3], [0, 1]], [[0, 1, 2]])
    argv = [a if a != "shapes" else f"folder:{tmp_path / 'data'}" for a in QUICK]
    run = tmp_path / "run"
    assert main(["train", *argv, "--num-classes", "7", "--epochs", "1", "--out", str(run)]) == 0
    assert "2 train / 1 test images, 32x32 pixels, 3 channel(s), 7 classes" in capsys.readouterr().out
    with np.load(run / "weights.npz") as weights:
        assert weights["decode_head.conv_seg.weight"].shape[0] == 7
    assert main(["evaluate", "--weights", str(run / "weights.npz"), "--out", str(tmp_path / "eval")]) == 0
    assert "class 6" in capsys.readouterr().out  # the IoU table has the model's 7 classes
    report = json.loads((tmp_path / "eval" / "evaluation_test.json").read_text())
    assert len(report["iou"]) == 7 and len(report["area_union"]) == 7, report.keys()


@pytest.mark.parametrize(
    "extra, classes_txt, message",
    [
        (["--num-classes", "3"], None, "holds 3, outside [0, 3) and not the ignore index 255 (num_classes gives 3 classes)"),
        (["--num-classes", "5"], "a\nb\nc\nd\n", "classes.txt names 4 classes but num_classes is 5"),
        (["--num-classes", "0"], None, "--num-classes must be an integer from 1 to 65536"),
    ],
)
def test_num_classes_that_does_not_fit_the_folder_exits_2(tmp_path: Path, capsys, extra, classes_txt, message) -> None:
    _ade_like(tmp_path / "data", [[0, 1, 2, 3]], [[0, 1]])
    if classes_txt is not None:
        (tmp_path / "data" / "classes.txt").write_text(classes_txt)
    argv = [a if a != "shapes" else f"folder:{tmp_path / 'data'}" for a in QUICK]
    assert main(["train", *argv, *extra, "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twins-np train: error: ") and err.count("\n") == 1 and message in err, err


def test_batches_without_a_labelled_pixel_are_skipped_and_named_once(tmp_path: Path, capsys) -> None:
    """--reduce-zero-label and an all-background label map, batch 1: skipped (counted, named once), not a stop;
    the skipping is part of the run, so a resumed run is still bit-identical."""
    _ade_like(tmp_path / "data", [[1, 2], [0], [2, 1], [1, 0, 2]], [[1, 2]])
    argv = [a if a != "shapes" else f"folder:{tmp_path / 'data'}" for a in QUICK]
    argv = [*argv, "--reduce-zero-label", "--batch-size", "1", "--epochs", "2"]
    assert main(["train", *argv, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    notes = [ln for ln in out.splitlines() if ln.startswith("note:")]
    assert len(notes) == 2 and all("skipped 1 of 4 batches in which every pixel is ignored (255)" in n for n in notes), out
    assert f"holds {tmp_path / 'data' / 'images' / 'training' / '1.png'}, whose labels are all ignored" in notes[0]
    assert "holds" not in notes[1]  # the image is named once
    assert main(["train", *argv, "--out", str(tmp_path / "resumed"), "--stop-after", "1"]) == 0
    assert main(["train", "--resume", "--out", str(tmp_path / "resumed")]) == 0
    with np.load(tmp_path / "run" / "weights.npz") as a, np.load(tmp_path / "resumed" / "weights.npz") as b:
        for name in a.files:
            assert a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "segment", "--model", "twins_svt_teach32"], "--model: 'twins_svt_teach32' is a classifier"),
        (["--task", "segment", "--model", MODEL, "--data", "digits"], "--data: 'digits' has one label per image"),
        (["--model", MODEL], "--model: 'twins_svt_teach32_fpn' is a segmenter"),
        (["--data", "shapes"], "--data: 'shapes' has per-pixel labels"),
        (["--task", "segment", "--model", MODEL, "--data", "shapes", "--reduce-zero-label"], "--reduce-zero-label is for"),
        (["--task", "segment", "--model", MODEL, "--data", "shapes", "--num-classes", "5"], "--num-classes is for"),
        (["--model", "twins_svt_teach32", "--num-classes", "5"], "--num-classes is for segmentation folders"),
        (["--task", "segment", "--model", "twins_svt_small_fpn_ade20k", "--data", "folder:/x", "--num-classes", "5"],
         "--num-classes 5: twins_svt_small_fpn_ade20k is mmsegmentation's configuration for ade20k, whose 150 classes"),
        (["--task", "segment", "--model", MODEL, "--data", "folder:/nonexistent/x"], "does not exist"),
        (["--task", "segment", "--model", MODEL, "--data", "shapes", "--model-overrides", '{"head_channels": 0}'],
         "head_channels must be an integer >= 1"),
    ],
)  # fmt: skip
def test_bad_segment_settings_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(["train", *argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twins-np train: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_unknown_data_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--task", "segment", "--data", "shape", "--out", "x"]) == 2
    assert "unknown dataset 'shape' (did you mean 'shapes'?)" in capsys.readouterr().err


def test_paired_flip_moves_labels_with_their_pixels() -> None:
    data = load_dataset("shapes", "train", image_size=32, n=16)
    loader = DataLoader(data, 16, shuffle=False, augment=PairedHorizontalFlip(1.0))
    x, y = next(iter(loader))
    assert np.array_equal(x, data.images[..., ::-1]) and np.array_equal(y, data.labels[..., ::-1])
    half = DataLoader(data, 16, shuffle=False, seed=3, augment=PairedHorizontalFlip(0.5))
    x, y = next(iter(half))
    flipped = np.array([not np.array_equal(x[i], data.images[i]) for i in range(16)])
    assert 0 < flipped.sum() < 16
    for i in range(16):  # every label map went the same way as its image
        assert np.array_equal(y[i], data.labels[i][:, ::-1] if flipped[i] else data.labels[i])
    digits = Dataset(np.zeros((2, 1, 4, 4), np.float32), np.zeros(2, np.int64), ["a"], "toy")
    with pytest.raises(ValueError, match="one label per image"):
        DataLoader(digits, 2, augment=PairedHorizontalFlip())


def test_evaluate_segmenter_skips_ignored_pixels() -> None:
    """Pixels labelled 255 count in neither the scores nor the loss."""
    from twins_np.models import create_segmenter

    data = load_dataset("shapes", "test", image_size=32, n=4)
    tiny = json.loads(TINY)
    backbone = {k: tiny.pop(k) for k in ("embed_dims", "num_heads", "depths")}
    seg = create_segmenter(MODEL, num_classes=4, backbone_kwargs=backbone, **tiny)
    full = evaluate_segmenter(seg, data, 4, "cpu")
    masked = data.labels.copy()
    masked[:, :, :16] = 255
    half = evaluate_segmenter(seg, Dataset(data.images, masked, data.classes, "half", ignore_index=255), 4, "cpu")
    assert half.scores["area_label"].sum() == full.scores["area_label"].sum() // 2
    assert half.preds.shape == (4, 32, 32) and np.array_equal(half.preds, full.preds)
    assert half.loss != full.loss


def test_config_refuses_a_segmenter_for_classify() -> None:
    with pytest.raises(ValueError, match="model: 'twins_svt_teach64_fpn' is a segmenter"):
        validate_config(TrainConfig(model="twins_svt_teach64_fpn", data="digits"))
    validate_config(TrainConfig(task="segment", model="twins_svt_teach64_fpn", data="long_range_dense"))


def test_demo_segment_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--task", "segment", "--epochs", "1", "--limit-train", "16", "--limit-test", "8", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "twins_svt_teach64_fpn" in out and "mIoU" in out and "pixel accuracy" in out
    for name in ("learning_curves.png", "class_iou.png", "overlays.png", "weights.npz"):
        assert (tmp_path / name).is_file(), name


def test_evaluate_takes_typed_segmenter_settings(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--model and --model-overrides typed for a segmenter: head keys accepted, bad values refused before reading."""
    weights = str(trained / "weights.npz")
    base = ["evaluate", "--weights", weights, "--model", MODEL, "--out", str(tmp_path), "--limit", "4"]
    assert main([*base, "--model-overrides", TINY]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert main([*base, "--model-overrides", '{"head_channels": 0}']) == 2
    assert "--model-overrides: head_channels must be an integer >= 1, got 0" in capsys.readouterr().err


def test_predict_refuses_a_segmenter(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = Path(__file__).resolve().parents[1] / "data_files" / "chelsea.jpg"
    assert main(["predict", str(image), "--weights", str(trained / "weights.npz")]) == 2
    assert "is a segmenter: predict names the class of a whole image" in capsys.readouterr().err


def test_evaluate_names_recorded_settings_as_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A setting taken from the weights' record is not called a flag the user never typed."""
    from twins_np.models import create_segmenter
    from twins_np.training import save_npz

    cfg = TrainConfig(task="segment", model=MODEL, data="folder:/somewhere/ade", reduce_zero_label=True)
    weights = tmp_path / "weights.npz"
    save_npz(weights, create_segmenter(MODEL, num_classes=3).state_dict(), record={"config": cfg.to_dict()})
    assert main(["evaluate", "--weights", str(weights), "--data", "shapes"]) == 2
    err = capsys.readouterr().err
    assert f"the reduce_zero_label recorded in {weights} is for segmentation folders (--data folder:PATH), not shapes" in err
    assert main(["evaluate", "--weights", str(weights), "--model", "twins_svt_teach32"]) == 2
    err = capsys.readouterr().err
    assert "--model twins_svt_teach32 is a classifier, but" in err and "--reduce-zero-label" not in err, err


def test_batchnorm_segmenter_round_trip_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Train a BatchNorm segmenter one step, save, evaluate with the CLI: its running statistics load back,
    and the logits equal the trained model's bit for bit (before, evaluate refused the saved buffers, exit 2)."""
    from twins_np.io import convert_weights, load_weights

    bn = json.dumps({**json.loads(TINY), "norm": "bn"})
    argv = [a if a != TINY else bn for a in QUICK]
    out = tmp_path / "run"
    assert main(["train", *argv, "--limit-train", "16", "--epochs", "1", "--out", str(out)]) == 0  # 16 images: one step
    trained = Trainer.resume(out, progress=False, log=None).model  # the checkpoint's model: parameters and buffers
    assert int(trained.decode_head.scale_heads[0][0].bn.num_batches_tracked) == 1
    capsys.readouterr()
    evaluate = ["evaluate", "--weights", str(out / "weights.npz"), "--out", str(tmp_path / "eval"), "--limit", "16"]
    assert main([*evaluate, "--batch-size", "32"]) == 0  # the 16 test images the training scored, in its batches
    report = json.loads((tmp_path / "eval" / "evaluation_test.json").read_text())
    assert report["miou"] == read_metrics(out / "metrics.json")[-1]["test_miou"]
    data = load_dataset("shapes", "test", image_size=32).subset(np.arange(16))
    trained.eval()
    want = trained(data.images)
    fresh = Trainer.resume(out, progress=False, log=None).model
    for name in ("weights.npz", "w.safetensors", "w.pth"):
        path = out / name
        if name != "weights.npz":
            convert_weights(out / "weights.npz", path)
        # wipe the statistics first: only the file can bring them back
        stats = ("running", "tracked")
        fresh.load_state_dict({k: np.zeros_like(v) if any(s in k for s in stats) else v for k, v in fresh.state_dict().items()})
        load_weights(fresh, path)
        fresh.eval()
        assert np.array_equal(fresh(data.images), want), name
