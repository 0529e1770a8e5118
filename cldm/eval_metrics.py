"""Agreement scores between a condition map and the one re-extracted from a generated image (ControlNet++'s
controllability metrics), in plain numpy / torch so that every number is reproducible here.

* ``edge_f1``: pixel-exact F1 of two binary edge maps (Canny at fixed thresholds);
* ``ssim``: the structural similarity of Wang et al. (2004) by its formula: an 11x11 Gaussian window of
  sigma 1.5, K1 = 0.01, K2 = 0.03, 'valid' filtering, the mean of the SSIM map (HED / soft edge / lineart);
* ``rmse``: root mean squared difference, in the maps' own units (0-255 depth maps);
* ``mean_iou``: mean over the classes present in either map of the per-class IoU (segmentation);
* ``keypoint_pck``: the fraction of reference keypoints with a detected keypoint of the same part within a
  pixel distance (pose).
"""
import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03

Keypoint = Tuple[float, float, int]  # x, y (pixels), body part index


def edge_f1(reference: np.ndarray, predicted: np.ndarray) -> dict:
    """Precision, recall and F1 of ``predicted`` edge pixels against ``reference`` (bool or 0/255 maps of one
    shape). Two empty maps agree perfectly; one empty map against edges scores 0."""
    ref, pred = _binary(reference), _binary(predicted)
    _same_shape(ref, pred)
    hits = float(np.logical_and(ref, pred).sum())
    n_ref, n_pred = float(ref.sum()), float(pred.sum())
    if n_ref == 0 and n_pred == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(size, size) float64 Gaussian weights summing to 1."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of two grey maps (H, W) (or (H, W, C): the channels are averaged first), sides >= 11."""
    x, y = (_grey(v) for v in (a, b))
    _same_shape(x, y)
    if min(x.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs maps of at least {SSIM_WINDOW}x{SSIM_WINDOW} px, got {x.shape[1]}x{x.shape[0]}")
    w = gaussian_window()[None, None]
    x, y = (torch.from_numpy(v)[None, None] for v in (x, y))

    def mean(t):
        return F.conv2d(t, w)

    mu_x, mu_y = mean(x), mean(y)
    var_x = mean(x * x) - mu_x ** 2
    var_y = mean(y * y) - mu_y ** 2
    cov = mean(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    x, y = (np.asarray(v, dtype=np.float64) for v in (a, b))
    _same_shape(x, y)
    return float(np.sqrt(np.mean((x - y) ** 2)))


def mean_iou(reference: np.ndarray, predicted: np.ndarray, ignore: Optional[int] = None) -> dict:
    """Mean IoU over the classes present in either (H, W) integer class map (``ignore``: a label left out),
    and the pixel accuracy."""
    ref, pred = np.asarray(reference), np.asarray(predicted)
    _same_shape(ref, pred)
    valid = np.ones(ref.shape, bool) if ignore is None else ref != ignore
    ious = []
    for c in np.union1d(np.unique(ref[valid]), np.unique(pred[valid])):
        r, p = (ref == c) & valid, (pred == c) & valid
        ious.append(np.logical_and(r, p).sum() / np.logical_or(r, p).sum())
    return {"miou": float(np.mean(ious)) if ious else 1.0,
            "pixel_acc": float((ref[valid] == pred[valid]).mean()) if valid.any() else 1.0}


def keypoint_pck(reference: Sequence[Keypoint], predicted: Sequence[Keypoint], distance: float) -> float:
    """Fraction of reference keypoints (x, y, part) with a predicted keypoint of the same part at most
    ``distance`` px away; NaN when the reference has none (the sample then carries no pose information)."""
    if not reference:
        return math.nan
    by_part = {}
    for x, y, part in predicted:
        by_part.setdefault(int(part), []).append((x, y))
    hits = 0
    for x, y, part in reference:
        points = np.asarray(by_part.get(int(part), []), dtype=np.float64).reshape(-1, 2)
        if len(points) and np.sqrt(((points - (x, y)) ** 2).sum(1)).min() <= distance:
            hits += 1
    return hits / len(reference)


def _binary(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m)
    if m.ndim == 3:
        m = m.max(axis=2)
    return m > 0 if m.dtype != bool else m


def _grey(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return m.mean(axis=2) if m.ndim == 3 else m


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
