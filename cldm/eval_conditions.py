"""The conditions ``python -m cldm.evaluate`` scores: how each one is extracted from an image by the project's
annotators, what the ControlNet is given, and how a re-extracted condition is compared with the reference.

Each ``Condition`` turns an (H, W, 3) uint8 RGB image into ``(control_map, measurement)``: the map the
ControlNet reads (as the apps feed it) and what the metric compares (edge pixels, a grey map, a depth map,
class labels, keypoints). ``fill50k`` is the bundled tiny model's task: its reference is the drawn circle
outline itself (``training.fill50k``), and its score is ``training.eval_fill``'s (IoU of the filled circle,
colour accuracy).
"""
import math
from typing import Any, Dict, List, Sequence, Tuple

import cv2
import numpy as np

from annotator.util import HWC3
from cldm import eval_metrics

Extracted = Tuple[np.ndarray, Any]

CANNY_THRESHOLDS = (100, 200)  # fixed, the Canny app's defaults (as ControlNet++ evaluates)
POSE_DISTANCE_AT_512 = 10.0  # px: a keypoint counts when found within this distance, scaled to the image


class Condition:
    """One condition's extraction and metric. ``metrics``: the summary keys the table shows, main one first."""
    name = ""
    description = ""
    metrics: Tuple[str, ...] = ()
    higher_is_better = True

    def detect(self, annotators, image: np.ndarray) -> Extracted:
        raise NotImplementedError

    def reference(self, annotators, image: np.ndarray, meta=None) -> Extracted:
        """The condition of a real image: what the sample is generated from."""
        return self.detect(annotators, image)

    def reextract(self, annotators, image: np.ndarray, reference) -> Extracted:
        """The same condition extracted from a generated image."""
        return self.detect(annotators, image)

    def score(self, reference, generated) -> Dict[str, float]:
        raise NotImplementedError

    def summarize(self, scores: Sequence[Dict[str, float]]) -> Dict[str, float]:
        """Per-metric means over the samples (a NaN score, e.g. no reference keypoints, is left out)."""
        out = {}
        for key in scores[0]:
            values = [s[key] for s in scores if not math.isnan(s[key])]
            out[key] = float(np.mean(values)) if values else math.nan
        out["n"] = len(scores)
        return out


class Canny(Condition):
    name, description = "canny", f"Canny edges at thresholds {CANNY_THRESHOLDS}, pixel-exact F1"
    metrics = ("f1", "precision", "recall")

    def detect(self, annotators, image):
        edges = annotators.canny(image, *CANNY_THRESHOLDS)
        return HWC3(edges), edges > 0

    def score(self, reference, generated):
        return eval_metrics.edge_f1(reference, generated)


class GreyMap(Condition):
    """A soft map (HED, PiDiNet, lineart) compared by SSIM; ``invert`` when the ControlNet reads 255 - map."""
    metrics = ("ssim",)
    invert = False

    def run(self, annotators, image) -> np.ndarray:
        raise NotImplementedError

    def detect(self, annotators, image):
        grey = self.run(annotators, image)
        return HWC3(255 - grey if self.invert else grey), grey

    def score(self, reference, generated):
        return {"ssim": eval_metrics.ssim(reference, generated)}


class Hed(GreyMap):
    name, description = "hed", "HED soft edges, SSIM"

    def run(self, annotators, image):
        return annotators.hed(image)


class SoftEdge(GreyMap):
    name, description = "softedge", "PiDiNet soft edges (1.1 softedge), SSIM"

    def run(self, annotators, image):
        return annotators.pidinet(image)


class Lineart(GreyMap):
    name, description = "lineart", "1.1 lineart (the ControlNet reads the inverted map), SSIM"
    invert = True

    def run(self, annotators, image):
        return annotators.lineart(image)


class Depth(Condition):
    name, description = "depth", "MiDaS relative depth (0-255), RMSE"
    metrics = ("rmse",)
    higher_is_better = False

    def detect(self, annotators, image):
        depth, _ = annotators.midas(image)
        return HWC3(depth), depth

    def score(self, reference, generated):
        return {"rmse": eval_metrics.rmse(reference, generated)}


class Segmentation(Condition):
    name, description = "seg", "UniFormer ADE20K segmentation (150 classes), mIoU"
    metrics = ("miou", "pixel_acc")

    def detect(self, annotators, image):
        from annotator.uniformer.palette import ADE20K_PALETTE

        colours = annotators.uniformer(image)
        return colours, palette_labels(colours, ADE20K_PALETTE)

    def score(self, reference, generated):
        return eval_metrics.mean_iou(reference, generated)


def palette_labels(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W, 3) palette colours -> (H, W) class indices (a colour two classes share maps to the first;
    a colour not in the palette to -1)."""
    code = lambda rgb: (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    lookup = {}
    for index, c in enumerate(code(np.asarray(palette))):
        lookup.setdefault(int(c), index)
    codes = code(colours)
    labels = np.full(codes.shape, -1, np.int64)
    for c in np.unique(codes):
        labels[codes == c] = lookup.get(int(c), -1)
    return labels


class Pose(Condition):
    name, description = "pose", "OpenPose body keypoints, fraction found within a pixel distance"
    metrics = ("pck",)

    def detect(self, annotators, image):
        canvas, found = annotators.openpose(image)
        return canvas, (keypoints(found), max(image.shape[:2]))

    def score(self, reference, generated):
        points, side = reference
        distance = POSE_DISTANCE_AT_512 * side / 512
        return {"pck": eval_metrics.keypoint_pck(points, generated[0], distance)}


def keypoints(found: dict) -> List[eval_metrics.Keypoint]:
    """OpenPose's ``{'candidate': [[x, y, score, id]...], 'subset': [[18 indices or -1, score, count]...]}``
    -> every person's (x, y, part)."""
    out = []
    for person in found["subset"]:
        for part, index in enumerate(person[:18]):
            if index >= 0:
                x, y = found["candidate"][int(index)][:2]
                out.append((float(x), float(y), part))
    return out


class Fill50K(Condition):
    """The tiny model's task: the reference is the drawn outline (the Fill50K hint), the generated image is
    scored by ``training.eval_fill.score`` (IoU of the circle, colour of circle and background), and its
    re-extracted condition is the outline of the region nearer the prompt's circle colour."""
    name, description = "fill50k", "Fill50K circle: IoU of the filled circle, colour accuracy (training.eval_fill)"
    metrics = ("iou", "color_acc", "color_acc_strict", "iou_ge_0.9")

    def reference(self, annotators, image, meta=None):
        from training.fill50k import render

        if meta is None:
            raise ValueError("fill50k samples come from training.fill50k (they carry their circle)")
        source, _ = render(meta, image.shape[0])
        return source, meta

    def reextract(self, annotators, image, reference):
        from training.eval_fill import nearer_circle_colour

        mask = nearer_circle_colour(image, reference).astype(np.uint8)
        # padded by replication, so that where the region meets the image border its contour runs just
        # outside the image (as the drawn outline of a circle cut by the border does) and is clipped
        padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_REPLICATE)
        contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(-1, -1))
        outline = np.zeros_like(image)
        cv2.drawContours(outline, contours, -1, (255, 255, 255), reference.thickness, cv2.LINE_AA)
        return outline, image

    def score(self, reference, generated):
        from training.eval_fill import score

        return score(generated, reference)

    def summarize(self, scores):
        from training.eval_fill import summarize

        return summarize(scores)


CONDITIONS = {c.name: c for c in (Canny(), Hed(), SoftEdge(), Lineart(), Depth(), Segmentation(), Pose(), Fill50K())}
