"""Lineart (ControlNet 1.1 `annotator/lineart`): realistic line drawings from `sk_model.pth`, coarse ones
from `sk_model2.pth`, both the same generator (`annotator.lineart.model`).

The net sees RGB in 0..1 at the image's own size; its output (dark lines on white) becomes uint8 by
`* 255`, clip and truncation. The 1.1 lineart apps feed the ControlNet `1 - map / 255` (white lines on
black); this detector returns the map as upstream's does.
"""
from functools import cached_property

import numpy as np
import torch

from annotator.lineart.model import LineartGenerator
from annotator.util import Detector, check_rgb

FINE_WEIGHTS = "sk_model.pth"
COARSE_WEIGHTS = "sk_model2.pth"
MIN_SIDE = 8  # reflection pads need 4 px at full and 2 px at quarter resolution


class LineartDetector(Detector):
    """`LineartDetector()(img, coarse=False)` -> HxW uint8 line drawing (dark lines on white).

    Each weight file is read on first use, so the coarse one is needed only when asked for.
    """

    @cached_property
    def net(self):
        return self.load_net(LineartGenerator, FINE_WEIGHTS, "lineart (informative-drawings)", channels_last=True)

    @cached_property
    def coarse_net(self):
        return self.load_net(LineartGenerator, COARSE_WEIGHTS, "lineart (informative-drawings)", channels_last=True)

    @torch.inference_mode()
    def __call__(self, img: np.ndarray, coarse: bool = False) -> np.ndarray:
        img = check_rgb(img, MIN_SIDE)
        h, w = img.shape[:2]
        net = self.coarse_net if coarse else self.net
        line = net(self.to_tensor(img.astype(np.float32) / 255.0))[0, 0, :h, :w]  # crop the round-up to 4
        return (line.float().cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)
