"""Canny edges, as upstream `annotator/canny`: OpenCV's detector on the 3-channel RGB image."""
import cv2
import numpy as np

from annotator.util import check_rgb


class CannyDetector:
    """`CannyDetector()(img, low, high)` -> HxW uint8 edge map (0/255).

    On a colour image OpenCV takes, per pixel, the channel with the largest gradient (aperture 3, L1 norm).
    Defaults are the Canny app's slider defaults.
    """

    def __call__(self, img: np.ndarray, low_threshold: int = 100, high_threshold: int = 200) -> np.ndarray:
        return cv2.Canny(check_rgb(img), low_threshold, high_threshold)
