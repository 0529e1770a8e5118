"""App inputs -> the (H, W, 3) uint8 RGB arrays the annotators and upstream's `HWC3` rules expect.

Gradio hands the image over as PIL in its own mode (`image_mode=None`), so that a 16-bit PNG is scaled to
8 bits instead of being clipped to white by PIL's `convert('RGB')`, and transparency is composited on
white (upstream's HWC3 rule) instead of being dropped.
"""
import numpy as np
from PIL import Image

from annotator.util import HWC3

MAX_INPUT_PIXELS = 50_000_000  # a 50 MP photo; larger ones are refused before any work is done
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grey PNGs open in one of these


def _array(image: Image.Image) -> np.ndarray:
    """PIL image in any mode -> uint8 array with 1, 3 or 4 channels (16-bit values keep their top byte,
    as `python -m annotator` reads them)."""
    if image.mode in _WIDE_INT_MODES:
        return (np.asarray(image).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
    if image.mode in ("L", "RGB", "RGBA"):
        return np.asarray(image)
    if image.mode in ("LA", "PA", "La", "RGBa") or "transparency" in image.info:
        return np.asarray(image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


def to_rgb(image) -> np.ndarray:
    """An uploaded image (PIL, or a uint8 array) -> (H, W, 3) uint8 RGB; ValueError when missing or too large."""
    if image is None:
        raise ValueError("No input image: upload one first.")
    if isinstance(image, Image.Image):
        w, h = image.size
    else:
        image = np.asarray(image)
        h, w = image.shape[:2]
    if w * h > MAX_INPUT_PIXELS:
        raise ValueError(f"The image is {w}x{h} ({w * h / 1e6:.0f} MP), more than the {MAX_INPUT_PIXELS / 1e6:.0f} MP "
                         f"this app accepts: please downscale it first (the apps work at 1024 px at most).")
    if min(w, h) < 1:
        raise ValueError(f"The image is empty ({w}x{h}).")
    return HWC3(_array(image) if isinstance(image, Image.Image) else image)


def canvas_to_mask(value) -> np.ndarray:
    """A Sketchpad value -> the drawing as light strokes on black, i.e. upstream's sketch-tool mask.

    Gradio 6's canvas composites black strokes on a white (or transparent, read as white) background, so
    the composite is inverted; the interactive scribble map then keeps pixels with min(R, G, B) > 127.
    """
    composite = value.get("composite") if isinstance(value, dict) else value
    if composite is None:
        raise ValueError("Nothing drawn yet: click 'Open drawing canvas!', pick the brush and draw.")
    return 255 - to_rgb(composite)
