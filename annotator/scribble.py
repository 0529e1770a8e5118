"""Scribble maps shared by the scribble apps, and the fake-scribble procedure (HED -> NMS -> blur -> threshold).

Reproduces upstream `gradio_scribble2image.py`, `gradio_scribble2image_interactive.py`,
`gradio_fake_scribble2image.py` and `nms` in `annotator/hed`. All maps are HxW uint8 0/255: upstream works
on 3 identical channels, and every step here is per channel, so one channel gives the same values.
"""
import cv2
import numpy as np

from annotator.util import HWC3

STROKE_THRESHOLD = 127  # mid grey: separates strokes from background
FAKE_SCRIBBLE_NMS_THRESHOLD = 127
FAKE_SCRIBBLE_SIGMA = 3.0
FAKE_SCRIBBLE_KEEP = 4  # after the blur, anything above this becomes a stroke


def scribble_map(img: np.ndarray) -> np.ndarray:
    """User scribble (dark strokes on white): 255 where min(R, G, B) < 127."""
    return np.where(HWC3(img).min(axis=2) < STROKE_THRESHOLD, 255, 0).astype(np.uint8)


def canvas_scribble_map(img: np.ndarray) -> np.ndarray:
    """Interactive canvas (light strokes on black): 255 where min(R, G, B) > 127."""
    return np.where(HWC3(img).min(axis=2) > STROKE_THRESHOLD, 255, 0).astype(np.uint8)


_LINES_3PX = [np.array(k, dtype=np.uint8) for k in (
    [[0, 0, 0], [1, 1, 1], [0, 0, 0]],  # horizontal
    [[0, 1, 0], [0, 1, 0], [0, 1, 0]],  # vertical
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]],  # diagonal
    [[0, 0, 1], [0, 1, 0], [1, 0, 0]],  # anti-diagonal
)]


def nms(x: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """Thin edges: keep blurred pixels that are a maximum along some 3-px line, then threshold to 0/255.

    The blur runs in float32 (OpenCV then picks a 25-tap kernel at sigma 3).
    """
    blurred = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    is_peak = np.zeros(blurred.shape, dtype=bool)
    for kernel in _LINES_3PX:
        is_peak |= cv2.dilate(blurred, kernel=kernel) == blurred
    survivors = np.where(is_peak, blurred, 0)
    return np.where(survivors > threshold, 255, 0).astype(np.uint8)


def fake_scribble(hed_map: np.ndarray, size=None) -> np.ndarray:
    """HED map (HxW uint8) -> synthetic scribble; `size` = (W, H) to resize to first (bilinear)."""
    if size is not None:
        hed_map = cv2.resize(hed_map, tuple(size), interpolation=cv2.INTER_LINEAR)
    thin = nms(hed_map, FAKE_SCRIBBLE_NMS_THRESHOLD, FAKE_SCRIBBLE_SIGMA)
    blurred = cv2.GaussianBlur(thin, (0, 0), FAKE_SCRIBBLE_SIGMA)
    return np.where(blurred > FAKE_SCRIBBLE_KEEP, 255, 0).astype(np.uint8)
