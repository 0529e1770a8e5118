"""ControlNet 1.1's OpenPose (`annotator/openpose/__init__.py` of the 1.1 nightly): body, and with
`hand_and_face=True` also hands and faces (`facenet.pth`), drawn as 1.1 draws them.

What 1.1 changed from 1.0: maps are resized with `smart_resize` (area / Lanczos) instead of bicubic; a
hand crop is blurred (sigma 0.8), resized to squares of 184, 368, 552 and 736 px and its heat maps
averaged at 128 x 128; keypoints are returned normalised by the image size, missing ones negative; the
drawing dims the limbs instead of blending them (see `draw.py`).
"""
from functools import cached_property

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from annotator.openpose import BODY_SCALE, OpenposeDetector
from annotator.openpose.body import estimate_body
from annotator.openpose.draw import draw_bodypose_v11, draw_facepose_v11, draw_handpose_v11
from annotator.openpose.face import FACE_NET_INPUT, face_boxes, face_peaks
from annotator.openpose.hand import HAND_SCALES, hand_boxes, hand_peaks
from annotator.openpose.maps import BOX_SIZE, cpm_maps_v11, smart_resize
from annotator.openpose.model import HAND_HEAT_CHANNELS, FaceNet
from annotator.util import check_rgb

FACE_WEIGHTS = "facenet.pth"
HAND_BLUR_SIGMA = 0.8
HAND_MAP_SIZE = 128


def _normalised(peaks: np.ndarray, x: int, y: int, width: int, height: int) -> list:
    """Crop peaks -> image-normalised floats; a coordinate that is 0 in the crop becomes -1 / size."""
    peaks = peaks.astype(np.float32)
    peaks[:, 0] = np.where(peaks[:, 0] < 1e-6, -1, peaks[:, 0] + x) / float(width)
    peaks[:, 1] = np.where(peaks[:, 1] < 1e-6, -1, peaks[:, 1] + y) / float(height)
    return peaks.tolist()


class OpenposeFullDetector(OpenposeDetector):
    """`OpenposeFullDetector()(img, hand_and_face=False)` -> (HxWx3 uint8 RGB drawing, pose dict).

    pose: {'bodies': {'candidate': [[x, y], ...], 'subset': [...]}, 'hands': [[[x, y] x 21], ...],
    'faces': [[[x, y], ...], ...]}, coordinates normalised to 0..1 by the image width / height. The hand
    and face nets are read only when `hand_and_face=True` is first asked for.
    """

    @cached_property
    def face_net(self):
        return self.load_net(FaceNet, FACE_WEIGHTS, "face-pose", channels_last=True)

    @torch.inference_mode()
    def __call__(self, img: np.ndarray, hand_and_face: bool = False):
        img = check_rgb(img)
        bgr = np.ascontiguousarray(img[:, :, ::-1])
        height, width = bgr.shape[:2]
        candidate, subset = self.detect_body_v11(bgr)
        hands, faces = [], []
        if hand_and_face:
            for x, y, size, _ in hand_boxes(candidate, subset, height, width):
                hands.append(_normalised(self.hand_keypoints(bgr[y:y + size, x:x + size]), x, y, width, height))
            for x, y, size in face_boxes(candidate, subset, height, width):
                peaks = face_peaks(self.face_heatmaps(bgr[y:y + size, x:x + size]))
                if len(peaks):
                    faces.append(_normalised(peaks, x, y, width, height))
        points = candidate[:, :2] / np.array([float(width), float(height)])
        pose = {"bodies": {"candidate": points.tolist(), "subset": subset.tolist()}, "hands": hands, "faces": faces}
        return self.draw(pose, height, width), pose

    @staticmethod
    def draw(pose: dict, height: int, width: int, body=True, hand=True, face=True) -> np.ndarray:
        canvas = np.zeros((height, width, 3), np.uint8)
        if body:
            canvas = draw_bodypose_v11(canvas, pose["bodies"]["candidate"], pose["bodies"]["subset"])
        if hand:
            canvas = draw_handpose_v11(canvas, pose["hands"])
        if face:
            canvas = draw_facepose_v11(canvas, pose["faces"])
        return canvas

    def detect_body_v11(self, bgr: np.ndarray):
        """(candidate (n, 4) in pixels, subset) with 1.1's resizing."""
        height, width = bgr.shape[:2]
        scale = BODY_SCALE * BOX_SIZE / height
        paf, heat = cpm_maps_v11(lambda x: self.body_net(self.to_tensor(x)), bgr, (height * scale, width * scale),
                                 (height, width))
        return estimate_body(heat.astype(np.float64), paf.astype(np.float64), height)

    def hand_keypoints(self, crop: np.ndarray) -> np.ndarray:
        """(21, 2) int (x, y) in crop pixels, (0, 0) where not found."""
        blurred = cv2.GaussianBlur(crop, (0, 0), HAND_BLUR_SIGMA)
        heat = np.zeros((HAND_MAP_SIZE, HAND_MAP_SIZE, HAND_HEAT_CHANNELS))
        for scale in HAND_SCALES:
            side = scale * BOX_SIZE
            (scale_heat,) = cpm_maps_v11(lambda t: (self.hand_net(self.to_tensor(t)),), blurred, (side, side),
                                         (HAND_MAP_SIZE, HAND_MAP_SIZE))
            heat += scale_heat / len(HAND_SCALES)
        peaks = hand_peaks(heat)
        peaks[:, 0] = (peaks[:, 0] * float(crop.shape[1]) / HAND_MAP_SIZE).astype(np.int64)
        peaks[:, 1] = (peaks[:, 1] * float(crop.shape[0]) / HAND_MAP_SIZE).astype(np.int64)
        return peaks

    def face_heatmaps(self, crop: np.ndarray) -> np.ndarray:
        """(71, h, w) float32 heat maps of the last stage, bilinearly (corner-aligned) at the crop's size."""
        x = smart_resize(crop, FACE_NET_INPUT, FACE_NET_INPUT).astype(np.float32) / 256.0 - 0.5
        heat = self.face_net(self.to_tensor(x)).float()
        heat = F.interpolate(heat, crop.shape[:2], mode="bilinear", align_corners=True)
        return heat[0].cpu().numpy()
