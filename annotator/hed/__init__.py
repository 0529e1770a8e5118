"""HED soft edges (upstream `annotator/hed`), for both weight files; the file's keys pick the model.

- `ControlNetHED.pth` (default; upstream HEAD): RGB 0..255 in; the five side outputs are resized with
  OpenCV bilinear to the image size, averaged, and passed through a float64 sigmoid.
- `network-bsds500.pth` (ControlNet 1.0, what `control_sd15_hed` and fake scribble were trained on): BGR
  0..1 in; the net fuses its side outputs itself and returns probabilities.
Both maps become uint8 by `* 255`, clip and truncation; `safe=True` first quantises the probability with
`safe_step` (ControlNet 1.1's "safe" soft edge, 0 / 127 / 255).
"""
from functools import cached_property

import cv2
import numpy as np
import torch

from annotator.hed.model import ControlNetHED, LegacyHED, is_legacy_hed, legacy_hed_keys
from annotator.util import Detector, check_rgb, safe_step

DEFAULT_WEIGHTS = "ControlNetHED.pth"
LEGACY_WEIGHTS = "network-bsds500.pth"
MIN_SIDE = 16  # four 2x2 max-pools must leave at least one pixel


class HEDdetector(Detector):
    """`HEDdetector(weights=...)(img)` -> HxW uint8 edge probability map.

    weights: file name in the checkpoint folder (or a path); `LEGACY_WEIGHTS` reproduces ControlNet 1.0.
    """

    def __init__(self, weights: str = DEFAULT_WEIGHTS, device="cpu", dtype=torch.float32, ckpt_dir=None):
        super().__init__(device, dtype, ckpt_dir)
        self.weights = weights

    @cached_property
    def net(self):
        state = self.read_weights(self.weights)
        if isinstance(state, dict) and is_legacy_hed(state):
            return self.build_net(LegacyHED, legacy_hed_keys(state), self.weights, "HED (network-bsds500)",
                                  channels_last=True)
        return self.build_net(ControlNetHED, state, self.weights, "HED (ControlNetHED)", channels_last=True)

    @torch.inference_mode()
    def __call__(self, img: np.ndarray, safe: bool = False) -> np.ndarray:
        img = check_rgb(img, MIN_SIDE)
        if isinstance(self.net, LegacyHED):
            edge = self._legacy_probability(img)
        else:
            edge = self._controlnet_hed_probability(img)
        if safe:
            edge = safe_step(edge)
        return (edge * 255.0).clip(0, 255).astype(np.uint8)

    def _controlnet_hed_probability(self, img):
        h, w = img.shape[:2]
        sides = self.net(self.to_tensor(img.astype(np.float32)))
        sides = [cv2.resize(s[0, 0].float().cpu().numpy(), (w, h), interpolation=cv2.INTER_LINEAR) for s in sides]
        logit = np.stack(sides, axis=2).mean(axis=2).astype(np.float64)
        return 1.0 / (1.0 + np.exp(-logit))

    def _legacy_probability(self, img):
        bgr01 = img[:, :, ::-1].astype(np.float32) / 255.0
        return self.net(self.to_tensor(bgr01))[0, 0].float().cpu().numpy()
