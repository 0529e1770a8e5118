"""Lineart anime (ControlNet 1.1 `annotator/lineart_anime`, Anime2Sketch weights `netG.pth`).

The image is resized (bicubic) up to the next multiple of 256 on each side, fed as RGB in -1..1, and the
sketch (`* 127.5 + 127.5`) resized back (bicubic) before the clip and uint8 truncation. Dark lines on
white, like lineart; the 1.1 app feeds the ControlNet `1 - map / 255`.
"""
from functools import cached_property

import cv2
import numpy as np
import torch

from annotator.lineart_anime.model import N_LEVELS, AnimeLineartUNet
from annotator.util import Detector, check_rgb, strip_prefix

WEIGHTS = "netG.pth"
SIDE_MULTIPLE = 2 ** N_LEVELS


class LineartAnimeDetector(Detector):
    """`LineartAnimeDetector()(img)` -> HxW uint8 sketch (dark lines on white)."""

    @cached_property
    def net(self):
        state = strip_prefix(self.read_weights(WEIGHTS), "module.")
        return self.build_net(AnimeLineartUNet, state, WEIGHTS, "lineart anime (Anime2Sketch)", channels_last=True)

    @torch.inference_mode()
    def __call__(self, img: np.ndarray) -> np.ndarray:
        img = check_rgb(img)
        h, w = img.shape[:2]
        hn, wn = (SIDE_MULTIPLE * int(np.ceil(s / SIDE_MULTIPLE)) for s in (h, w))
        fed = cv2.resize(img, (wn, hn), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 127.5 - 1.0
        line = self.net(self.to_tensor(fed))[0, 0].float().cpu().numpy() * 127.5 + 127.5
        line = cv2.resize(line, (w, h), interpolation=cv2.INTER_CUBIC)
        return line.clip(0, 255).astype(np.uint8)
