"""App inputs -> the (H, W, 3) uint8 RGB arrays the annotators and upstream's `HWC3` rules expect.

Gradio hands the image over as PIL in its own mode (`image_mode=None`), so that a 16-bit PNG is scaled to
8 bits instead of being clipped to white by PIL's `convert('RGB')`, and transparency is composited on
white (upstream's HWC3 rule) instead of being dropped.
"""
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

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


def _too_large(w: int, h: int, what: str = "The image") -> str:
    return (f"{what} is {w}x{h} ({w * h / 1e6:.0f} MP), more than the {MAX_INPUT_PIXELS / 1e6:.0f} MP this app "
            f"accepts: please downscale it first (the apps work at 1024 px at most).")


def check_upload(path, name: str = "") -> None:
    """Read an uploaded file's header only (no pixels decoded) and raise ValueError when it is not an image
    PIL can open, or one over ``MAX_INPUT_PIXELS`` (decompression bombs included). The message names the
    file as the user called it (``name``), never the server's temporary path."""
    shown = repr(os.path.basename(name or "the upload"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                w, h = image.size
    except Image.DecompressionBombError:
        raise ValueError(f"The upload {shown} declares more pixels than this app accepts "
                         f"({MAX_INPUT_PIXELS / 1e6:.0f} MP at most): please downscale it first.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ValueError(f"The upload {shown} is not an image this app can read: please upload a PNG, JPEG, "
                         "WebP or BMP picture.") from None
    if w * h > MAX_INPUT_PIXELS:
        raise ValueError(_too_large(w, h, f"The upload {shown}"))
    if min(w, h) < 1:
        raise ValueError(f"The upload {shown} is empty ({w}x{h}).")


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
        raise ValueError(_too_large(w, h))
    if min(w, h) < 1:
        raise ValueError(f"The image is empty ({w}x{h}).")
    if not isinstance(image, Image.Image):
        return HWC3(image)
    try:
        return HWC3(_array(image))  # PIL decodes the pixels here, on first use
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError("The image could not be decoded: the file is damaged or truncated.") from e


def canvas_to_mask(value) -> np.ndarray:
    """A Sketchpad value -> the drawing as light strokes on black, i.e. upstream's sketch-tool mask.

    Gradio 6's canvas composites black strokes on a white (or transparent, read as white) background, so
    the composite is inverted; the interactive scribble map then keeps pixels with min(R, G, B) > 127.
    """
    composite = value.get("composite") if isinstance(value, dict) else value
    if composite is None:
        raise ValueError("Nothing drawn yet: click 'Open drawing canvas!', pick the brush and draw.")
    return 255 - to_rgb(composite)
