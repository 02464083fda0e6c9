"""Segmentation metrics: mmsegmentation's sums over the set, checked against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from twins_np.backend import to_device
from twins_np.training.segmentation_metrics import (
    SegmentationMetrics,
    intersect_and_union,
    plot_class_iou,
    plot_segmentation_grid,
)


def _reference(preds, labels, k, ignore=255):
    """IoU from one confusion matrix over every scored pixel of the set (scikit-learn)."""
    keep = labels != ignore
    cm = confusion_matrix(labels[keep], preds[keep], labels=np.arange(k))
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return iou, inter.sum() / keep.sum(), cm


def test_sums_over_the_set_equal_one_confusion_matrix(xp):
    rng = np.random.default_rng(0)
    k = 5
    labels = rng.integers(0, k - 1, size=(6, 9, 7))  # class 4 never labelled ...
    labels[rng.random(labels.shape) < 0.1] = 255
    preds = np.where(rng.random(labels.shape) < 0.6, np.where(labels == 255, 0, labels), rng.integers(0, k - 1, labels.shape))
    preds[0, 0, 0] = 4  # ... but predicted once (on a scored pixel): its IoU is 0 and counts
    labels[0, 0, 0] = 1
    metrics = SegmentationMetrics(k)
    device = "cpu" if xp is np else "gpu"
    for i in range(0, 6, 2):  # three batches
        metrics.update(to_device(preds[i : i + 2], device), to_device(labels[i : i + 2], device))
    out = metrics.compute()
    iou, acc, cm = _reference(preds, labels, k)
    np.testing.assert_allclose(out["iou"], iou, rtol=1e-15)
    assert out["iou"][4] == 0.0
    assert out["miou"] == pytest.approx(iou.mean(), rel=1e-15)
    assert out["pixel_accuracy"] == pytest.approx(acc, rel=1e-15)
    np.testing.assert_allclose(out["acc"][:4], np.diag(cm)[:4] / cm.sum(1)[:4], rtol=1e-15)
    assert np.isnan(out["acc"][4])


def test_absent_classes_are_left_out_of_the_mean():
    labels = np.array([[[0, 0], [1, 1]]])
    preds = np.array([[[0, 1], [1, 1]]])
    out = SegmentationMetrics(4).compute()
    assert np.isnan(out["miou"]) and np.isnan(out["pixel_accuracy"])
    m = SegmentationMetrics(4)
    m.update(preds, labels)
    out = m.compute()
    assert np.isnan(out["iou"][2]) and np.isnan(out["iou"][3])  # neither labelled nor predicted
    assert out["iou"][0] == pytest.approx(1 / 2) and out["iou"][1] == pytest.approx(2 / 3)
    assert out["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert out["pixel_accuracy"] == pytest.approx(3 / 4)


def test_sum_first_differs_from_the_mean_of_per_image_ious():
    """A small object missed in one image weighs by its pixels, not as a whole image."""
    big = np.ones((1, 10, 10), np.int64)
    small = np.zeros((1, 10, 10), np.int64)
    small[0, 0, 0] = 1
    m = SegmentationMetrics(2)
    m.update(big, big)
    m.update(np.zeros_like(small), small)  # misses the one object pixel
    assert m.compute()["iou"][1] == pytest.approx(100 / 101)  # per image it would be (1 + 0) / 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="'num_classes' must be a positive integer"):
        SegmentationMetrics(0)
    with pytest.raises(ValueError, match="shape"):
        intersect_and_union(np.zeros((1, 2, 2), int), np.zeros((1, 2, 3), int), 2)
    with pytest.raises(ValueError, match=r"'label' holds values in \[0, 3\], outside \[0, 2\) and not the ignore index 255"):
        intersect_and_union(np.zeros((1, 2, 2), int), np.array([[[0, 3], [255, 1]]]), 2)
    with pytest.raises(ValueError, match=r"'pred' holds values"):
        intersect_and_union(np.full((1, 2, 2), 2), np.zeros((1, 2, 2), int), 2)


def test_figures(tmp_path):
    iou = np.array([0.9, 0.5, np.nan, 0.0])
    path = plot_class_iou(iou, ["bg", "a", "b", "c"], tmp_path / "iou.png", title="shapes")
    assert path.stat().st_size > 1000
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 3, (3, 16, 16))
    labels[:, 0] = 255
    path = plot_segmentation_grid(images, labels, rng.integers(0, 3, (3, 16, 16)), ["bg", "a", "b"], tmp_path / "grid.png")
    assert path.stat().st_size > 1000


# --- mmsegmentation's rule for labels outside the classes -----------------------------------------


def test_mmseg_rule_equals_iou_metric_histc():
    """A label >= K (not 255) counts its prediction and no label: torch.histc in IoUMetric.intersect_and_union."""
    torch = pytest.importorskip("torch")
    import mmseg_reference as ref

    K = 5
    rng = np.random.default_rng(3)
    pred = rng.integers(0, K, size=(2, 23, 31))
    label = rng.integers(0, K + 3, size=(2, 23, 31))  # 5, 6, 7: outside the classes
    label[:, :3] = 255
    mine = intersect_and_union(pred, label, K, 255, labels="mmseg")
    theirs = ref.intersect_and_union(torch.from_numpy(pred), torch.from_numpy(label), K)
    for m, t in zip(mine, theirs):
        assert np.array_equal(m, t.numpy().astype(np.int64))
    out_of_range = (label >= K) & (label != 255)
    assert mine[2].sum() == (label != 255).sum() and mine[3].sum() == (label != 255).sum() - out_of_range.sum()
    with pytest.raises(ValueError, match=r"'label' holds values in \[0, 7\], outside \[0, 5\)"):
        intersect_and_union(pred, label, K, 255)  # the default rule refuses them
    metrics = SegmentationMetrics(K, labels="mmseg")
    metrics.update(pred, label)
    scores = metrics.compute()
    iou = theirs[0].numpy() / theirs[1].numpy()
    assert np.allclose(scores["iou"], iou)
    assert scores["pixel_accuracy"] == pytest.approx(theirs[0].sum().item() / theirs[3].sum().item())


def test_format_mmseg_tables():
    from twins_np.training.segmentation_metrics import format_mmseg_tables

    metrics = SegmentationMetrics(3)
    metrics.update(np.array([[0, 0, 1, 1]]), np.array([[0, 1, 1, 255]]))
    text = format_mmseg_tables(metrics.compute(), ["wall", "building", "sky"])
    lines = text.splitlines()
    assert lines[0] == "per class results:" and "| Class | IoU | Acc |".replace(" ", "") in lines[2].replace(" ", "")
    assert any(line.replace(" ", "") == "|wall|50.0|100.0|" for line in lines)
    assert any(line.replace(" ", "") == "|sky|nan|nan|" for line in lines)  # never labelled nor predicted
    assert "Summary:" in lines and any(line.replace(" ", "") == "|66.67|50.0|75.0|" for line in lines)
