"""Tile preprocessors for ControlNet 1.1 tile: the model was trained to add detail to a degraded copy of
the image, so its control is the image itself, optionally made coarser first.

`gradio_tile.py` upstream uses the input as is (resized to the output size, bilinear). The two optional
degradations are those of the sd-webui-controlnet extension: `tile_resample` (shrink by a rate, area
interpolation; rates below 1.1 leave the image unchanged) and `tile_blur` (Gaussian blur).
"""
import cv2
import numpy as np

from annotator.util import check_rgb

MIN_RESAMPLE_RATE = 1.1


def tile_resample(img: np.ndarray, down_sampling_rate: float = 1.0) -> np.ndarray:
    """The image shrunk `down_sampling_rate` times (each side truncated to int, at least 1 px)."""
    img = check_rgb(img)
    if down_sampling_rate < MIN_RESAMPLE_RATE:
        return img
    h, w = img.shape[:2]
    size = (max(1, int(w / down_sampling_rate)), max(1, int(h / down_sampling_rate)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def tile_blur(img: np.ndarray, sigma: float = 5.0) -> np.ndarray:
    """The image blurred with a Gaussian of `sigma` px (OpenCV picks the kernel size); sigma 0: unchanged."""
    img = check_rgb(img)
    if sigma <= 0:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigma)
