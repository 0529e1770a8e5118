"""What differs between upstream's eleven `gradio_*.py` apps, as data: one `Task` per diffusion app, one
`AnnotatorTab` per tab of the annotator app. Titles, slider labels, ranges and defaults are upstream's.

Map rules (upstream's `process()`): the input becomes `resize_image(input, image_resolution)` (the output
size); Canny and the scribbles work on that image, the other detectors on `resize_image(input,
detect_resolution)`, their map resized to the output size with INTER_NEAREST (M-LSD, pose, seg) or
INTER_LINEAR (HED, fake scribble, depth, normal).
"""
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import cv2
import numpy as np

from annotator.scribble import canvas_scribble_map, fake_scribble, scribble_map
from annotator.shuffle import ContentShuffleDetector
from annotator.tile import tile_resample
from annotator.util import HWC3, resize_image


@dataclass(frozen=True)
class Option:
    """A task-specific input: a slider, or a checkbox when `step` is None. `key` is the map function's argument."""
    key: str
    label: str
    value: float
    minimum: float = 0.0
    maximum: float = 1.0
    step: Optional[float] = None


def unchanged(control_map: np.ndarray) -> np.ndarray:
    return control_map


@dataclass(frozen=True)
class Task:
    """One diffusion app.

    make_map(annotators, image, resized, **options) -> (H, W, 3) uint8 control map at `resized`'s size, where
    `image` is the full input and `resized` the input at the output size. show_map: what the gallery shows
    first. canvas: the input is a drawing canvas instead of an upload.
    """
    name: str  # short name, e.g. 'canny' (gradio_canny2image.py); the multi app's preprocessor choice
    title: str
    checkpoint: str  # `control_sd15_<checkpoint>.pth`
    make_map: Callable[..., np.ndarray]
    options: Tuple[Option, ...] = ()
    show_map: Callable[[np.ndarray], np.ndarray] = unchanged
    canvas: bool = False
    bgr_control: bool = False  # the model saw its training maps with R and B swapped (normal)

    def control(self, control_map: np.ndarray) -> np.ndarray:
        """The map as the ControlNet must see it."""
        return np.ascontiguousarray(control_map[:, :, ::-1]) if self.bgr_control else control_map

    def default_options(self) -> dict:
        return {o.key: o.value for o in self.options}


def detect_resolution_option(label: str, value: int = 512) -> Option:
    """The slider setting the size the detector works at."""
    return Option("detect_resolution", label, value, 128, 1024, 1)


def _detect_resized(detect, image, resolution, like, interpolation) -> np.ndarray:
    """`detect` on the input scaled to `resolution`; its map, as 3 channels, resized to `like`'s size."""
    h, w = like.shape[:2]
    return cv2.resize(HWC3(detect(resize_image(image, resolution))), (w, h), interpolation=interpolation)


def inverted(control_map: np.ndarray) -> np.ndarray:
    """White lines on black -> black lines on white, easier to look at."""
    return 255 - control_map


def thickened_inverted(control_map: np.ndarray) -> np.ndarray:
    """M-LSD's 1-px lines, dilated 3x3 so they stay visible, then inverted (upstream's hough display)."""
    return 255 - cv2.dilate(control_map, np.ones((3, 3), np.uint8), iterations=1)


def canny_map(ann, image, resized, low_threshold, high_threshold):
    return HWC3(ann.canny(resized, low_threshold, high_threshold))


def mlsd_map(ann, image, resized, detect_resolution, value_threshold, distance_threshold):
    return _detect_resized(lambda x: ann.mlsd(x, value_threshold, distance_threshold), image, detect_resolution,
                           resized, cv2.INTER_NEAREST)


def hed_map(ann, image, resized, detect_resolution):
    return _detect_resized(ann.hed, image, detect_resolution, resized, cv2.INTER_LINEAR)


def user_scribble_map(ann, image, resized):
    return HWC3(scribble_map(resized))


def canvas_map(ann, image, resized):
    return HWC3(canvas_scribble_map(resized))


def fake_scribble_map(ann, image, resized, detect_resolution):
    return HWC3(fake_scribble(hed_map(ann, image, resized, detect_resolution)[:, :, 0]))


def pose_map(ann, image, resized, detect_resolution):
    return _detect_resized(lambda x: ann.openpose(x)[0], image, detect_resolution, resized, cv2.INTER_NEAREST)


def seg_map(ann, image, resized, detect_resolution):
    return _detect_resized(ann.uniformer, image, detect_resolution, resized, cv2.INTER_NEAREST)


def depth_map(ann, image, resized, detect_resolution):
    return _detect_resized(lambda x: ann.midas(x)[0], image, detect_resolution, resized, cv2.INTER_LINEAR)


def normal_map(ann, image, resized, detect_resolution, bg_threshold):
    return _detect_resized(lambda x: ann.midas(x, bg_th=bg_threshold)[1], image, detect_resolution, resized,
                           cv2.INTER_LINEAR)


CANNY = Task("canny", "Control Stable Diffusion with Canny Edge Maps", "canny", canny_map, (
    Option("low_threshold", "Canny low threshold", 100, 1, 255, 1),
    Option("high_threshold", "Canny high threshold", 200, 1, 255, 1)), show_map=inverted)
HOUGH = Task("hough", "Control Stable Diffusion with Hough Line Maps", "mlsd", mlsd_map, (
    detect_resolution_option("Hough Resolution"),
    Option("value_threshold", "Hough value threshold (MLSD)", 0.1, 0.01, 2.0, 0.01),
    Option("distance_threshold", "Hough distance threshold (MLSD)", 0.1, 0.01, 20.0, 0.01)),
    show_map=thickened_inverted)
HED = Task("hed", "Control Stable Diffusion with HED Maps", "hed", hed_map,
           (detect_resolution_option("HED Resolution"),))
SCRIBBLE = Task("scribble", "Control Stable Diffusion with Scribble Maps", "scribble", user_scribble_map,
                show_map=inverted)
SCRIBBLE_INTERACTIVE = Task("scribble_interactive", "Control Stable Diffusion with Interactive Scribbles", "scribble",
                            canvas_map, show_map=inverted, canvas=True)
FAKE_SCRIBBLE = Task("fake_scribble", "Control Stable Diffusion with Fake Scribble Maps", "scribble",
                     fake_scribble_map, (detect_resolution_option("HED Resolution"),), show_map=inverted)
POSE = Task("pose", "Control Stable Diffusion with Human Pose", "openpose", pose_map,
            (detect_resolution_option("OpenPose Resolution"),))
SEG = Task("seg", "Control Stable Diffusion with Segmentation Maps", "seg", seg_map,
           (detect_resolution_option("Segmentation Resolution"),))
DEPTH = Task("depth", "Control Stable Diffusion with Depth Maps", "depth", depth_map,
             (detect_resolution_option("Depth Resolution", 384),))
NORMAL = Task("normal", "Control Stable Diffusion with Normal Maps", "normal", normal_map, (
    detect_resolution_option("Normal Resolution", 384),
    Option("bg_threshold", "Normal background threshold", 0.4, 0.0, 1.0, 0.01)), bgr_control=True)

TASKS = {t.name: t for t in (CANNY, HOUGH, HED, SCRIBBLE, SCRIBBLE_INTERACTIVE, FAKE_SCRIBBLE, POSE, SEG, DEPTH,
                             NORMAL)}
# For the multi-ControlNet app: an upload that already is a control map (e.g. a saved pose drawing).
MAP_AS_IS = Task("none", "The image is already a map", "", lambda ann, image, resized: resized)


def resize_to(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    """`image` at `like`'s size, interpolated as `resize_image` would (Lanczos to enlarge, area to shrink)."""
    h, w = like.shape[:2]
    enlarge = h * w > image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LANCZOS4 if enlarge else cv2.INTER_AREA)


@dataclass(frozen=True)
class AnnotatorTab:
    """One tab of the annotator app: run(annotators, image at `resolution`, **options) -> list of maps."""
    title: str
    name: str
    run: Callable[..., list]
    resolution: int = 512
    options: Tuple[Option, ...] = ()


ANNOTATOR_TABS = (
    AnnotatorTab("Canny Edge", "canny", lambda ann, img, low_threshold, high_threshold: [
        ann.canny(img, low_threshold, high_threshold)], options=(
        Option("low_threshold", "low_threshold", 100, 1, 255, 1),
        Option("high_threshold", "high_threshold", 200, 1, 255, 1))),
    AnnotatorTab("HED Edge", "hed", lambda ann, img: [ann.hed(img)]),
    AnnotatorTab("MLSD Edge", "mlsd", lambda ann, img, value_threshold, distance_threshold: [
        ann.mlsd(img, value_threshold, distance_threshold)], 384, (
        Option("value_threshold", "value_threshold", 0.1, 0.01, 2.0, 0.01),
        Option("distance_threshold", "distance_threshold", 0.1, 0.01, 20.0, 0.01))),
    AnnotatorTab("MIDAS Depth and Normal", "midas", lambda ann, img, alpha: list(ann.midas(img, alpha)), 384, (
        Option("alpha", "alpha", 6.2, 0.1, 20.0, 0.01),)),
    AnnotatorTab("Openpose", "openpose", lambda ann, img, hand: [ann.openpose(img, hand)[0]], options=(
        Option("hand", "detect hand", False),)),
    AnnotatorTab("Uniformer Segmentation", "uniformer", lambda ann, img: [ann.uniformer(img)]),
    # ControlNet 1.1 (upstream's 1.1 annotator app, plus the safe / scribble variants of its soft-edge apps)
    AnnotatorTab("Pidi Edge", "pidinet", lambda ann, img, safe: [ann.pidinet(img, safe)], options=(
        Option("safe", "safe (quantised)", False),)),
    AnnotatorTab("Scribble (PiDiNet + NMS)", "scribble_pidinet", lambda ann, img: [fake_scribble(ann.pidinet(img))]),
    AnnotatorTab("Lineart", "lineart", lambda ann, img, coarse: [ann.lineart(img, coarse)], options=(
        Option("coarse", "Using coarse model", False),)),
    AnnotatorTab("Lineart Anime", "lineart_anime", lambda ann, img: [ann.lineart_anime(img)]),
    AnnotatorTab("Normal Bae", "normalbae", lambda ann, img: [ann.normalbae(img)]),
    AnnotatorTab("Openpose (1.1, hand and face)", "openpose_full",
                 lambda ann, img, hand_and_face: [ann.openpose_full(img, hand_and_face)[0]], options=(
                     Option("hand_and_face", "Hand and Face", False),)),
    AnnotatorTab("Content Shuffle", "shuffle", lambda ann, img, seed: [ContentShuffleDetector()(img, seed=int(seed))],
                 options=(Option("seed", "seed", 12345, 0, 2147483647, 1),)),
    AnnotatorTab("Tile Resample", "tile_resample", lambda ann, img, rate: [tile_resample(img, rate)], options=(
        Option("rate", "down sampling rate", 1.0, 1.0, 8.0, 0.01),)),
)
