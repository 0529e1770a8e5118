"""The standard OpenPose drawing (upstream `openpose/util.py` `draw_bodypose` / `draw_handpose`).

Colours are listed as RGB and drawn on an RGB canvas (upstream draws the same triples on a BGR-ordered
array and hands it back unconverted, so these are the colours its maps show).
"""
import colorsys
import math

import cv2
import numpy as np

from annotator.openpose.body import LIMBS, N_PARTS, N_SKELETON_LIMBS

PART_COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
               (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
               (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
JOINT_RADIUS = 4
LIMB_HALF_WIDTH = 4
LIMB_OPACITY = 0.6

HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
# Rainbow over the 20 edges; float values, rounded by OpenCV exactly as upstream's matplotlib colours.
HAND_EDGE_COLORS = tuple(tuple(255.0 * c for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
                         for i in range(len(HAND_EDGES)))
HAND_KEYPOINT_COLOR = (0, 0, 255)


def draw_bodypose(canvas: np.ndarray, candidate: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Joints as filled circles, then each of the 17 skeleton limbs as an ellipse blended at 60%."""
    for part in range(N_PARTS):
        for person in subset:
            index = int(person[part])
            if index != -1:
                x, y = candidate[index, :2]
                cv2.circle(canvas, (int(x), int(y)), JOINT_RADIUS, PART_COLORS[part], thickness=-1)
    for limb in range(N_SKELETON_LIMBS):
        for person in subset:
            index = person[list(LIMBS[limb])]
            if (index == -1).any():
                continue
            xs, ys = candidate[index.astype(int), 0], candidate[index.astype(int), 1]
            length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            polygon = cv2.ellipse2Poly((int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), LIMB_HALF_WIDTH),
                                       int(angle), 0, 360, 1)
            limb_canvas = canvas.copy()
            cv2.fillConvexPoly(limb_canvas, polygon, PART_COLORS[limb])
            canvas = cv2.addWeighted(canvas, 1.0 - LIMB_OPACITY, limb_canvas, LIMB_OPACITY, 0)
    return canvas


def draw_handpose(canvas: np.ndarray, all_hand_peaks: list) -> np.ndarray:
    """Per hand: 20 coloured bones (skipped if an end has a 0 coordinate), then 21 keypoint dots."""
    for peaks in all_hand_peaks:
        for (a, b), color in zip(HAND_EDGES, HAND_EDGE_COLORS):
            if (peaks[[a, b]] != 0).all():
                cv2.line(canvas, tuple(int(v) for v in peaks[a]), tuple(int(v) for v in peaks[b]), color, thickness=2)
        for x, y in peaks:
            cv2.circle(canvas, (int(x), int(y)), JOINT_RADIUS, HAND_KEYPOINT_COLOR, thickness=-1)
    return canvas
