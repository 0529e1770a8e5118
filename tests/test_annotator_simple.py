"""The ControlNet 1.1 preprocessors without a network: content shuffle, tile, inpaint mask."""
import cv2
import numpy as np
import pytest

from annotator.inpaint import blurred_mask, inpaint_control, inpaint_preview, latent_mask
from annotator.shuffle import ContentShuffleDetector, make_noise_disk
from annotator.tile import tile_blur, tile_resample
from tests.annotator_weights import load_test_image


def _upstream_noise_disk(h, w, f):
    """Oracle: the noise disk drawn from numpy's global stream, as upstream's app does after np.random.seed."""
    noise = np.random.uniform(low=0, high=1, size=((h // f) + 2, (w // f) + 2, 1))
    noise = cv2.resize(noise, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[f:f + h, f:f + w]
    noise -= np.min(noise)
    noise /= np.max(noise)
    return noise[:, :, None]


def test_shuffle_flow_is_upstreams_for_the_same_seed():
    img = load_test_image("bird.png", 64)
    h, w = 48, 80
    np.random.seed(7)
    x = _upstream_noise_disk(h, w, 16) * (img.shape[1] - 1)
    y = _upstream_noise_disk(h, w, 16) * (img.shape[0] - 1)
    expected = cv2.remap(img, np.concatenate([x, y], axis=2).astype(np.float32), None, cv2.INTER_LINEAR)
    got = ContentShuffleDetector()(img, h=h, w=w, f=16, seed=7)
    assert got.shape == (h, w, 3) and got.dtype == np.uint8
    assert (got == expected).all()


def test_shuffle_is_deterministic_per_seed_and_keeps_the_colours():
    img = load_test_image("bird.png", 64)
    shuffle = ContentShuffleDetector()
    a, b, c = shuffle(img, seed=1), shuffle(img, seed=1), shuffle(img, seed=2)
    assert a.shape == img.shape and (a == b).all() and not (a == c).all()
    assert not (a == img).all()
    assert a.min() >= img.min() and a.max() <= img.max()  # bilinear samples of the image
    flat = np.full((40, 50, 3), 93, np.uint8)
    assert (shuffle(flat, seed=3) == 93).all()


def test_noise_disk_spans_zero_to_one():
    noise = make_noise_disk(30, 70, 2, 8, np.random.RandomState(0))
    assert noise.shape == (30, 70, 2) and noise.min() == 0.0 and noise.max() == 1.0


def test_tile_resample_and_blur():
    img = load_test_image("house.png", 64)
    assert tile_resample(img, 1.0) is img  # below 1.1: unchanged
    small = tile_resample(img, 2.5)
    assert small.shape == (int(img.shape[0] / 2.5), int(img.shape[1] / 2.5), 3) and small.dtype == np.uint8
    assert (small == cv2.resize(img, small.shape[1::-1], interpolation=cv2.INTER_AREA)).all()
    blurred = tile_blur(img, 3.0)
    assert blurred.shape == img.shape and (blurred == cv2.GaussianBlur(img, (0, 0), 3.0)).all()
    assert np.abs(np.diff(blurred.astype(int), axis=1)).mean() < np.abs(np.diff(img.astype(int), axis=1)).mean()
    assert (tile_blur(img, 0) == img).all()


def test_inpaint_control_marks_the_blurred_mask_with_minus_one():
    img = np.full((64, 96, 3), 200, np.uint8)
    mask = np.zeros((32, 48, 4), np.uint8)  # a sketch layer at half size; its red channel is the mask
    mask[8:24, 12:36, 0] = 255
    control = inpaint_control(img, mask, mask_blur=2.0)
    assert control.shape == (64, 96, 3) and control.dtype == np.float32
    pixel = cv2.GaussianBlur(cv2.resize(mask[:, :, 0], (96, 64), interpolation=cv2.INTER_LINEAR)
                             .astype(np.float32) / 255, (0, 0), 2.0)
    assert ((control == -1).all(axis=2) == (pixel > 0.5)).all()
    assert np.allclose(control[pixel <= 0.5], 200 / 255)
    assert set(np.unique(inpaint_preview(control))) == {0, 200}
    keep = latent_mask(blurred_mask(mask, (96, 64), 2.0))
    assert keep.shape == (8, 12) and keep.min() < 0.1 and keep.max() == 1.0


def test_inpaint_rejects_a_float_mask():
    with pytest.raises(ValueError, match="uint8 mask"):
        inpaint_control(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float32))
