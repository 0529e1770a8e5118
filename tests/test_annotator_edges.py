"""Canny, scribble maps, NMS / fake scribble (exact), and HED end to end with random weights."""
import cv2
import numpy as np
import pytest
import torch

from annotator.canny import CannyDetector
from annotator.hed import LEGACY_WEIGHTS, HEDdetector
from annotator.scribble import canvas_scribble_map, fake_scribble, nms, scribble_map
from annotator.util import HWC3
from tests.annotator_weights import load_test_image, random_ckpt_dir

HED_FILES = ("ControlNetHED.pth", LEGACY_WEIGHTS)


# ------------------------------------------------------------------------------------------------ canny

def test_canny_finds_a_step_in_any_channel():
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, 16:, 0] = 255  # red-only step: OpenCV takes the channel with the largest gradient
    edges = CannyDetector()(img, 100, 200)
    assert edges.shape == (32, 32) and edges.dtype == np.uint8
    assert set(np.unique(edges)) == {0, 255}
    assert set(np.nonzero(edges.any(axis=0))[0]) <= {15, 16}
    assert (edges == cv2.Canny(img, 100, 200)).all()


def test_canny_defaults_and_grey_input():
    grey = np.zeros((16, 16), np.uint8)
    grey[4:12, 4:12] = 200
    assert (CannyDetector()(grey) == CannyDetector()(HWC3(grey), 100, 200)).all()


# --------------------------------------------------------------------------------------------- scribble

def test_scribble_thresholds_are_strict_at_127():
    img = np.array([[[126, 255, 255], [127, 127, 127], [128, 200, 255], [0, 0, 0]]], np.uint8)
    assert scribble_map(img).tolist() == [[255, 0, 0, 255]]
    assert canvas_scribble_map(img).tolist() == [[0, 0, 255, 0]]
    assert scribble_map(img).dtype == np.uint8


def _nms_oracle(x, threshold, sigma):
    """Per pixel: a maximum along some 3-px line (outside the image never wins), then > threshold."""
    b = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    p = np.pad(b, 1, constant_values=-np.inf)
    h, w = b.shape
    shifted = lambda dy, dx: p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    peak = np.zeros_like(b, dtype=bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        peak |= (b >= shifted(dy, dx)) & (b >= shifted(-dy, -dx))
    return np.where(peak & (b > threshold), 255, 0).astype(np.uint8)


def _edge_like_map():
    img = np.zeros((48, 64), np.uint8)
    cv2.line(img, (5, 5), (60, 40), 255, 5)
    cv2.circle(img, (20, 30), 10, 180, 3)
    return img


def test_nms_keeps_line_maxima_above_threshold():
    img = _edge_like_map()
    out = nms(img, 127, 3.0)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 255}
    assert (out == _nms_oracle(img, 127, 3.0)).all()
    assert 0 < (out > 0).sum() < (img > 127).sum()  # thinner than the input strokes


def test_fake_scribble_is_nms_blur_threshold_and_per_channel():
    hed = _edge_like_map()
    expected = np.where(cv2.GaussianBlur(_nms_oracle(hed, 127, 3.0), (0, 0), 3.0) > 4, 255, 0)
    assert (fake_scribble(hed) == expected).all()
    three = fake_scribble(HWC3(hed))  # upstream works on the 3-channel map: same values per channel
    assert all((three[:, :, c] == fake_scribble(hed)).all() for c in range(3))


def test_fake_scribble_resizes_bilinearly_first():
    hed = _edge_like_map()
    out = fake_scribble(hed, size=(128, 96))
    assert out.shape == (96, 128)
    assert (out == fake_scribble(cv2.resize(hed, (128, 96), interpolation=cv2.INTER_LINEAR))).all()


# -------------------------------------------------------------------------------------------------- HED

@pytest.fixture(scope="module")
def hed_ckpts():
    return random_ckpt_dir(*HED_FILES)


@pytest.mark.parametrize("weights", HED_FILES)
def test_hed_end_to_end(hed_ckpts, weights):
    torch.manual_seed(0)
    img = load_test_image("dog.png")
    edge = HEDdetector(weights, ckpt_dir=hed_ckpts)(img)
    assert edge.shape == img.shape[:2] and edge.dtype == np.uint8
    assert len(np.unique(edge)) > 10  # a real map, not a constant


def test_hed_variants_differ_and_float64_agrees(hed_ckpts):
    img = load_test_image("house.png")
    head = HEDdetector(ckpt_dir=hed_ckpts)(img)
    assert not (head == HEDdetector(LEGACY_WEIGHTS, ckpt_dir=hed_ckpts)(img)).all()
    precise = HEDdetector(ckpt_dir=hed_ckpts, dtype=torch.float64)(img)
    assert np.abs(head.astype(int) - precise).max() <= 1


@pytest.mark.parametrize("img", [np.zeros((48, 64), np.uint8), np.zeros((48, 64, 4), np.uint8)])
def test_hed_accepts_grey_and_rgba(hed_ckpts, img):
    assert HEDdetector(ckpt_dir=hed_ckpts)(img).shape == (48, 64)


@pytest.mark.parametrize("img, message", [(np.zeros((0, 64, 3), np.uint8), "too small"),
                                          (np.zeros((8, 64, 3), np.uint8), "at least 16 px"),
                                          (np.zeros((32, 32, 3), np.uint16), "uint8")])
def test_hed_rejects_unusable_images(hed_ckpts, img, message):
    with pytest.raises(ValueError, match=message):
        HEDdetector(ckpt_dir=hed_ckpts)(img)
