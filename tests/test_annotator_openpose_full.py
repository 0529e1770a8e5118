"""ControlNet 1.1 OpenPose: face net layout, face boxes/peaks, 1.1 resizing and drawing, full detector."""
import cv2
import numpy as np
import pytest
import torch

import annotator.openpose.full as full
from annotator.openpose.draw import (HAND_KEYPOINT_COLOR, PART_COLORS, draw_bodypose_v11, draw_facepose_v11,
                                     draw_handpose_v11)
from annotator.openpose.face import face_boxes, face_peaks
from annotator.openpose.full import FACE_WEIGHTS, OpenposeFullDetector
from annotator.openpose.maps import smart_resize
from annotator.openpose.model import FaceNet
from annotator.util import MissingWeightsError
from tests.annotator_weights import load_test_image, make_random_weights, manifest

POSE_FILES = ("body_pose_model.pth", "hand_pose_model.pth", FACE_WEIGHTS)


def test_face_net_matches_the_real_layout():
    with torch.device("meta"):
        net = FaceNet()
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == manifest(FACE_WEIGHTS)


def _person(points: dict):
    """candidate rows (x, y, 1, id) and one subset row for {part: (x, y)}."""
    candidate = np.array([[x, y, 1.0, i] for i, (x, y) in enumerate(points.values())])
    subset = -np.ones((1, 20))
    subset[0, list(points)] = np.arange(len(points))
    return candidate, subset


def test_face_boxes_geometry_and_requirements():
    candidate, subset = _person({0: (50, 40), 14: (44, 37), 16: (30, 42)})  # nose, one eye, one ear
    half = max(6 * 3.0, 20 * 1.5)  # Chebyshev distances x 3 (eye) and x 1.5 (ear)
    assert face_boxes(candidate, subset, 200, 200) == [(int(50 - half), int(40 - half), int(2 * half))]
    assert face_boxes(candidate, subset, 35, 200)[0][2] == 35 - 10  # clipped at the bottom: y + half > height
    assert face_boxes(candidate, subset, 60, 200)[0][2] == 60  # upstream tests y + half, not y + size
    nose_only, subset_nose = _person({0: (50, 40)})
    assert face_boxes(nose_only, subset_nose, 200, 200) == []
    tiny, subset_tiny = _person({0: (50, 40), 14: (47, 40)})  # 2 x 9 px < 20: dropped
    assert face_boxes(tiny, subset_tiny, 200, 200) == []


def test_face_peaks_first_maximum_above_threshold_and_skips_empty_channels():
    heat = np.zeros((3, 6, 8), np.float32)
    heat[0, 2, 5] = heat[0, 4, 1] = 0.9  # tie: the first in row-major order wins
    heat[1] = 0.04  # nothing above 0.05: left out
    heat[2, 5, 7] = 0.06
    assert face_peaks(heat).tolist() == [[5, 2], [7, 5]]
    assert face_peaks(np.zeros((2, 4, 4))).shape == (0, 2)


def test_smart_resize_area_down_lanczos_up_and_per_channel_maps():
    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert (smart_resize(img, 20.7, 30.2) == cv2.resize(img, (30, 20), interpolation=cv2.INTER_AREA)).all()
    assert (smart_resize(img, 80, 120) == cv2.resize(img, (120, 80), interpolation=cv2.INTER_LANCZOS4)).all()
    maps = np.random.default_rng(1).random((12, 10, 19)).astype(np.float32)
    out = smart_resize(maps, 7, 5)
    assert out.shape == (7, 5, 19)
    assert (out[:, :, 4] == cv2.resize(maps[:, :, 4], (5, 7), interpolation=cv2.INTER_AREA)).all()
    assert smart_resize(maps[:, :, :1], 24, 20).shape == (24, 20, 1)


def test_draw_body_v11_dims_limbs_then_draws_joints():
    candidate = np.array([[30 / 80, 30 / 60], [50 / 80, 30 / 60]])
    subset = -np.ones((1, 20))
    subset[0, [1, 2]] = [0, 1]  # neck -> right shoulder: limb 0
    canvas = draw_bodypose_v11(np.zeros((60, 80, 3), np.uint8), candidate, subset)
    assert canvas[30, 40].tolist() == [153, 0, 0]  # limb at 60 %
    assert canvas[30, 30].tolist() == list(PART_COLORS[1])  # the neck joint on top, full colour
    assert canvas[20, 40].tolist() == [0, 0, 0]


def test_draw_hands_and_faces_v11_skip_missing_points():
    hand = -np.ones((21, 2)) / 40
    hand[0], hand[1] = (10 / 40, 10 / 40), (30 / 40, 10 / 40)
    canvas = draw_handpose_v11(np.zeros((40, 40, 3), np.uint8), [hand])
    assert canvas[10, 20].tolist() == [255, 0, 0] and canvas[10, 10].tolist() == list(HAND_KEYPOINT_COLOR)
    assert canvas[0, 0].tolist() == [0, 0, 0]  # missing keypoints are not drawn (1.0 drew them at (0, 0))
    face = [[0.5, 0.25], [-0.025, 0.5]]
    canvas = draw_facepose_v11(np.zeros((40, 40, 3), np.uint8), [face])
    assert canvas[10, 20].tolist() == [255, 255, 255] and canvas[10, 23].tolist() == [255, 255, 255]
    assert canvas[10, 24].tolist() == [0, 0, 0] and canvas[20, 0].tolist() == [0, 0, 0]


@pytest.fixture
def ckpts(tmp_path):
    for seed, name in enumerate(POSE_FILES):
        make_random_weights(name, tmp_path, seed=seed)
    return tmp_path


@pytest.fixture
def small_nets(monkeypatch):
    """Keep the hand and face nets' inputs small: the test checks plumbing, not accuracy."""
    monkeypatch.setattr(full, "HAND_SCALES", (0.1, 0.2))
    monkeypatch.setattr(full, "FACE_NET_INPUT", 64)


def test_full_detector_end_to_end(ckpts, small_nets, monkeypatch):
    img = load_test_image("human.png", 96)
    h, w = img.shape[:2]
    detector = OpenposeFullDetector(ckpt_dir=ckpts)
    canvas, pose = detector(img)
    assert canvas.shape == img.shape and canvas.dtype == np.uint8 and pose["hands"] == pose["faces"] == []
    # A known person, so hand and face boxes exist whatever the random body net finds.
    candidate, subset = _person({0: (w / 2, 30), 1: (w / 2, 45), 2: (w / 2 - 12, 45), 3: (w / 2 - 16, 65),
                                 4: (w / 2 - 18, 85), 14: (w / 2 - 5, 26), 15: (w / 2 + 5, 26)})
    monkeypatch.setattr(detector, "detect_body_v11", lambda bgr: (candidate, subset))
    canvas, pose = detector(img, hand_and_face=True)
    again, _ = detector(img, hand_and_face=True)
    assert (canvas == again).all()
    assert len(pose["hands"]) == 1 and np.array(pose["hands"][0]).shape == (21, 2)
    assert len(pose["faces"]) <= 1
    points = np.array(pose["bodies"]["candidate"])
    assert np.allclose(points * [w, h], candidate[:, :2])
    hand = np.array(pose["hands"][0])
    assert ((hand == -1 / w) | (hand == -1 / h) | ((hand >= 0) & (hand <= 1))).all()
    assert canvas[65, int(w / 2 - 16)].tolist() == list(PART_COLORS[3])  # the right elbow joint


def test_face_weights_are_needed_only_for_hands_and_faces(tmp_path, small_nets):
    for seed, name in enumerate(POSE_FILES[:2]):
        make_random_weights(name, tmp_path, seed=seed)
    detector = OpenposeFullDetector(ckpt_dir=tmp_path)
    img = np.zeros((48, 48, 3), np.uint8)
    detector(img)
    with pytest.raises(MissingWeightsError, match=r"facenet\.pth: download https://huggingface\.co/lllyasviel/"
                                                  r"Annotators/resolve/main/facenet\.pth"):
        detector.face_net
