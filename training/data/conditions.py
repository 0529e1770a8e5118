"""Conditions computed on the fly from the training image by one of the project's annotators
(``--condition canny``), with the annotator CLI's defaults (``python -m annotator --help``)."""
from typing import Callable, Optional

import numpy as np

from annotator.util import HWC3


def condition_names():
    from annotator.__main__ import ANNOTATORS
    return sorted(ANNOTATORS)


class Annotate:
    """Picklable ``rgb -> (H, W, 3) uint8`` condition; the detector is built on first use in each process
    (data-loader workers build their own)."""

    def __init__(self, name: str, ckpt_dir: Optional[str] = None):
        if name not in condition_names():
            raise ValueError(f"unknown --condition {name!r}; choose one of {', '.join(condition_names())}")
        self.name, self.ckpt_dir = name, ckpt_dir
        self._fn: Optional[Callable[[np.ndarray], np.ndarray]] = None

    def __getstate__(self):
        return {"name": self.name, "ckpt_dir": self.ckpt_dir, "_fn": None}

    def _build(self) -> Callable[[np.ndarray], np.ndarray]:
        from annotator.__main__ import ANNOTATORS, parse_args
        argv = [self.name, "-", "-"] + (["--ckpt-dir", self.ckpt_dir] if self.ckpt_dir else [])
        return ANNOTATORS[self.name][0](parse_args(argv))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if self._fn is None:
            self._fn = self._build()
        out = HWC3(np.asarray(self._fn(rgb)))
        if out.shape[:2] != rgb.shape[:2]:  # some detectors work at their own size
            import cv2
            out = cv2.resize(out, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
        return out
