"""M-LSD straight lines (upstream `annotator/mlsd`): net at the image's own size, line decoding, drawing.

Upstream's `pred_lines` is called with the image's (H, W), so there is no 512x512 resize; thresholds are
in half-resolution pixels. Upstream swallows every exception into an empty map; here only "no line found"
gives an empty map, and an unusable image size is a ValueError.
"""
from functools import cached_property

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from annotator.mlsd.model import MLSDLarge
from annotator.util import Detector, check_rgb

WEIGHTS = "mlsd_large_512_fp32.pth"
TOP_K = 200  # centre candidates considered
NMS_KERNEL = 3
SIZE_MULTIPLE = 16


def decode_lines(tp_map: torch.Tensor, value_threshold: float, distance_threshold: float) -> np.ndarray:
    """(9, h, w) net output -> (n, 4) float64 segments (x0, y0, x1, y1) in input pixels (2x the map).

    Centres are local maxima (3x3) of sigmoid(logit) among the top 200; a segment is kept when its score
    exceeds `value_threshold` and its length on the map exceeds `distance_threshold`.
    """
    tp_map = tp_map.float()
    w = tp_map.shape[2]
    heat = torch.sigmoid(tp_map[0:1])
    peak = F.max_pool2d(heat, NMS_KERNEL, stride=1, padding=NMS_KERNEL // 2) == heat
    scores, indices = (heat * peak).flatten().topk(min(TOP_K, heat.numel()))
    rows, cols = indices // w, indices % w
    displacement = tp_map[1:5, rows, cols].T.cpu().numpy()  # (k, 4) float32: start dx, dy, end dx, dy
    length = np.sqrt(np.sum((displacement[:, :2] - displacement[:, 2:]) ** 2, axis=-1))
    keep = (scores.cpu().numpy() > value_threshold) & (length > distance_threshold)
    centres = torch.stack((cols, rows), dim=1).cpu().numpy()[keep]  # (n, 2) int64 (x, y)
    return 2 * (np.tile(centres, 2) + displacement[keep].astype(np.float64))


class MLSDdetector(Detector):
    """`MLSDdetector()(img, thr_v, thr_d)` -> HxW uint8 map of 1-px white lines.

    H and W must be multiples of 16 (`resize_image` gives multiples of 64). Defaults are the app's.
    """

    @cached_property
    def net(self):
        return self.load_net(MLSDLarge, WEIGHTS, "M-LSD large", channels_last=True, fold_bn=True)

    @torch.inference_mode()
    def __call__(self, img: np.ndarray, thr_v: float = 0.1, thr_d: float = 0.1) -> np.ndarray:
        img = check_rgb(img, SIZE_MULTIPLE)
        h, w = img.shape[:2]
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(f"M-LSD needs both sides divisible by {SIZE_MULTIPLE}, got {w}x{h}; "
                             f"use annotator.util.resize_image first")
        rgb1 = np.concatenate([img.astype(np.float32), np.ones((h, w, 1), np.float32)], axis=2)
        tp_map = self.net(self.to_tensor(rgb1 / 127.5 - 1.0))[0]
        lines = np.zeros((h, w), np.uint8)
        for x0, y0, x1, y1 in decode_lines(tp_map, thr_v, thr_d).astype(np.int64):  # int(): toward zero
            cv2.line(lines, (int(x0), int(y0)), (int(x1), int(y1)), 255, 1)
        return lines
