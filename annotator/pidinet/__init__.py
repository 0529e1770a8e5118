"""PiDiNet soft edges (ControlNet 1.1 `annotator/pidinet`, weights `table5_pidinet.pth`).

The net sees the image as BGR in 0..1; the fused (last) output, optionally quantised by `safe_step`
("safe" soft edge), becomes uint8 by `* 255`, clip and truncation. The file is a training checkpoint
(`{'state_dict': {'module.<key>': ...}}`); upstream's loader takes `state_dict` and drops `module.`,
and so does this one (a bare state dict, with or without the prefix, loads too).
"""
from functools import cached_property

import numpy as np
import torch

from annotator.pidinet.model import PiDiNet
from annotator.util import Detector, check_rgb, safe_step, strip_prefix, unwrap_state_dict

WEIGHTS = "table5_pidinet.pth"
MIN_SIDE = 8  # three 2x2 max-pools must leave at least one pixel


class PidiNetDetector(Detector):
    """`PidiNetDetector()(img, safe=False)` -> HxW uint8 edge map."""

    @cached_property
    def net(self):
        state = strip_prefix(unwrap_state_dict(self.read_weights(WEIGHTS)), "module.")
        return self.build_net(PiDiNet, state, WEIGHTS, "PiDiNet", channels_last=True)

    @torch.inference_mode()
    def __call__(self, img: np.ndarray, safe: bool = False) -> np.ndarray:
        img = check_rgb(img, MIN_SIDE)
        bgr01 = img[:, :, ::-1].astype(np.float32) / 255.0
        edge = self.net(self.to_tensor(bgr01))[-1][0, 0].float().cpu().numpy()
        if safe:
            edge = safe_step(edge)
        return (edge * 255.0).clip(0, 255).astype(np.uint8)
