"""The controllability metrics (cldm.eval_metrics) on inputs whose scores are known exactly."""
import math

import numpy as np
import pytest

from cldm import eval_metrics as m
from cldm.eval_conditions import CONDITIONS, keypoints, palette_labels


def _edges(seed=0, shape=(32, 40), density=0.1):
    return np.random.default_rng(seed).random(shape) < density


def test_edge_f1_identical_and_known_false_positives():
    ref = _edges()
    assert m.edge_f1(ref, ref) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    n = int(ref.sum())
    extra = np.zeros_like(ref)
    extra[tuple(np.argwhere(~ref)[:10].T)] = True  # 10 false positives
    got = m.edge_f1(ref * np.uint8(255), (ref | extra) * np.uint8(255))  # 0/255 maps work as well
    assert got["recall"] == 1.0 and got["precision"] == pytest.approx(n / (n + 10))
    assert got["f1"] == pytest.approx(2 * n / (2 * n + 10))
    half = ref.copy()
    half[tuple(np.argwhere(ref)[: n // 2].T)] = False  # every found edge is right, half are missed
    assert m.edge_f1(ref, half)["recall"] == pytest.approx((n - n // 2) / n)


def test_edge_f1_empty_maps():
    empty = np.zeros((8, 8), bool)
    assert m.edge_f1(empty, empty)["f1"] == 1.0
    assert m.edge_f1(empty, _edges(shape=(8, 8), density=0.5))["f1"] == 0.0
    assert m.edge_f1(_edges(shape=(8, 8), density=0.5), empty)["f1"] == 0.0


def test_ssim_identical_and_constant_maps():
    x = np.random.default_rng(1).integers(0, 256, (40, 48)).astype(np.uint8)
    assert m.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    # flat maps: no variance, so only the luminance term (2ab + C1) / (a^2 + b^2 + C1) is left
    a, b, c1 = 100.0, 140.0, (0.01 * 255) ** 2
    got = m.ssim(np.full((16, 16), a), np.full((16, 16), b))
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)
    assert m.ssim(x, 255 - x) < 0  # inverted structure correlates negatively


def test_ssim_window_and_shapes():
    w = m.gaussian_window()
    assert w.shape == (11, 11) and float(w.sum()) == pytest.approx(1.0) and w[5, 5] == w.max()
    with pytest.raises(ValueError, match="at least 11"):
        m.ssim(np.zeros((10, 30)), np.zeros((10, 30)))
    with pytest.raises(ValueError, match="differ in shape"):
        m.ssim(np.zeros((20, 30)), np.zeros((30, 20)))


def test_rmse_known_offsets():
    x = np.random.default_rng(2).integers(0, 200, (20, 20)).astype(np.uint8)
    assert m.rmse(x, x) == 0.0
    assert m.rmse(x, x + 3) == pytest.approx(3.0)
    y = x.astype(np.float64)
    y[:10] += 4  # half the pixels off by 4: sqrt(16 / 2)
    assert m.rmse(x, y) == pytest.approx(math.sqrt(8))


def test_mean_iou_known_values():
    ref = np.zeros((4, 4), int)
    ref[:, 2:] = 1
    assert m.mean_iou(ref, ref) == {"miou": 1.0, "pixel_acc": 1.0}
    got = m.mean_iou(ref, np.zeros_like(ref))  # class 0: IoU 8/16, class 1: 0
    assert got["miou"] == pytest.approx(0.25) and got["pixel_acc"] == 0.5
    pred = ref.copy()
    pred[0, 0] = 7  # a class only the prediction has counts: IoUs 7/8, 1, 0
    assert m.mean_iou(ref, pred)["miou"] == pytest.approx((7 / 8 + 1 + 0) / 3)
    assert m.mean_iou(ref, pred, ignore=0)["miou"] == pytest.approx(1.0)  # the pixel at (0, 0) is ignored


def test_keypoint_pck_known_values():
    ref = [(10.0, 10.0, 0), (20.0, 10.0, 1), (30.0, 30.0, 2), (40.0, 5.0, 3)]
    assert m.keypoint_pck(ref, ref, 5) == 1.0
    shifted = [(x + 3, y + 4, p) for x, y, p in ref]  # 5 px away
    assert m.keypoint_pck(ref, shifted, 5) == 1.0 and m.keypoint_pck(ref, shifted, 4.9) == 0.0
    one_off = ref[:3] + [(46.0, 5.0, 3)]
    assert m.keypoint_pck(ref, one_off, 5) == 0.75
    wrong_part = [(x, y, p + 1) for x, y, p in ref]
    assert m.keypoint_pck(ref, wrong_part, 5) == 0.0
    assert math.isnan(m.keypoint_pck([], ref, 5))


def test_openpose_keypoints_and_palette_labels():
    found = {"candidate": [[5, 6, 0.9, 0], [7, 8, 0.8, 1]], "subset": [[0, -1, 1] + [-1] * 15 + [1.7, 2]]}
    assert keypoints(found) == [(5.0, 6.0, 0), (7.0, 8.0, 2)]
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 0], [1, 2, 3]], np.uint8)  # class 2 repeats class 0
    colours = palette[np.array([[0, 1], [2, 3]])]
    colours[0, 0] = (9, 9, 9)  # not in the palette
    assert palette_labels(colours, palette).tolist() == [[-1, 1], [0, 3]]


def test_fill50k_condition_scores_the_true_target_perfectly():
    from training.eval_fill import HELDOUT_SEED
    from training.fill50k import make_sample

    cond = CONDITIONS["fill50k"]
    for i in range(5):
        source, target, _, circle = make_sample(i, 128, HELDOUT_SEED)
        control, ref = cond.reference(None, target, circle)
        assert np.array_equal(control, source)
        outline, measured = cond.reextract(None, target, ref)
        assert outline.shape == target.shape and outline.max() > 200
        scores = cond.score(ref, measured)
        assert scores["iou"] == 1.0 and scores["circle_fair"] == 1.0 and scores["background_fair"] == 1.0
        # the re-extracted outline lies on the drawn one
        assert m.edge_f1(cv_dilate(source), outline)["precision"] > 0.9


def cv_dilate(image):
    import cv2

    return cv2.dilate(image, np.ones((3, 3), np.uint8))
