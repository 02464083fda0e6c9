"""Segmentation sets: shapes, dense long-range, the folder reader, and per-pixel Datasets."""

from __future__ import annotations

import numpy as np
import pytest

from twins_np.data import (
    IGNORE_INDEX,
    DataLoader,
    Dataset,
    load_dataset,
    load_segmentation_folder,
    make_long_range_dense,
    make_shapes,
)
from twins_np.data.segmentation import CUE_SIGNS, CUE_WIDTH, LONG_RANGE_DENSE_CLASSES, SHAPE_CLASSES

# --- shapes ---------------------------------------------------------------------------------


def test_shapes_layout_and_determinism():
    a = make_shapes(16, image_size=48, seed=3)
    b = make_shapes(16, image_size=48, seed=3)
    assert a.images.shape == (16, 3, 48, 48) and a.images.dtype == np.float32
    assert a.labels.shape == (16, 48, 48) and a.labels.dtype == np.int64
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, make_shapes(16, image_size=48, seed=4).images)
    assert set(np.unique(a.labels)) <= set(range(len(SHAPE_CLASSES)))
    # every image has at least one visible object, and over 16 images every class appears
    assert ((a.labels > 0).sum(axis=(1, 2)) > 0).all()
    assert set(np.unique(a.labels)) == {0, 1, 2, 3}


def test_shapes_colour_does_not_give_the_class():
    """The mean colour of the pixels of one class is the same for every class, up to noise."""
    a = make_shapes(400, image_size=32, seed=0, max_objects=1, noise=0.0)
    means = np.array([[a.images[:, c][a.labels == k].mean() for c in range(3)] for k in (1, 2, 3)])
    assert np.abs(means).max() < 0.1  # colours are uniform in [-1, 1]: the class means are all near 0


def test_shapes_boundary_is_ignored():
    a = make_shapes(8, image_size=32, seed=1, boundary=0)
    b = make_shapes(8, image_size=32, seed=1, boundary=2)
    ignored = b.labels == IGNORE_INDEX
    assert ignored.any() and not (a.labels == IGNORE_INDEX).any()
    assert np.array_equal(a.labels[~ignored], b.labels[~ignored])  # only pixels near an edge change
    # each ignored pixel lies within 2 pixels of a label change of the unmarked map
    change = np.zeros_like(ignored)
    change[:, 1:] |= a.labels[:, 1:] != a.labels[:, :-1]
    change[:, :, 1:] |= a.labels[:, :, 1:] != a.labels[:, :, :-1]
    for n, i, j in zip(*np.nonzero(ignored)):
        assert change[n, max(i - 2, 0) : i + 3, max(j - 2, 0) : j + 3].any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0), "'n' must be a positive integer"),
        (dict(n=2, image_size=8), "'image_size' must be an integer >= 16"),
        (dict(n=2, max_objects=0), "'max_objects'"),
        (dict(n=2, noise=-1.0), "'noise' must be >= 0"),
        (dict(n=2, boundary=-1), "'boundary'"),
    ],
)
def test_shapes_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_shapes(**kwargs)


# --- dense long-range -----------------------------------------------------------------------


def _cue_and_object(labels, images):
    """Per image: the coordinates of the cue's lit pixels (label 255) and of the object's pixels."""
    for lab, img in zip(labels, images):
        yield np.argwhere(lab == IGNORE_INDEX), np.argwhere((lab == 1) | (lab == 2)), lab, img


@pytest.mark.parametrize("gap, cue_length", [(28, 32), (12, 6), (40, 64)])
def test_long_range_dense_geometry(gap, cue_length):
    a = make_long_range_dense(64, image_size=64, seed=5, gap=gap, cue_length=cue_length)
    assert a.images.shape == (64, 1, 64, 64) and a.labels.shape == (64, 64, 64)
    assert set(np.unique(a.labels)) == {0, 1, 2, IGNORE_INDEX}
    for cue, obj, lab, _ in _cue_and_object(a.labels, a.images):
        assert len(cue) == CUE_WIDTH * cue_length and len(obj) > 0  # the whole cue bar is ignored
        # one bar, CUE_WIDTH x cue_length along a horizontal edge or cue_length x CUE_WIDTH along a vertical one
        extent = sorted(np.ptp(cue, axis=0) + 1)
        assert extent == sorted([CUE_WIDTH, cue_length])
        # inside the 8-pixel band of one edge
        r0, c0 = cue.min(axis=0)
        r1, c1 = cue.max(axis=0)
        assert r1 < 8 or c1 < 8 or r0 >= 56 or c0 >= 56
        assert len(np.unique(lab[(lab == 1) | (lab == 2)])) == 1  # one class per object
        # along one axis, every object pixel is more than `gap` pixels from every cue pixel
        apart = [np.abs(obj[:, None, ax] - cue[None, :, ax]).min() for ax in (0, 1)]
        assert max(apart) > gap


def test_long_range_dense_class_is_the_cue():
    """Object class 1 iff the cue is bright; the cue kinds are exactly balanced."""
    a = make_long_range_dense(40, seed=0, noise=0.0)
    kinds = []
    for cue, obj, lab, img in _cue_and_object(a.labels, a.images):
        r0, c0 = cue.min(axis=0)
        r1, c1 = cue.max(axis=0)
        patch = img[0, r0 : r1 + 1, c0 : c1 + 1]
        # the ignored box is exactly one of the two cues (a constant +1 or -1 bar)
        kind = [k for k in (0, 1) if (patch == CUE_SIGNS[k]).all()]
        assert len(kind) == 1
        assert lab[tuple(obj[0])] == kind[0] + 1
        # nothing else in the noise-free image is dark; the only other bright pixels are the object's
        rest = img[0].copy()
        rest[r0 : r1 + 1, c0 : c1 + 1] = 0.0
        assert np.array_equal(np.argwhere(rest != 0.0), obj) and (rest[rest != 0.0] == 1.0).all()
        kinds.append(kind[0])
    assert sum(kinds) == 20
    assert "bright" in LONG_RANGE_DENSE_CLASSES[1] and "dark" in LONG_RANGE_DENSE_CLASSES[2]
    assert CUE_SIGNS == (1.0, -1.0)


def test_long_range_dense_object_is_independent_of_the_cue():
    """What a window-limited model sees of the object (its size, position) carries no cue information."""
    a = make_long_range_dense(2000, seed=1)
    obj = (a.labels == 1) | (a.labels == 2)
    size = obj.sum(axis=(1, 2))
    cls = np.array([lab[o].max() for lab, o in zip(a.labels, obj)])
    assert abs(size[cls == 1].mean() - size[cls == 2].mean()) < 0.1 * size.mean()


def test_long_range_dense_too_small():
    with pytest.raises(ValueError, match="too small for gap=40"):
        make_long_range_dense(2, image_size=48, gap=40)
    for bad in (5, 65, 8.0, True):
        with pytest.raises(ValueError, match="'cue_length' must be an integer in \\[6, image_size=64\\]"):
            make_long_range_dense(2, image_size=64, cue_length=bad)


# --- Dataset with per-pixel labels -----------------------------------------------------------


def test_load_dataset_names_and_splits():
    train = load_dataset("shapes", "train", n=8)
    test = load_dataset("shapes", "test", n=8)
    assert train.is_segmentation and train.ignore_index == IGNORE_INDEX and train.num_classes == 4
    assert not np.array_equal(train.images, test.images)
    dense = load_dataset("long_range_dense", "test", n=6)  # underscores as in the CLI
    assert dense.name == "long-range-dense" and dense.images.shape[1] == 1
    assert dense.subset(np.arange(3)).labels.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="shapes, long-range-dense, folder:PATH"):
        load_dataset("shapez")


def test_dataset_checks_pixel_labels():
    images = np.zeros((2, 1, 4, 4), np.float32)
    labels = np.zeros((2, 4, 4), np.int64)
    labels[0, 0, 0] = 255
    Dataset(images, labels, ["a", "b"], "x", ignore_index=255)
    with pytest.raises(ValueError, match="outside|must lie in"):
        Dataset(images, labels, ["a", "b"], "x")  # 255 without an ignore index
    labels[1, 1, 1] = 2
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\).*or equal ignore_index=255"):
        Dataset(images, labels, ["a", "b"], "x", ignore_index=255)
    with pytest.raises(ValueError, match=r"\(N, H, W\) = \(2, 4, 4\)"):
        Dataset(images, np.zeros((2, 4, 5), np.int64), ["a"], "x")


def test_loader_serves_pixel_labels_and_refuses_image_only_augment():
    data = load_dataset("shapes", "train", n=10, image_size=32)
    batches = list(DataLoader(data, batch_size=4, seed=0))
    assert [tuple(y.shape) for _, y in batches] == [(4, 32, 32), (4, 32, 32), (2, 32, 32)]
    order = DataLoader(data, batch_size=4, seed=0).order(0)
    assert np.array_equal(batches[0][1], data.labels[order[:4]])
    with pytest.raises(ValueError, match="misalign per-pixel labels"):
        DataLoader(data, batch_size=4, augment=lambda x, rng: x)


# --- the folder reader ----------------------------------------------------------------------


def _write_pair(folder, name, image, label, fmt="png"):
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / "images" / f"{name}.{fmt}")
    Image.fromarray(label.astype(np.uint8), mode="L").save(folder / "annotations" / f"{name}.png")


def test_folder_reader_keeps_labels_exact(tmp_path):
    rng = np.random.default_rng(0)
    # 30 x 20 image (W x H): resized so the shorter side is 10 -> 15 x 10, centre-cropped to 10 x 10
    label = np.zeros((20, 30), np.int64)
    label[:, 10:20] = 1
    label[5:15, 12:18] = 2
    label[0, :] = 255
    image = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    _write_pair(tmp_path, "a", image, label)
    _write_pair(tmp_path, "b", image, np.where(label == 2, 1, label), fmt="png")
    data = load_segmentation_folder(tmp_path, image_size=10)
    assert data.images.shape == (2, 3, 10, 10) and data.labels.shape == (2, 10, 10)
    assert data.num_classes == 3 and data.classes == ["class 0", "class 1", "class 2"]
    # nearest-neighbour labels: the crop equals the label map sampled at floor(i * 20 / 10), offset 2 in width
    rows = np.arange(10) * 20 // 10
    cols = np.arange(15) * 30 // 15
    expected = label[rows][:, cols][:, 2:12]
    assert np.array_equal(data.labels[0], expected)
    assert set(np.unique(data.labels)) <= {0, 1, 2, 255}
    assert data.mean is not None and abs(float(data.images.mean())) < 1.0


def test_folder_reader_splits_and_class_names(tmp_path):
    rng = np.random.default_rng(1)
    for sub in ("training", "validation"):
        for name in ("x", "y"):
            lab = rng.integers(0, 4, size=(12, 12))
            _write_pair(tmp_path / "tmp" / sub, name, rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), lab)
    # ADE20K layout: images/training, annotations/training, ...
    for kind in ("images", "annotations"):
        (tmp_path / kind).mkdir()
        for sub in ("training", "validation"):
            (tmp_path / "tmp" / sub / kind).rename(tmp_path / kind / sub)
    (tmp_path / "classes.txt").write_text("other\nwall\nfloor\nsky\n")
    train = load_segmentation_folder(tmp_path, "train", image_size=12)
    test = load_segmentation_folder(tmp_path, "test", image_size=12)
    assert len(train) == len(test) == 2 and train.classes == ["other", "wall", "floor", "sky"]
    assert not np.array_equal(train.images, test.images)
    # ADE20K's reduce_zero_label: 0 -> 255, k -> k - 1
    reduced = load_segmentation_folder(tmp_path, "train", image_size=12, classes=["wall", "floor", "sky"], reduce_zero_label=True)
    assert np.array_equal(reduced.labels, np.where(train.labels == 0, 255, train.labels - 1))
    via_name = load_dataset(f"folder:{tmp_path}", "test", image_size=12)
    assert np.array_equal(via_name.labels, test.labels)


def test_folder_reader_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_segmentation_folder(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="no 'annotations/' folder"):
        load_segmentation_folder(tmp_path)
    (tmp_path / "annotations").mkdir()
    with pytest.raises(ValueError, match="no .jpg or .png images"):
        load_segmentation_folder(tmp_path)
    img = np.zeros((8, 8, 3), np.uint8)
    _write_pair(tmp_path, "a", img, np.full((8, 8), 7))
    with pytest.raises(ValueError, match=r"holds 7, outside \[0, 3\) and not the ignore index 255"):
        load_segmentation_folder(tmp_path, num_classes=3, image_size=8)
    (tmp_path / "images" / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="image b.jpg has no label map"):
        load_segmentation_folder(tmp_path, image_size=8)
    (tmp_path / "annotations" / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*b.jpg"):
        load_segmentation_folder(tmp_path, image_size=8)
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "images" / "b.jpg")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "annotations" / "b.png")
    with pytest.raises(ValueError, match="mode 'RGB' is not a single-channel map"):
        load_segmentation_folder(tmp_path, image_size=8)
    Image.fromarray(np.zeros((9, 8), np.uint8), mode="L").save(tmp_path / "annotations" / "b.png")
    with pytest.raises(ValueError, match=r"\(train split\): image \S*b.jpg is 8x8 but its label map \S*b.png is 8x9"):
        load_segmentation_folder(tmp_path, image_size=8)


# --- mmsegmentation's evaluation pipeline: label rules, class count, rescale ---------------------


def test_reduce_zero_and_label_map_are_mmsegmentations():
    """reduce_zero_label then label_map (read from a copy), against mmsegmentation 1.x's LoadAnnotations."""
    torch = pytest.importorskip("torch")
    import mmseg_reference as ref

    from twins_np.data.segmentation import apply_label_map, reduce_zero

    label = np.random.default_rng(0).integers(0, 256, size=(37, 29)).astype(np.uint8)
    label[0, :4] = [0, 1, 254, 255]
    mapping = {3: 4, 4: 255, 7: 3}  # chained on purpose: 3 -> 4 must not then become 255
    want = ref.mmseg_labels(torch.from_numpy(label.astype(np.int64)), reduce_zero_label=True, label_map=mapping).numpy()
    assert np.array_equal(apply_label_map(reduce_zero(label), mapping), want)
    assert list(reduce_zero(label)[0, :4]) == [255, 0, 253, 255]
    plain = ref.mmseg_labels(torch.from_numpy(label.astype(np.int64)), label_map=mapping).numpy()
    assert np.array_equal(apply_label_map(label, mapping), plain)


@pytest.mark.parametrize(
    ("hw", "want"),
    [
        ((512, 683), (512, 683)),
        ((300, 200), (768, 512)),
        ((341, 256), (682, 512)),
        ((333, 500), (512, 769)),
        ((3000, 100), (2048, 68)),
        ((512, 512), (512, 512)),
    ],
)
def test_rescale_size_is_mmcvs_imrescale(hw, want):
    from twins_np.data.segmentation import rescale_size

    assert rescale_size(*hw, (2048, 512)) == want
    assert rescale_size(*hw, (512, 2048)) == want  # (long, short) in either order


def test_resize_image_samples_like_torch_and_rounds_to_8_bits():
    torch = pytest.importorskip("torch")
    from twins_np.data.segmentation import resize_image

    image = np.random.default_rng(1).integers(0, 256, size=(30, 41, 3)).astype(np.uint8)
    for size in [(51, 70), (17, 23), (30, 41)]:
        t = torch.nn.functional.interpolate(
            torch.from_numpy(image.astype(np.float64)).permute(2, 0, 1)[None], size=size, mode="bilinear", align_corners=False
        )
        exact = t[0].permute(1, 2, 0).numpy()
        want = np.clip(np.floor(exact + 0.5), 0, 255).astype(np.uint8)
        out = resize_image(image, size)
        assert out.dtype == np.uint8
        # equal, except at exact ties (v + 0.5 an integer) whose float64 sums land on either side
        differ = out != want
        assert np.all(np.abs(out.astype(int) - want)[differ] == 1)
        assert np.all(np.abs(exact[differ] % 1.0 - 0.5) < 1e-9), exact[differ]


def _ade_folder(root, sizes):
    """ADEChallengeData2016's layout: images/validation/*.jpg|png, annotations/validation/*.png (0 = other)."""
    from PIL import Image

    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations" / "validation").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(root / "images" / "validation" / f"v{i}.png")
        Image.fromarray(rng.integers(0, 200, (h, w)).astype(np.uint8)).save(root / "annotations" / "validation" / f"v{i}.png")


def test_segmentation_images_keep_sizes_labels_and_the_datasets_class_count(tmp_path):
    """Each image rescaled and normalised as mmsegmentation's pipeline does, its labels at the original size;
    the class count is the dataset's (150 for ADE20K) whatever labels the files hold, and classes.txt replaces the names."""
    from PIL import Image

    from twins_np.data.segmentation import ADE20K_CLASSES, load_segmentation_images, reduce_zero, resize_image

    _ade_folder(tmp_path, [(512, 683), (300, 200)])
    data = load_segmentation_images(tmp_path, "test", ADE20K_CLASSES, reduce_zero_label=True)
    assert len(data) == 2 and data.num_classes == 150 and data.classes[0] == "wall" and data.classes[-1] == "flag"
    x, y = data.read(1)
    assert x.shape == (3, 768, 512) and x.dtype == np.float32 and y.shape == (300, 200) and y.dtype == np.int64
    raw = np.asarray(Image.open(tmp_path / "images" / "validation" / "v1.png"))
    mean, std = np.float32([123.675, 116.28, 103.53]), np.float32([58.395, 57.12, 57.375])
    assert np.array_equal(x, ((resize_image(raw, (768, 512)).astype(np.float32) - mean) / std).transpose(2, 0, 1))
    label = np.asarray(Image.open(tmp_path / "annotations" / "validation" / "v1.png"))
    assert np.array_equal(y, reduce_zero(label))
    assert data.subset([1]).pairs == [data.pairs[1]]
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    assert load_segmentation_images(tmp_path, "test").classes == ["a", "b", "c"]
    with pytest.raises(ValueError, match="no 'train' split folder"):
        load_segmentation_images(tmp_path, "train")
