"""Hand boxes from body keypoints and hand keypoints from hand heat maps (upstream `openpose/util.py`
`handDetect` and `openpose/hand.py`; Simon et al., "Hand Keypoint Detection in Single Images using
Multiview Bootstrapping", CVPR 2017)."""
import math

import cv2
import numpy as np

from annotator.openpose.maps import gaussian_smooth

HAND_SCALES = (0.5, 1.0, 1.5, 2.0)  # x BOX_SIZE / box height
N_KEYPOINTS = 21
HEAT_THRESHOLD = 0.05
WRIST_EXTENSION = 0.33  # box centre: wrist pushed 1/3 of the forearm further out
MIN_BOX = 20
# Body part indices (shoulder, elbow, wrist); the left hand is listed first, as upstream.
ARMS = ((True, (5, 6, 7)), (False, (2, 3, 4)))


def hand_boxes(candidate: np.ndarray, subset: np.ndarray, height: int, width: int) -> list:
    """Square boxes (x, y, size, is_left) around each visible hand, in int pixels, clipped to the image.

    Side = 1.5 x max(wrist-elbow, 0.9 x elbow-shoulder); boxes under 20 px are dropped.
    """
    boxes = []
    for person in subset.astype(int):
        for is_left, arm in ARMS:
            if (person[list(arm)] == -1).any():
                continue
            (x1, y1), (x2, y2), (x3, y3) = (candidate[person[part], :2] for part in arm)
            x = x3 + WRIST_EXTENSION * (x3 - x2)
            y = y3 + WRIST_EXTENSION * (y3 - y2)
            wrist_elbow = math.sqrt((x3 - x2) ** 2 + (y3 - y2) ** 2)
            elbow_shoulder = math.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2)
            size = 1.5 * max(wrist_elbow, 0.9 * elbow_shoulder)
            x, y = max(x - size / 2, 0), max(y - size / 2, 0)
            size = min(size if x + size <= width else width - x, size if y + size <= height else height - y)
            if size >= MIN_BOX:
                boxes.append((int(x), int(y), int(size), is_left))
    return boxes


def hand_peaks(heat: np.ndarray) -> np.ndarray:
    """(h, w, 22) float64 heat maps -> (21, 2) int (x, y); (0, 0) where a keypoint is not found.

    Per keypoint: the 8-connected blob of smoothed > 0.05 with the largest raw mass, and the first
    (row-major) maximum of the raw map inside it.
    """
    smooth = gaussian_smooth(np.ascontiguousarray(heat[:, :, :N_KEYPOINTS]))
    peaks = np.zeros((N_KEYPOINTS, 2), dtype=np.int64)
    for part in range(N_KEYPOINTS):
        binary = (smooth[:, :, part] > HEAT_THRESHOLD).astype(np.uint8)
        n_labels, labels = cv2.connectedComponents(binary, connectivity=8)
        if n_labels < 2:
            continue
        raw = heat[:, :, part]
        mass = np.bincount(labels.ravel(), weights=raw.ravel(), minlength=n_labels)[1:]
        inside = np.where(labels == np.argmax(mass) + 1, raw, 0.0)
        y, x = np.unravel_index(np.argmax(inside), inside.shape)
        peaks[part] = x, y
    return peaks
