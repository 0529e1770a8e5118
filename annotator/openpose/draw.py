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


# ---------------------------------------------------------------------------------- ControlNet 1.1 style
# 1.1 draws from coordinates normalised by the image size (missing points negative): every limb straight
# onto the canvas, the whole canvas dimmed to 60%, then the joints; hands as in 1.0; face landmarks as
# white dots. Points are skipped unless both pixel coordinates exceed 0.01.
EPS = 0.01
FACE_RADIUS = 3
FACE_COLOR = (255, 255, 255)
LIMB_DIM = 0.6


def _pixels(point, width, height):
    return int(point[0] * width), int(point[1] * height)


def draw_bodypose_v11(canvas: np.ndarray, candidate: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """candidate: (n, 2) normalised x, y; subset as from `estimate_body`."""
    height, width = canvas.shape[:2]
    candidate = np.asarray(candidate, dtype=np.float64).reshape(-1, 2)
    subset = np.asarray(subset).reshape(-1, 20)
    for limb in range(N_SKELETON_LIMBS):
        for person in subset:
            index = person[list(LIMBS[limb])]
            if (index == -1).any():
                continue
            xs = candidate[index.astype(int), 0] * float(width)
            ys = candidate[index.astype(int), 1] * float(height)
            length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            polygon = cv2.ellipse2Poly((int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), LIMB_HALF_WIDTH),
                                       int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, PART_COLORS[limb])
    canvas = (canvas * LIMB_DIM).astype(np.uint8)
    for part in range(N_PARTS):
        for person in subset:
            index = int(person[part])
            if index != -1:
                cv2.circle(canvas, _pixels(candidate[index], width, height), JOINT_RADIUS, PART_COLORS[part],
                           thickness=-1)
    return canvas


def draw_handpose_v11(canvas: np.ndarray, all_hand_peaks: list) -> np.ndarray:
    """Per hand, (21, 2) normalised keypoints: 20 rainbow bones (thickness 2), then blue dots."""
    height, width = canvas.shape[:2]
    for peaks in all_hand_peaks:
        points = [_pixels(p, width, height) for p in np.asarray(peaks, dtype=np.float64)]
        for (a, b), color in zip(HAND_EDGES, HAND_EDGE_COLORS):
            if min(*points[a], *points[b]) > EPS:
                cv2.line(canvas, points[a], points[b], color, thickness=2)
        for point in points:
            if min(point) > EPS:
                cv2.circle(canvas, point, JOINT_RADIUS, HAND_KEYPOINT_COLOR, thickness=-1)
    return canvas


def draw_facepose_v11(canvas: np.ndarray, all_landmarks: list) -> np.ndarray:
    """Per face, (n, 2) normalised landmarks as white dots of radius 3."""
    height, width = canvas.shape[:2]
    for landmarks in all_landmarks:
        for point in np.asarray(landmarks, dtype=np.float64).reshape(-1, 2):
            x, y = _pixels(point, width, height)
            if x > EPS and y > EPS:
                cv2.circle(canvas, (x, y), FACE_RADIUS, FACE_COLOR, thickness=-1)
    return canvas
