"""Aspect-ratio buckets and the crop/flip that put an image (and its condition, with the same box) into one.

A bucket is a (width, height) pair, both multiples of 64, with at most ``resolution**2`` pixels and at least half
that, and an aspect ratio up to 2:1 either way. Every image goes
to the bucket whose aspect ratio is nearest its own (in log scale), is scaled to cover it, then cropped to it
(centre or random); a batch holds one bucket, so no padding. With ``buckets=False`` the only bucket is the square
``resolution x resolution`` (resize the short side, crop).
"""
import math
from typing import List, Optional, Tuple

import cv2
import numpy as np

Bucket = Tuple[int, int]  # (width, height)


def make_buckets(resolution: int, max_aspect: float = 2.0, step: int = 64) -> List[Bucket]:
    """Buckets of at most ``resolution**2`` pixels and aspect ratios up to ``max_aspect`` (both ways)."""
    if resolution % step:
        raise ValueError(f"--resolution must be a multiple of {step}, got {resolution}")
    area = resolution * resolution
    buckets = set()
    width = step
    while width <= resolution:  # the tallest bucket of each width, and its transpose
        height = int(min(area // width, width * max_aspect)) // step * step
        if height >= step and max(width / height, height / width) <= max_aspect and 2 * width * height >= area:
            buckets.update({(width, height), (height, width)})
        width += step
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: List[Bucket]) -> Bucket:
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


def crop_box(width: int, height: int, bucket: Bucket, random_crop: bool, rng: Optional[np.random.Generator] = None
             ) -> Tuple[float, Tuple[int, int, int, int]]:
    """The scale that makes (width, height) cover ``bucket`` and the crop box (left, top, right, bottom) in the
    scaled image: centred, or at a random position."""
    bw, bh = bucket
    scale = max(bw / width, bh / height)
    sw, sh = max(bw, round(width * scale)), max(bh, round(height * scale))
    if random_crop:
        rng = rng or np.random.default_rng()
        left, top = int(rng.integers(0, sw - bw + 1)), int(rng.integers(0, sh - bh + 1))
    else:
        left, top = (sw - bw) // 2, (sh - bh) // 2
    return scale, (left, top, left + bw, top + bh)


def fit(image: np.ndarray, bucket: Bucket, scale: float, box: Tuple[int, int, int, int],
        nearest: bool = False) -> np.ndarray:
    """Scale ``image`` (H, W, C uint8) by ``scale`` and cut ``box``. ``nearest`` keeps a label-like condition
    (segmentation colours, binary edges) free of blended values."""
    h, w = image.shape[:2]
    bw, bh = bucket
    size = (max(bw, round(w * scale)), max(bh, round(h * scale)))
    if size != (w, h):
        interpolation = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        image = cv2.resize(image, size, interpolation=interpolation)
    left, top, right, bottom = box
    return np.ascontiguousarray(image[top:bottom, left:right])
