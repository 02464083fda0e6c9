"""ImageNet preprocessing and readout (twins_np.imagenet) and ``twins-np predict`` end to end."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import twins_np
from twins_np.backend import cupy_available
from twins_np.cli import main
from twins_np.gradcheck import TOLERANCES
from twins_np.imagenet import imagenet_classes, load_image, preprocess, softmax, topk
from twins_np.io import save_weights

Image = pytest.importorskip("PIL.Image")

ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+([0-9.]+)\s+(.+)$")


def _photo(h: int, w: int, seed: int = 0) -> Image.Image:
    """A smooth colour gradient with noise: resampling has real structure to work on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([255 * yy / max(h - 1, 1), 255 * xx / max(w - 1, 1), 128 + 100 * np.sin((xx + yy) / 7.0)], axis=-1)
    img = np.clip(base + rng.normal(0.0, 20.0, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img)


# -- class names and top-k ---------------------------------------------------------------------------
def test_imagenet_classes():
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert (names[0], names[1], names[207], names[281], names[999]) == (
        "tench",
        "goldfish",
        "golden retriever",
        "tabby",
        "toilet tissue",
    )
    assert all(n == n.strip() and n for n in names)


def test_topk_rows():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, 1000)).astype(np.float32) * 3.0
    rows = topk(logits, k=5)
    p = softmax(logits[0])
    assert [i for i, _, _ in rows] == list(np.argsort(-p)[:5])
    for i, name, prob in rows:
        assert name == imagenet_classes()[i]
        assert prob == pytest.approx(float(p[i]), rel=1e-12)
    assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)
    assert softmax(logits).sum() == pytest.approx(1.0, rel=1e-12)

    rows10 = topk(np.arange(10.0), k=3)
    assert rows10[0][:2] == (9, "class 9") and len(rows10) == 3
    assert topk(np.zeros(4), k=4, names="abcd")[0][:2] == (0, "a")  # ties: lower index first
    with pytest.raises(ValueError, match="k must be in"):
        topk(np.zeros(10), k=11)
    with pytest.raises(ValueError, match="one image"):
        topk(np.zeros((2, 10)))


def test_softmax_is_stable_for_large_logits():
    p = softmax(np.array([1000.0, 1000.0, -1000.0]))
    np.testing.assert_allclose(p, [0.5, 0.5, 0.0], atol=1e-300)


# -- preprocessing -------------------------------------------------------------------------------------
SHAPES = [(300, 200), (200, 300), (64, 64), (249, 500), (480, 640)]


@pytest.mark.parametrize("hw", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
def test_preprocess_shape_and_content(hw):
    img = _photo(*hw)
    x = preprocess(img)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32 and x.flags.c_contiguous
    # the same pixels passed as an array give the same result
    np.testing.assert_array_equal(preprocess(np.asarray(img)), x)
    # de-normalised values lie in [0, 1] up to bicubic overshoot clipping (Pillow clips to uint8)
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    x01 = x[0] * std + mean
    assert x01.min() >= -1e-6 and x01.max() <= 1 + 1e-6


def test_preprocess_crops_the_centre():
    """A one-pixel-wide marker in the centre column ends up in the crop's centre columns."""
    img = np.zeros((448, 896, 3), np.uint8)
    img[:, 447:449] = 255
    x = preprocess(img, size=224, crop_pct=1.0)  # 448 -> 224 exactly: scale 1/2, no rim lost
    bright = np.where(x[0, 0].mean(axis=0) > 0)[0]
    assert set(bright) >= {111, 112} and bright.min() >= 109 and bright.max() <= 114


def test_preprocess_rejects_bad_arguments():
    with pytest.raises(ValueError, match="crop_pct"):
        preprocess(_photo(32, 32), crop_pct=1.5)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((32, 32), np.float32))


def test_load_image_converts_to_rgb(tmp_path):
    Image.fromarray(np.full((20, 30), 77, np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.full((20, 30, 4), 200, np.uint8)).save(tmp_path / "rgba.png")
    for f in ("grey.png", "rgba.png"):
        im = load_image(tmp_path / f)
        assert im.mode == "RGB" and im.size == (30, 20)


@pytest.mark.parity
@pytest.mark.parametrize("hw", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
def test_preprocess_matches_timm_eval_transform(hw, timm_eval_transform):
    img = _photo(*hw, seed=1)
    ref = timm_eval_transform(img).numpy()[None]
    x = preprocess(img)
    assert x.shape == ref.shape
    err = float(np.abs(x - ref).max() / np.abs(ref).max())
    assert err < TOLERANCES["parity_f32_rel"], f"rel err {err:.2e}"


@pytest.fixture(scope="module")
def timm_eval_transform():
    pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("twins_svt_small", pretrained=False))
    assert (cfg["crop_pct"], cfg["interpolation"], cfg["input_size"]) == (0.9, "bicubic", (3, 224, 224))
    return timm.data.create_transform(**cfg)


# -- twins-np predict ------------------------------------------------------------------------------------
def _rows(out: str) -> list[tuple[int, int, float, str]]:
    rows = []
    for line in out.splitlines()[2:]:
        m = ROW.match(line)
        assert m, f"unexpected line {line!r}"
        rows.append((int(m[1]), int(m[2]), float(m[3]), m[4]))
    return rows


def _check_rows(rows, k: int = 5) -> None:
    assert [r[0] for r in rows] == list(range(1, k + 1))
    probs = [r[2] for r in rows]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0
    assert all(name == imagenet_classes()[i] for _, i, _, name in rows)


def _teach_model_1000(seed: int = 0):
    """A 64x64 teaching model with 1000 classes: the ImageNet readout, cheaply."""
    model = twins_np.create_model("twins_svt_teach64", num_classes=1000, seed=seed).eval()
    model.head.bias.data = np.random.default_rng(seed).normal(0.0, 2.0, 1000).astype(np.float32)  # spread the classes
    return model


@pytest.mark.parametrize("fmt", ["npz", "safetensors", pytest.param("pth", marks=pytest.mark.parity)])
def test_predict_prints_the_models_top5(fmt, tmp_path, capsys):
    if fmt == "pth":
        pytest.importorskip("torch")
    model = _teach_model_1000()
    weights = save_weights(model, tmp_path / f"w.{fmt}")
    _photo(120, 90).save(tmp_path / "img.png")

    assert main(["predict", str(tmp_path / "img.png"), "--model", "twins_svt_teach64", "--weights", str(weights)]) == 0
    rows = _rows(capsys.readouterr().out)
    _check_rows(rows)
    expected = topk(model(preprocess(load_image(tmp_path / "img.png"), size=64)), k=5)
    assert [r[1] for r in rows] == [i for i, _, _ in expected]
    np.testing.assert_allclose([r[2] for r in rows], [p for _, _, p in expected], atol=1e-6)  # printed with 6 decimals


def test_predict_twins_svt_small(tmp_path, capsys):
    """The full-size path: 224x224 crop of a non-square image, 1000 ImageNet classes, --topk."""
    model = twins_np.create_model("twins_svt_small", seed=3)
    model.head.bias.data = np.random.default_rng(3).normal(0.0, 2.0, 1000).astype(np.float32)
    weights = save_weights(model, tmp_path / "svt_small.safetensors")
    _photo(300, 240, seed=4).save(tmp_path / "img.png")
    args = ["predict", str(tmp_path / "img.png"), "--model", "twins_svt_small", "--weights", str(weights), "--topk", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(224x224 crop)" in out
    _check_rows(_rows(out), k=3)


def test_predict_with_the_wrong_model_is_an_error(tmp_path, capsys):
    weights = save_weights(_teach_model_1000(), tmp_path / "w.npz")
    _photo(64, 64).save(tmp_path / "img.png")
    assert main(["predict", str(tmp_path / "img.png"), "--model", "twins_svt_teach32", "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "does not fit twins_svt_teach32 (num_classes=1000): patch_embeds.0.proj.weight" in err


@pytest.mark.gpu
def test_predict_on_gpu(tmp_path, capsys):
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    weights = save_weights(_teach_model_1000(), tmp_path / "w.safetensors")
    _photo(80, 100).save(tmp_path / "img.png")
    args = ["predict", str(tmp_path / "img.png"), "--model", "twins_svt_teach64", "--weights", str(weights)]
    assert main([*args, "--device", "gpu"]) == 0
    gpu_rows = _rows(capsys.readouterr().out)
    assert main(args) == 0
    cpu_rows = _rows(capsys.readouterr().out)
    _check_rows(gpu_rows)
    assert [r[1] for r in gpu_rows] == [r[1] for r in cpu_rows]
    np.testing.assert_allclose([r[2] for r in gpu_rows], [r[2] for r in cpu_rows], atol=2e-6)


# -- a real photo, training checkpoints, checks before loading ------------------------------------------
PHOTO = Path(__file__).parent / "data_files" / "chelsea.jpg"  # CC0, see tests/data_files/README.md


def test_predict_on_a_real_photo(tmp_path, capsys):
    """A JPEG photo of a cat (300x300, tests/data_files) through timm's eval transform and a 1000-class model."""
    model = _teach_model_1000(seed=1)
    weights = save_weights(model, tmp_path / "teach64.npz")  # random weights: the classes are arbitrary
    assert main(["predict", str(PHOTO), "--model", "twins_svt_teach64", "--weights", str(weights), "--topk", "3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"twins_svt_teach64 on {PHOTO} (64x64 crop), weights {weights}"
    rows = _rows(out)
    _check_rows(rows, k=3)
    expected = topk(model(preprocess(load_image(PHOTO), size=64)), k=3)
    assert [r[1] for r in rows] == [i for i, _, _ in expected]
    np.testing.assert_allclose([r[2] for r in rows], [p for _, _, p in expected], atol=1e-6)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One short epoch of a tiny teach32 model on digits (1 channel, classes '0'..'9')."""
    from twins_np.training import blas_threads

    out = tmp_path_factory.mktemp("digits")
    tiny = '{"embed_dims": [8, 16, 32], "num_heads": [1, 2, 2], "depths": [2, 2, 2]}'
    argv = ["train", "--epochs", "1", "--model-overrides", tiny, "--batch-size", "16", "--limit-train", "32"]
    with blas_threads(1):
        assert main([*argv, "--limit-test", "16", "--out", str(out)]) == 0
    return out


def test_predict_accepts_training_checkpoints_and_weights(digits_run, capsys):
    """checkpoint.npz and weights.npz of twins-np train: no --model, the run's classes and normalisation."""
    results = {}
    for name in ("checkpoint.npz", "weights.npz"):
        assert main(["predict", str(PHOTO), "--weights", str(digits_run / name), "--topk", "10"]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0].startswith(f"twins_svt_teach32 on {PHOTO} (32x32 crop)")
        rows = _rows(out)
        assert sorted(r[3] for r in rows) == [str(k) for k in range(10)]  # the digits' class names
        assert all(r[3] == str(r[1]) for r in rows)
        assert sum(r[2] for r in rows) == pytest.approx(1.0, abs=1e-5)
        results[name] = rows
    assert results["checkpoint.npz"] == results["weights.npz"]  # the same model, read from either file


def test_predict_checks_image_and_topk_before_loading(tmp_path, capsys, monkeypatch):
    weights = save_weights(_teach_model_1000(), tmp_path / "w.npz")
    monkeypatch.setattr("twins_np.io.read_weights", lambda *a, **k: pytest.fail("the weights were read"))
    assert main(["predict", str(PHOTO), "--model", "twins_svt_teach64", "--weights", str(weights), "--topk", "0"]) == 2
    assert capsys.readouterr().err == "twins-np predict: error: --topk must be >= 1, got 0\n"
    (tmp_path / "cat.png").write_text("not a picture")
    assert main(["predict", str(tmp_path / "cat.png"), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"twins-np predict: error: IMAGE {tmp_path / 'cat.png'} cannot be read as an image (")
    assert err.count("\n") == 1


def test_predict_without_model_on_plain_weights_says_what_to_do(tmp_path, capsys):
    weights = save_weights(_teach_model_1000(), tmp_path / "w.safetensors")
    assert main(["predict", str(PHOTO), "--weights", str(weights)]) == 2
    assert "--model is needed: " in capsys.readouterr().err
