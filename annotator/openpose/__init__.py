"""OpenPose body (+ optional hand) pose maps, as upstream `annotator/openpose` (ControlNet 1.0).

The nets see BGR (upstream flips the RGB input); the body runs at one scale (input height 184 px), each
hand box at four. Returns the drawing and upstream's pose dict.
"""
from functools import cached_property

import numpy as np
import torch

from annotator.openpose.body import estimate_body
from annotator.openpose.draw import draw_bodypose, draw_handpose
from annotator.openpose.hand import HAND_SCALES, hand_boxes, hand_peaks
from annotator.openpose.maps import BOX_SIZE, cpm_maps
from annotator.openpose.model import HAND_HEAT_CHANNELS, BodyPoseNet, HandPoseNet
from annotator.util import Detector, check_rgb

BODY_WEIGHTS = "body_pose_model.pth"
HAND_WEIGHTS = "hand_pose_model.pth"
BODY_SCALE = 0.5  # x BOX_SIZE / image height


class OpenposeDetector(Detector):
    """`OpenposeDetector()(img, hand=False)` -> (HxWx3 uint8 RGB drawing, {'candidate': ..., 'subset': ...}).

    candidate: [x, y, score, id] per detected part; subset: per person 18 candidate ids (-1 = absent),
    total score, part count. The hand net is loaded only when `hand=True` is first asked for.
    """

    @cached_property
    def body_net(self):
        return self.load_net(BodyPoseNet, BODY_WEIGHTS, "body-pose", channels_last=True)

    @cached_property
    def hand_net(self):
        return self.load_net(HandPoseNet, HAND_WEIGHTS, "hand-pose", channels_last=True)

    @torch.inference_mode()
    def __call__(self, img: np.ndarray, hand: bool = False):
        img = check_rgb(img)
        bgr = np.ascontiguousarray(img[:, :, ::-1])
        candidate, subset = self.detect_body(bgr)
        canvas = draw_bodypose(np.zeros_like(img), candidate, subset)
        if hand:
            canvas = draw_handpose(canvas, self.detect_hands(bgr, candidate, subset))
        return canvas, {"candidate": candidate.tolist(), "subset": subset.tolist()}

    def detect_body(self, bgr: np.ndarray):
        """(candidate (n, 4), subset (people, 20)) for a BGR uint8 image."""
        paf, heat = cpm_maps(lambda x: self.body_net(self.to_tensor(x)), bgr, BODY_SCALE * BOX_SIZE / bgr.shape[0])
        return estimate_body(heat.astype(np.float64), paf.astype(np.float64), bgr.shape[0])

    def detect_hands(self, bgr: np.ndarray, candidate: np.ndarray, subset: np.ndarray) -> list:
        """(21, 2) int keypoints per hand box, in image coordinates; (0, 0) marks a missing keypoint."""
        all_peaks = []
        for x, y, size, _ in hand_boxes(candidate, subset, *bgr.shape[:2]):
            crop = bgr[y:y + size, x:x + size]
            heat = np.zeros(crop.shape[:2] + (HAND_HEAT_CHANNELS,))
            for scale in HAND_SCALES:
                (scale_heat,) = cpm_maps(lambda t: (self.hand_net(self.to_tensor(t)),), crop,
                                         scale * BOX_SIZE / crop.shape[0])
                heat += scale_heat / len(HAND_SCALES)  # float32 division, float64 sum, as upstream
            peaks = hand_peaks(heat)
            # Upstream shifts only non-zero coordinates, so (0, 0) stays "not found".
            peaks[:, 0] = np.where(peaks[:, 0] == 0, 0, peaks[:, 0] + x)
            peaks[:, 1] = np.where(peaks[:, 1] == 0, 0, peaks[:, 1] + y)
            all_peaks.append(peaks)
        return all_peaks
