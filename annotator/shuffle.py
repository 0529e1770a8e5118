"""Content shuffle (ControlNet 1.1 `annotator/shuffle`): the image resampled along a smooth random flow
field, which keeps its colours and textures but scrambles its layout.

Each flow coordinate is a "noise disk": uniform noise on a coarse grid (one cell per `f` px, plus a
border cell each side), enlarged bicubically, cropped to the target size and min-max normalised, then
scaled to the source image's width or height. `cv2.remap` samples the image there (bilinear).
"""
import cv2
import numpy as np

from annotator.util import check_rgb

DEFAULT_CELL = 256  # upstream's `f`


def make_noise_disk(h: int, w: int, channels: int, cell: int, rng: np.random.RandomState) -> np.ndarray:
    """(h, w, channels) float64 smooth noise in 0..1 (min exactly 0, max exactly 1 unless constant)."""
    noise = rng.uniform(0.0, 1.0, size=(h // cell + 2, w // cell + 2, channels))
    noise = cv2.resize(noise, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = noise.reshape(h + 2 * cell, w + 2 * cell, channels)[cell:cell + h, cell:cell + w]
    noise = noise - noise.min()
    return noise / noise.max()


class ContentShuffleDetector:
    """`ContentShuffleDetector()(img, h=None, w=None, f=256, seed=None)` -> (h, w, 3) uint8 shuffled image.

    h, w: output size (default: the image's). seed: the flow is drawn from `np.random.RandomState(seed)`,
    the stream upstream's app gets from `np.random.seed(seed)` (x noise first, then y); None draws a
    fresh seed.
    """

    def __call__(self, img: np.ndarray, h: int = None, w: int = None, f: int = DEFAULT_CELL, seed: int = None):
        img = check_rgb(img)
        height, width = img.shape[:2]
        h, w = h or height, w or width
        rng = np.random.RandomState(seed)
        x = make_noise_disk(h, w, 1, f, rng) * float(width - 1)
        y = make_noise_disk(h, w, 1, f, rng) * float(height - 1)
        flow = np.concatenate([x, y], axis=2).astype(np.float32)
        return cv2.remap(img, flow, None, cv2.INTER_LINEAR)
