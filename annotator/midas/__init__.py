"""MiDaS depth and normal maps (upstream ``annotator/midas``, ControlNet 1.0), DPT-Hybrid in plain torch.

The network runs on the image as given, normalised ``x / 127.5 - 1`` in RGB order: there is no MiDaS 384-px
transform (the apps pass the ``resize_image`` output, whose sides are multiples of 64). The normal map is
derived from the raw (unnormalised) depth with Sobel gradients; see ``normal_from_depth``.
"""

from functools import cached_property

import cv2
import numpy as np
import torch

from annotator.midas.dpt import DPTDepth
from annotator.util import Detector, check_rgb

WEIGHTS = "dpt_hybrid-midas-501f0c75.pt"
SIZE_MULTIPLE = 32  # tokens are at /16 and the deepest tap at /32 is upsampled x2 onto them


def normalise_depth(depth: np.ndarray) -> np.ndarray:
    """Scale float32 depth to [0, 1] (min -> 0, max -> 1); a constant map gives zeros instead of upstream's NaN."""
    shifted = depth - depth.min()
    peak = shifted.max()
    return shifted / peak if peak > 0 else shifted


def normal_from_depth(depth: np.ndarray, depth_pt: np.ndarray, a: float, bg_th: float) -> np.ndarray:
    """HxWx3 uint8 normal map from raw depth: (Sobel x, Sobel y, a) normalised, with the x/y slope zeroed where
    the normalised depth ``depth_pt`` < ``bg_th`` (background); channels x, y, z -> R, G, B."""
    x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    z = np.ones_like(x) * a
    background = depth_pt < bg_th
    x[background] = 0
    y[background] = 0
    normal = np.stack([x, y, z], axis=2)
    normal /= np.sum(normal ** 2.0, axis=2, keepdims=True) ** 0.5
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)


class MidasDetector(Detector):
    """``MidasDetector()(img, a, bg_th)`` -> (HxW uint8 depth map, HxWx3 uint8 normal map).

    img: HxWx3 uint8 RGB with sides that are multiples of 32. weights: file name in the checkpoint folder
    (or a path). The network loads on the first call.
    """

    def __init__(self, device="cpu", dtype=torch.float32, ckpt_dir=None, weights: str = WEIGHTS):
        super().__init__(device, dtype, ckpt_dir)
        self.weights = weights

    @cached_property
    def net(self) -> DPTDepth:
        return self.load_net(DPTDepth, self.weights, "MiDaS DPT-Hybrid")

    @torch.inference_mode()
    def __call__(self, img: np.ndarray, a: float = np.pi * 2.0, bg_th: float = 0.1):
        img = check_rgb(img)
        h, w = img.shape[:2]
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(f"MiDaS needs image sides that are multiples of {SIZE_MULTIPLE}, got {w}x{h}: "
                             f"pass the image through annotator.util.resize_image first")
        depth = self.net(self.to_tensor(img.astype(np.float32) / 127.5 - 1.0))[0].float().cpu().numpy()
        depth_pt = normalise_depth(depth)
        depth_image = (depth_pt * 255.0).clip(0, 255).astype(np.uint8)
        return depth_image, normal_from_depth(depth, depth_pt, a, bg_th)
