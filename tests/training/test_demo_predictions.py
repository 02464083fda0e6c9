"""The demo's predictions.png says how its images were chosen (mistakes first), with the accuracy."""

from __future__ import annotations

import numpy as np

from twins_np.commands.demo import _pick_examples, _predictions_title


def _labels_preds(wrong_at):
    labels = np.arange(359) % 10
    preds = labels.copy()
    preds[list(wrong_at)] = (labels[list(wrong_at)] + 1) % 10
    return labels, preds


def test_title_counts_the_mistakes_shown_and_all_of_them():
    labels, preds = _labels_preds([5, 40, 77, 100, 200, 250, 300])
    pick = _pick_examples(labels, preds)
    assert len(pick) == 16 and int((preds[pick] != labels[pick]).sum()) == 4
    title = _predictions_title(labels, preds, pick)
    assert title == "4 of the 7 test mistakes (red) and the first 12 correct test images; test accuracy 98.1% (352/359)"


def test_title_when_every_mistake_is_shown_or_there_is_none():
    labels, preds = _labels_preds([40])
    assert _predictions_title(labels, preds, _pick_examples(labels, preds)).startswith(
        "the one test mistake (red) and the first 15"
    )
    labels, preds = _labels_preds([40, 41])
    assert _predictions_title(labels, preds, _pick_examples(labels, preds)).startswith("all 2 test mistakes (red)")
    labels, preds = _labels_preds([])
    assert _predictions_title(labels, preds, _pick_examples(labels, preds)) == (
        "the first 16 test images, all correct; test accuracy 100.0% (359/359)"
    )
