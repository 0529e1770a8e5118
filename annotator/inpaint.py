"""The ControlNet 1.1 inpaint control (upstream `gradio_inpaint.py`): the image with the masked pixels
set to -1, so the model tells "to paint" from any real colour in 0..1.

The mask (white = repaint) is resized to the image bilinearly, scaled to 0..1 and blurred by `mask_blur`
(sigma, px); pixels where the blurred mask exceeds 0.5 are masked. The blurred mask also drives the
latent blend of the inpaint app (`latent_mask`).
"""
import cv2
import numpy as np

from annotator.util import check_rgb

MASKED = -1.0
DEFAULT_MASK_BLUR = 5.0  # the app's slider default (0.1..7)


def blurred_mask(mask: np.ndarray, size, mask_blur: float = DEFAULT_MASK_BLUR) -> np.ndarray:
    """(H, W) float32 mask in 0..1 at `size` = (W, H) from a uint8 mask (its first channel if it has several)."""
    mask = mask[:, :, 0] if mask.ndim == 3 else mask  # as upstream: an RGB(A) sketch layer's red channel
    if mask.dtype != np.uint8:
        raise ValueError(f"expected a uint8 mask, got {mask.dtype}")
    pixel = cv2.resize(mask, tuple(size), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    return cv2.GaussianBlur(pixel, (0, 0), mask_blur) if mask_blur > 0 else pixel


def inpaint_control(img: np.ndarray, mask: np.ndarray, mask_blur: float = DEFAULT_MASK_BLUR) -> np.ndarray:
    """(H, W, 3) float32 control: img / 255, and -1 where the blurred mask is above 0.5."""
    img = check_rgb(img)
    control = img.astype(np.float32) / 255.0
    control[blurred_mask(mask, img.shape[1::-1], mask_blur) > 0.5] = MASKED
    return control


def inpaint_preview(control: np.ndarray) -> np.ndarray:
    """The control as a viewable uint8 image: masked pixels black (what `control * 255` clips to)."""
    return (control * 255.0).clip(0, 255).astype(np.uint8)


def latent_mask(mask_pixel: np.ndarray) -> np.ndarray:
    """(H/8, W/8) float32 keep-mask for the latent blend: 1 - the blurred mask, area-resized."""
    h, w = mask_pixel.shape
    return 1.0 - cv2.resize(mask_pixel, (w // 8, h // 8), interpolation=cv2.INTER_AREA)
