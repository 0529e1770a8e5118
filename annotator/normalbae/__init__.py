"""NormalBAE surface normals (ControlNet 1.1 `annotator/normalbae`, weights `scannet.pt`), without timm or
gen-efficientnet: the EfficientNet-B5 backbone is written here (`efficientnet.py`) under the same names.

The image (RGB / 255, ImageNet mean/std) goes through the net at its own size (edge-padded to multiples
of 32 if needed); the full-resolution
normal's (x, y, z) map to colours as `(n + 1) / 2`, clipped, `* 255`, truncated to uint8, in R, G, B.
The file is a training checkpoint `{'model': {'module.<key>': ...}}`; upstream's loader takes 'model'
and drops `module.`, and so does this one (a bare state dict, with or without the prefix, loads too).
"""
from functools import cached_property

import numpy as np
import torch

from annotator.normalbae.model import NormalBAE
from annotator.util import Detector, check_rgb, strip_prefix, unwrap_state_dict

WEIGHTS = "scannet.pt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIDE = 32  # five stride-2 stages
SIDE_MULTIPLE = 32


class NormalBaeDetector(Detector):
    """`NormalBaeDetector()(img)` -> HxWx3 uint8 normal map (x, y, z as R, G, B)."""

    @cached_property
    def net(self):
        state = strip_prefix(unwrap_state_dict(self.read_weights(WEIGHTS), "model"), "module.")
        return self.build_net(NormalBAE, state, WEIGHTS, "NormalBAE (scannet)", channels_last=True)

    @torch.inference_mode()
    def __call__(self, img: np.ndarray) -> np.ndarray:
        img = check_rgb(img, MIN_SIDE)
        h, w = img.shape[:2]
        x = (img.astype(np.float32) / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
        # The decoder's x2 steps need sides that are multiples of 32 (resize_image gives 64s); upstream
        # fails on others. Pad by repeating the edge, then crop.
        x = np.pad(x, ((0, -h % SIDE_MULTIPLE), (0, -w % SIDE_MULTIPLE), (0, 0)), mode="edge")
        normal = self.net(self.to_tensor(x))[0, :3, :h, :w].float().permute(1, 2, 0).cpu().numpy()
        normal = ((normal + 1.0) * 0.5).clip(0, 1)
        return (normal * 255.0).clip(0, 255).astype(np.uint8)
