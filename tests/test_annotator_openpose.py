"""OpenPose: peak finding (exact), people from synthetic maps, hands, drawing, detector end to end."""
import math

import numpy as np
import pytest

import annotator.openpose as openpose
from annotator.openpose import OpenposeDetector
from annotator.openpose.body import LIMB_PAFS, LIMBS, estimate_body, find_peaks
from annotator.openpose.draw import HAND_EDGE_COLORS, PART_COLORS, draw_bodypose, draw_handpose
from annotator.openpose.hand import hand_boxes, hand_peaks
from tests.annotator_weights import load_test_image, random_ckpt_dir

# One COCO-18 person (x, y) in a 160 x 120 image: nose, neck, right arm, left arm, right leg, left leg, eyes, ears.
PERSON = ((60, 20), (60, 40), (45, 40), (40, 60), (38, 80), (75, 40), (80, 60), (82, 80), (50, 90), (50, 115),
          (50, 140), (70, 90), (70, 115), (70, 140), (55, 15), (65, 15), (50, 18), (70, 18))


def _scipy_gaussian(x, sigma=3.0):
    """Oracle for scipy.ndimage.gaussian_filter (mode 'reflect' = numpy 'symmetric', truncate 4)."""
    radius = int(4 * sigma + 0.5)
    k = np.exp(-0.5 * np.arange(-radius, radius + 1) ** 2 / sigma ** 2)
    k /= k.sum()
    for axis in (0, 1):
        padded = np.pad(x, [(radius, radius) if a == axis else (0, 0) for a in range(x.ndim)], mode="symmetric")
        x = sum(k[i] * np.take(padded, range(i, i + x.shape[axis]), axis=axis) for i in range(len(k)))
    return x


def _maps_for(people, h, w):
    """Heat maps (Gaussian blob per part) and PAFs (unit vectors within 2 px of each limb)."""
    yy, xx = np.mgrid[:h, :w]
    heat, paf = np.zeros((h, w, 19)), np.zeros((h, w, 38))
    for person in people:
        for part, (x, y) in enumerate(person):
            heat[:, :, part] = np.maximum(heat[:, :, part], np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0))
        for (a, b), (cx, cy) in zip(LIMBS, LIMB_PAFS):
            (xa, ya), (xb, yb) = person[a], person[b]
            length = math.hypot(xb - xa, yb - ya)
            ux, uy = (xb - xa) / length, (yb - ya) / length
            t = np.clip(((xx - xa) * ux + (yy - ya) * uy) / length, 0, 1)
            near = np.hypot(xx - (xa + t * (xb - xa)), yy - (ya + t * (yb - ya))) <= 2
            paf[near, cx], paf[near, cy] = ux, uy
    return heat, paf


def test_find_peaks_matches_scipy_semantics():
    rng = np.random.default_rng(0)
    heat = np.zeros((40, 50, 19))
    for part in range(18):
        for _ in range(3):
            y, x = rng.integers(0, 40), rng.integers(0, 50)
            heat[y, x, part] = rng.uniform(1, 40)  # peaks near borders too
    peaks = find_peaks(heat)
    smooth = np.stack([_scipy_gaussian(heat[:, :, p]) for p in range(18)], axis=2)
    padded = np.pad(smooth, ((1, 1), (1, 1), (0, 0)))
    expected_id = 0
    for part in range(18):
        s = smooth[:, :, part]
        q = padded[:, :, part]
        mask = (s >= q[:-2, 1:-1]) & (s >= q[2:, 1:-1]) & (s >= q[1:-1, :-2]) & (s >= q[1:-1, 2:]) & (s > 0.1)
        ys, xs = np.nonzero(mask)
        assert peaks[part][:, :2].tolist() == np.stack([xs, ys], 1).tolist()
        assert peaks[part][:, 2].tolist() == heat[ys, xs, part].tolist()  # unsmoothed score
        assert peaks[part][:, 3].tolist() == list(range(expected_id, expected_id + len(xs)))
        expected_id += len(xs)


def test_estimate_body_recovers_two_synthetic_people():
    second = tuple((x + 120, y) for x, y in PERSON)
    heat, paf = _maps_for([PERSON, second], 160, 240)
    candidate, subset = estimate_body(heat, paf, 160)
    assert candidate.shape == (36, 4) and subset.shape == (2, 20)
    for row in subset:
        assert row[-1] == 18 and row[-2] / row[-1] >= 0.4
        found = [tuple(candidate[int(i), :2]) for i in row[:18]]
        assert found in ([tuple(map(float, p)) for p in PERSON], [tuple(map(float, p)) for p in second])


def test_estimate_body_drops_people_with_few_parts():
    heat, paf = _maps_for([PERSON], 160, 120)
    heat[:, :, 2:] = 0  # only nose and neck left: one limb, 2 parts < 4
    candidate, subset = estimate_body(heat, paf, 160)
    assert len(candidate) == 2 and subset.shape == (0, 20)


def test_hand_boxes_geometry_and_clipping():
    candidate = np.array([[100, 100, 1, 0], [100, 150, 1, 1], [100, 200, 1, 2]], float)  # shoulder, elbow, wrist
    subset = -np.ones((1, 20))
    subset[0, [5, 6, 7]] = [0, 1, 2]  # left arm only
    assert hand_boxes(candidate, subset, 300, 300) == [(62, 179, 75, True)]
    assert hand_boxes(candidate, subset, 230, 300) == [(62, 179, 51, True)]  # clipped at the bottom
    assert hand_boxes(candidate, subset, 195, 300) == []  # 16 px left: too small


def test_hand_peaks_picks_the_heaviest_blob():
    heat = np.zeros((60, 60, 22))
    heat[10:20, 10:20, 0] = 0.5  # large, flat blob
    heat[40, 40, 0] = 3.0  # higher but lighter blob
    heat[15, 17, 0] = 0.6  # maximum inside the heavy blob
    peaks = hand_peaks(heat)
    assert peaks.dtype == np.int64 and peaks.shape == (21, 2)
    assert peaks[0].tolist() == [17, 15] and peaks[1:].tolist() == [[0, 0]] * 20


def test_draw_bodypose_joints_then_blended_limb():
    candidate = np.array([[30, 30, 1, 0], [50, 30, 1, 1]], float)
    subset = -np.ones((1, 20))
    subset[0, [1, 2]] = [0, 1]  # neck -> right shoulder = limb 0, drawn in PART_COLORS[0]
    canvas = draw_bodypose(np.zeros((60, 80, 3), np.uint8), candidate, subset)
    assert canvas[30, 40].tolist() == [153, 0, 0]  # 0.6 x (255, 0, 0) over black
    assert canvas[26, 30].tolist() == list(PART_COLORS[1])  # top of the neck circle, outside the limb
    assert canvas[25, 40].tolist() == [0, 0, 0] and canvas[20, 30].tolist() == [0, 0, 0]


def test_draw_bodypose_skips_ear_shoulder_limbs():
    candidate = np.array([[20, 20, 1, 0], [60, 20, 1, 1]], float)
    subset = -np.ones((1, 20))
    subset[0, [2, 16]] = [0, 1]  # r-shoulder and r-ear: limb 17, assembled but never drawn
    canvas = draw_bodypose(np.zeros((40, 80, 3), np.uint8), candidate, subset)
    assert canvas[20, 40].tolist() == [0, 0, 0] and canvas[20, 20].tolist() == list(PART_COLORS[2])


def test_draw_handpose_lines_dots_and_missing_points():
    peaks = np.zeros((21, 2), np.int64)
    peaks[0], peaks[1], peaks[2] = (10, 10), (30, 10), (0, 15)
    canvas = draw_handpose(np.zeros((40, 40, 3), np.uint8), [peaks])
    assert canvas[10, 20].tolist() == [255, 0, 0]  # edge 0, hue 0
    assert canvas[10, 10].tolist() == [0, 0, 255] and canvas[0, 0].tolist() == [0, 0, 255]  # dots, (0,0) too
    assert canvas[12, 15].tolist() == [0, 0, 0]  # edge 1 -> 2 skipped: point 2 has x == 0
    assert HAND_EDGE_COLORS[1] == pytest.approx((255.0, 76.5, 0.0))  # float colours, rounded by OpenCV


@pytest.fixture(scope="module")
def detector():
    return OpenposeDetector(ckpt_dir=random_ckpt_dir("body_pose_model.pth", "hand_pose_model.pth"))


def test_openpose_end_to_end(detector):
    img = load_test_image("pose1.png", 96)
    canvas, pose = detector(img)
    assert canvas.shape == img.shape and canvas.dtype == np.uint8
    assert set(pose) == {"candidate", "subset"}
    assert all(len(row) == 4 for row in pose["candidate"]) and all(len(row) == 20 for row in pose["subset"])


def test_openpose_hands_are_shifted_by_their_box(detector, monkeypatch):
    candidate = np.array([[30, 20, 1, 0], [30, 45, 1, 1], [30, 70, 1, 2]], float)
    subset = -np.ones((1, 20))
    subset[0, [2, 3, 4]] = [0, 1, 2]  # right arm
    monkeypatch.setattr(openpose, "HAND_SCALES", (0.1,))  # keep the hand net tiny
    monkeypatch.setattr(openpose, "hand_peaks", lambda heat: np.array([[0, 0], [5, 0]] + [[3, 4]] * 19))
    monkeypatch.setattr(detector, "detect_body", lambda bgr: (candidate, subset))
    x, y, size, _ = hand_boxes(candidate, subset, 100, 80)[0]
    peaks = detector.detect_hands(np.zeros((100, 80, 3), np.uint8), candidate, subset)
    assert len(peaks) == 1 and peaks[0][:3].tolist() == [[0, 0], [5 + x, 0], [3 + x, 4 + y]]
    canvas, _ = detector(np.zeros((100, 80, 3), np.uint8), hand=True)
    assert canvas[4 + y, 3 + x].tolist() == [0, 0, 255]


@pytest.mark.parametrize("img", [np.zeros((1, 1, 3), np.uint8), np.full((16, 8), 128, np.uint8)])
def test_openpose_odd_images_work(detector, img):
    canvas, pose = detector(img)
    assert canvas.shape == img.shape[:2] + (3,)


def test_openpose_empty_image_is_a_value_error(detector):
    with pytest.raises(ValueError, match="too small"):
        detector(np.zeros((0, 4, 3), np.uint8))
