"""The Fill50K score (training.eval_fill) on images whose answer is known: no model involved."""
import numpy as np
import pytest

from training.eval_fill import heldout, score, summarize
from training.fill50k import COLORS, make_sample


@pytest.mark.parametrize("size", [64, 128])
def test_true_targets_score_perfectly(size):
    data = heldout(40, size)
    targets = [make_sample(i, size, 1000)[1] for i in range(40)]
    mean = summarize([score(t, c) for t, c in zip(targets, data.circles)])
    assert mean["iou"] == 1.0 and mean["color_acc"] == 1.0 and mean["color_acc_strict"] == 1.0


def test_swapped_colours_score_zero():
    data = heldout(10)
    results = []
    for i, circle in enumerate(data.circles):
        target = make_sample(i, 64, 1000)[1]
        inside = (target == COLORS[circle.color]).all(-1)
        swapped = np.where(inside[..., None], COLORS[circle.background], COLORS[circle.color]).astype(np.uint8)
        results.append(score(swapped, circle))
    mean = summarize(results)
    assert mean["iou"] < 0.1 and mean["color_acc"] == 0.0


def test_shifted_circle_loses_iou():
    data = heldout(10)
    for i, circle in enumerate(data.circles):
        target = make_sample(i, 64, 1000)[1]
        shifted = np.roll(target, max(2, circle.radius // 2), axis=1)
        assert score(shifted, circle)["iou"] < score(target, circle)["iou"] == 1.0
