"""Reading image files (twins_np.image_files): limits before decoding, bit depths, one-line errors,
and the peak memory of decoding, measured in a fresh process.

The peak-memory tests run the reader in a subprocess whose address space is capped
(``RLIMIT_AS``) a fixed amount above what it holds after its imports, and report the peak
resident memory the decoding added (``ru_maxrss``); the figures are in the assertions'
bounds and in docs/reliability.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from twins_np.data import load_segmentation_folder
from twins_np.data.augment import resize
from twins_np.image_files import (
    MAX_IMAGE_PIXELS,
    ImageFileError,
    ImageFileWarning,
    image_size,
    read_image,
    read_image_array,
    read_label_map,
)

Image = pytest.importorskip("PIL.Image")


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header claiming width x height RGB pixels, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(69))) + chunk(b"IEND", b"")


# -- bit depths and value ranges ---------------------------------------------------------------------
def test_sixteen_bit_grey_is_scaled_by_1_over_65535(tmp_path: Path) -> None:
    a = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "a.png")
    pixels, scale, size = read_image_array(tmp_path / "a.png")
    assert pixels.dtype == np.uint16 and pixels.shape == (64, 64, 1) and scale == 65535.0 and size == (64, 64)
    np.testing.assert_array_equal(pixels[:, :, 0], a)
    rgb = np.asarray(read_image(tmp_path / "a.png"))  # 8 bits for predict: value * 255 / 65535, rounded
    np.testing.assert_array_equal(rgb[:, :, 1], np.rint(a * (255 / 65535)).astype(np.uint8))
    assert rgb.mean() < 130  # the old reader clipped to 255: 99.6 % white


def test_float_tiff_is_read_as_intensities(tmp_path: Path) -> None:
    a = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    Image.fromarray(a).save(tmp_path / "a.tif")
    pixels, scale, _ = read_image_array(tmp_path / "a.tif")
    assert pixels.dtype == np.float32 and scale == 1.0
    np.testing.assert_array_equal(pixels[:, :, 0], a)
    assert np.asarray(read_image(tmp_path / "a.tif"))[15, 15, 0] == 255


@pytest.mark.parametrize(
    "value, message",
    [
        (np.nan, r"holds 1 NaN and 0 infinite pixel value\(s\) of 256"),
        (-np.inf, r"holds 0 NaN and 1 infinite pixel value\(s\)"),
        (2.0, r"is a float image with values in \[0, 2\]"),
        (-0.5, r"is a float image with values in \[-0.5, 1\]"),
    ],
)
def test_float_pixels_out_of_range_are_refused_naming_the_file(tmp_path: Path, value: float, message: str) -> None:
    a = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    a[3, 4] = value
    Image.fromarray(a).save(tmp_path / "bad.tif")
    with pytest.raises(ImageFileError, match=rf"image {tmp_path / 'bad.tif'} " + message):
        read_image_array(tmp_path / "bad.tif")


def test_32_bit_integer_tiff_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "a.tif")
    with pytest.raises(ImageFileError, match="32-bit integer pixels, whose range twins-np cannot know"):
        read_image_array(tmp_path / "a.tif")


def test_label_maps_keep_their_integers(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 300], [65535, 7]], np.uint16)).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "l.png"), [[0, 300], [65535, 7]])
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageFileError, match="mode 'F' is not a single-channel map of class indices"):
        read_label_map(tmp_path / "f.tif")


# -- one line naming the file -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["text", "empty", "truncated-png", "truncated-jpeg", "bomb"])
def test_every_decoder_failure_is_one_image_file_error(tmp_path: Path, kind: str) -> None:
    photo = Path(__file__).parents[1] / "data_files" / "chelsea.jpg"
    buf = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(buf)
    content = {
        "text": b"not an image\n",
        "empty": b"",
        "truncated-png": buf.read_bytes()[:60],
        "truncated-jpeg": photo.read_bytes()[:2000],
        "bomb": png_claiming(20000, 20000),
    }[kind]
    path = tmp_path / ("x.jpg" if kind == "truncated-jpeg" else "x.png")
    path.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may escape either
        with pytest.raises(ImageFileError, match=rf"image {path}") as info:
            read_image_array(path)
    assert "\n" not in str(info.value)
    assert (info.value.reason is None) == (kind == "bomb")  # refused, rather than unreadable


def test_the_size_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(png_claiming(10000, 10000))  # Pillow itself only warns at this size
    assert image_size(path) == (10000, 10000)

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning does not escape
        with pytest.raises(ImageFileError, match=r"refused before decoding: its header claims 10000x10000 = 100,000,000"):
            read_image_array(path)


def test_pillow_warnings_are_reissued_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    from PIL import ImageFile

    real_load = ImageFile.ImageFile.load

    def load_with_a_warning(self):
        warnings.warn("Corrupt EXIF data.  Expecting to read 12 bytes but only got 2.", UserWarning, stacklevel=1)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load_with_a_warning)
    with pytest.warns(ImageFileWarning, match=rf"image {tmp_path / 'a.png'}: Corrupt EXIF data. Expecting") as record:
        read_image_array(tmp_path / "a.png")
    assert len(record) == 1  # once, however often Pillow repeated it


def test_a_palette_with_transparency_converts_without_a_warning(tmp_path: Path) -> None:
    im = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    im.info["transparency"] = bytes(range(256))
    im.save(tmp_path / "p.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels, _, _ = read_image_array(tmp_path / "p.png")
    np.testing.assert_array_equal(pixels, np.asarray(Image.open(tmp_path / "p.png").convert("RGBA"))[:, :, :3])


# -- decoding at a reduced size --------------------------------------------------------------------------
def test_a_jpeg_is_decoded_at_the_smallest_scale_covering_the_need(tmp_path: Path) -> None:
    Image.new("RGB", (800, 600), (90, 120, 30)).save(tmp_path / "a.jpg")
    pixels, _, size = read_image_array(tmp_path / "a.jpg", need=(110, 80))
    assert size == (800, 600) and pixels.shape == (150, 200, 3)  # 1/4: 200x150 covers 110x80, 1/8 would not
    assert read_image_array(tmp_path / "a.jpg")[0].shape == (600, 800, 3)  # nothing needed: whole


def test_a_jpeg_above_the_limit_is_decoded_under_it(tmp_path: Path) -> None:
    w, h = 8200, 4200  # 34.4 M pixels > 2**25
    Image.new("L", (w, h), 77).save(tmp_path / "a.jpg")
    pixels, _, size = read_image_array(tmp_path / "a.jpg")
    assert size == (w, h) and pixels.shape == (h // 2, w // 2, 3) and w * h > MAX_IMAGE_PIXELS
    assert abs(float(pixels.mean()) - 77) < 1


# -- the folder reader's resize: only the crop, the same numbers --------------------------------------------
@pytest.mark.parametrize("hw, size", [((20, 30), 10), ((37, 23), 16), ((64, 64), 64), ((9, 50), 8), ((5, 7), 12)])
def test_folder_crop_equals_the_whole_resize_then_crop(tmp_path: Path, hw: tuple[int, int], size: int) -> None:
    """The reader computes only the centre crop; bit for bit what resizing the whole image did."""
    rng = np.random.default_rng(0)
    h, w = hw
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (h, w)).astype(np.uint8)
    for kind, a in (("images", image), ("annotations", label)):
        (tmp_path / kind).mkdir(exist_ok=True)
        Image.fromarray(a).save(tmp_path / kind / "a.png")
    data = load_segmentation_folder(tmp_path, image_size=size)
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    whole = resize((image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None], (nh, nw), "bilinear")[0]
    expected = whole[:, top : top + size, left : left + size]
    mean, std = np.asarray(data.mean, np.float32)[:, None, None], np.asarray(data.std, np.float32)[:, None, None]
    np.testing.assert_array_equal(data.images[0], ((expected - mean) / std).astype(np.float32))
    lab = resize(label.astype(np.float32)[None, None], (nh, nw), "nearest")[0, 0]
    np.testing.assert_array_equal(data.labels[0], lab[top : top + size, left : left + size].astype(np.int64))


# -- peak memory, measured in a fresh process --------------------------------------------------------------
_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import numpy as np
    from twins_np.data import load_segmentation_folder
    from twins_np.image_files import read_image_array
    from twins_np.imagenet import load_image, preprocess

    kind, path, budget = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    def status(key):  # bytes, from /proc/self/status
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) * 1024

    resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + budget,) * 2)  # the decoding may add at most `budget` bytes
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the resident size now
        f.write("5")
    before = status("VmRSS")
    try:
        if kind == "folder":
            load_segmentation_folder(path, image_size=64)
        elif kind == "predict":
            preprocess(load_image(path), size=64)
        else:
            read_image_array(path)
        outcome = "ok"
    except MemoryError:
        outcome = "MemoryError"
    except ValueError as err:
        outcome = "refused: " + str(err)
    print(json.dumps({"outcome": outcome, "added_mib": (status("VmHWM") - before) / 2**20}))
    """
)

BUDGET = 256 * 2**20  # address space the decoding may add; the old reader needed gigabytes for these files


def _peak(kind: str, path: Path) -> dict:
    """Run the reader on ``path`` in a fresh process under RLIMIT_AS; its outcome and added peak RSS."""
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, kind, str(path), str(BUDGET)], capture_output=True, text=True, timeout=300, env=env
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def _folder_with(tmp_path: Path, name: str, content: bytes | None, label_hw: tuple[int, int]) -> Path:
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "annotations").mkdir()
    if content is not None:
        (tmp_path / "images" / name).write_bytes(content)
    Image.new("L", (label_hw[1], label_hw[0])).save(tmp_path / "annotations" / (Path(name).stem + ".png"))
    return tmp_path


@pytest.mark.slow
def test_peak_memory_of_decoding(tmp_path: Path) -> None:
    """The decoding cases, each in a fresh process capped at +256 MiB of address space; the
    peak resident memory each adds (VmHWM after, less VmRSS before) is printed and bounded.

    Measured here (Linux, Pillow 13, 2026-11), the same probe on the reader before and after
    this module (MiB of peak resident memory added, size 64):

    ==========================================  ==============  ===========================
    case                                        before          now
    ==========================================  ==============  ===========================
    10000x10000 PNG (real pixels), folder       3627            refused before decoding, 3
    10000x10000 / 20000x20000 PNG headers       a decode / a    refused before decoding, 3
                                                traceback
    1x20000 PNG, predict                        469 (5.26 GB    refused (resized size), 4
                                                at 224)
    12000x9000 JPEG, predict                    518             decoded at 1/2, 133
    1x20000 PNG + label map, folder             2890            only the crop computed, 5
    6000x4500 JPEG + label map, folder          906             decoded at 1/8, 84 (nearly
                                                                all its 8-bit label map)
    ==========================================  ==============  ===========================
    """
    big = tmp_path / "big"
    big.mkdir()
    (big / "claims10k.png").write_bytes(png_claiming(10000, 10000))
    (big / "claims20k.png").write_bytes(png_claiming(20000, 20000))
    Image.new("RGB", (1, 20000), (200, 10, 10)).save(big / "strip.png")
    Image.new("L", (12000, 9000), 128).save(big / "huge.jpg", quality=50)
    Image.new("L", (6000, 4500), 128).save(big / "large.jpg", quality=50)
    cases = {
        "10000x10000 PNG header, read_image_array": (_peak("read", big / "claims10k.png"), "refused"),
        "20000x20000 PNG header (138 bytes), read_image_array": (_peak("read", big / "claims20k.png"), "refused"),
        "1x20000 PNG, predict (load_image + preprocess)": (_peak("predict", big / "strip.png"), "refused"),
        "12000x9000 JPEG, predict (load_image + preprocess)": (_peak("predict", big / "huge.jpg"), "ok"),
        "1x20000 PNG + label map, folder reader": (
            _peak("folder", _folder_with(tmp_path / "strip", "a.png", (big / "strip.png").read_bytes(), (20000, 1))),
            "ok",
        ),
        "6000x4500 JPEG + label map, folder reader": (
            _peak("folder", _folder_with(tmp_path / "large", "a.jpg", (big / "large.jpg").read_bytes(), (4500, 6000))),
            "ok",
        ),
    }
    report = "\n".join(f"{name}: {r['outcome'][:70]}, +{r['added_mib']:.1f} MiB" for name, (r, _) in cases.items())
    print(report)
    for r, expected in cases.values():
        assert r["outcome"].startswith(expected), report
        assert r["added_mib"] < 160, report
