"""The ControlNet 1.1 apps (upstream ControlNet-v1-1-nightly's `gradio_<name>.py`) as data: one `AppV11` each.

What 1.1 changed against the 1.0 apps, carried over from upstream's scripts: a "Preprocessor" radio whose
"None" feeds the upload itself (already a map) to the ControlNet, a "Preprocessor Resolution" slider, seed
12345, DDIM eta 1.0, added prompt `best quality`, negative prompt `lowres, bad anatomy, bad hands, cropped,
worst quality`, and every detected map resized to the output size bilinearly. Per model: lineart (and anime)
feed the ControlNet `1 - map`; scribble thins any map (NMS, blur, threshold); tile's control is the image
shrunk to 1/8 and enlarged by three `pyrUp`s, and it samples img2img from the image; inpaint's control is the
image with the masked pixels at -1. Preprocessors upstream has but this project has not (Zoe depth,
OneFormer segmentation) are left out of the radios.
"""
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import cv2
import numpy as np

from annotator.scribble import fake_scribble
from annotator.shuffle import ContentShuffleDetector
from annotator.util import HWC3, resize_image
from cldm.app.tasks import Option

NONE = "None"  # the radio choice that takes the upload as the map
ADDED_PROMPT = "best quality"
NEGATIVE_PROMPT = "lowres, bad anatomy, bad hands, cropped, worst quality"
SEED = 12345
ETA = 1.0
TILE_SHRINK_STEPS = 3  # tile: 1/8 of the output size, then three pyrUp doublings back


@dataclass(frozen=True)
class Preprocessor:
    """One radio choice: detect(annotators, image at the preprocessor resolution, **app options) -> map."""
    label: str  # upstream's choice name, e.g. "Canny", "SoftEdge_PIDI_safe"
    detect: Callable[..., np.ndarray]


@dataclass(frozen=True)
class AppV11:
    """One 1.1 app: what it detects, how its map becomes the control, and its upstream defaults.

    kind: "txt2img"; "img2img" (tile: the image is also the init, with a Denoising Strength); "inpaint" (a
    sketch mask on the image).
    """
    name: str  # gradio_<name>_v11.py
    title: str
    checkpoint: str  # the 1.1 file's stem in the models folder, e.g. control_v11p_sd15_canny
    preprocessors: Tuple[Preprocessor, ...] = ()  # the radio also offers NONE
    default: str = ""  # the radio's initial choice; default: the first preprocessor
    options: Tuple[Option, ...] = ()
    raw_map: Optional[Callable[[np.ndarray], np.ndarray]] = None  # NONE: the fitted input -> map (default as is)
    thin: bool = False  # scribble: every map (NONE too) thinned by NMS, blurred and thresholded
    invert_control: bool = False  # lineart: the ControlNet sees 255 - map
    kind: str = "txt2img"
    max_resolution: int = 768
    steps: int = 20
    added_prompt: str = ADDED_PROMPT
    negative_prompt: str = NEGATIVE_PROMPT
    detect_resolution: bool = True  # shows the "Preprocessor Resolution" slider
    seeded: bool = False  # the detector takes the request's seed (shuffle)

    @property
    def choices(self) -> Tuple[str, ...]:
        return tuple(p.label for p in self.preprocessors) + (NONE,)

    @property
    def default_choice(self) -> str:
        return self.default or self.choices[0]

    def default_options(self) -> dict:
        return {o.key: o.value for o in self.options}

    def make_map(self, annotators, image: np.ndarray, choice: str, detect_resolution: int, seed: int = 0,
                 **options) -> np.ndarray:
        """The (H, W, 3) uint8 map at `image`'s size (the input fitted to the output) for radio `choice`."""
        h, w = image.shape[:2]
        if choice == NONE:
            found = (self.raw_map or (lambda x: x))(image)
        else:
            by_label = {p.label: p for p in self.preprocessors}
            if choice not in by_label:
                raise ValueError(f"unknown preprocessor {choice!r}: choose one of {', '.join(self.choices)}")
            if self.seeded:
                options = {**options, "seed": seed}
            found = by_label[choice].detect(annotators, resize_image(image, int(detect_resolution)), **options)
        found = cv2.resize(HWC3(found), (w, h), interpolation=cv2.INTER_LINEAR)
        return HWC3(fake_scribble(found[:, :, 0])) if self.thin else found

    def control(self, control_map: np.ndarray) -> np.ndarray:
        """The map as the ControlNet must see it."""
        return 255 - control_map if self.invert_control else control_map


def tile_control(image: np.ndarray) -> np.ndarray:
    """Upstream 1.1 tile's control: the image area-shrunk to 1/8 of its size, then doubled by pyrUp three times."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (w >> TILE_SHRINK_STEPS, h >> TILE_SHRINK_STEPS), interpolation=cv2.INTER_AREA)
    for _ in range(TILE_SHRINK_STEPS):
        small = cv2.pyrUp(small)
    return small


def _shuffle(ann, img, seed):
    """1.1 shuffle draws its flow after `np.random.seed(seed)`: the request's seed."""
    return ContentShuffleDetector()(img, seed=int(seed))


THRESHOLDS = (Option("low_threshold", "Canny low threshold", 100, 1, 255, 1),
              Option("high_threshold", "Canny high threshold", 200, 1, 255, 1))
MLSD_THRESHOLDS = (Option("value_threshold", "Hough value threshold (MLSD)", 0.1, 0.01, 2.0, 0.01),
                   Option("distance_threshold", "Hough distance threshold (MLSD)", 0.1, 0.01, 20.0, 0.01))
DENOISE = Option("denoise_strength", "Denoising Strength", 1.0, 0.1, 1.0, 0.01)
MASK_BLUR = Option("mask_blur", "Mask Blur", 5.0, 0.1, 7.0, 0.01)

V11_APPS = {a.name: a for a in (
    AppV11("canny", "Control Stable Diffusion with Canny Edges (ControlNet 1.1)", "control_v11p_sd15_canny", (
        Preprocessor("Canny", lambda ann, img, low_threshold, high_threshold: ann.canny(
            img, low_threshold, high_threshold)),), options=THRESHOLDS),
    AppV11("mlsd", "Control Stable Diffusion with MLSD Lines (ControlNet 1.1)", "control_v11p_sd15_mlsd", (
        Preprocessor("MLSD", lambda ann, img, value_threshold, distance_threshold: ann.mlsd(
            img, value_threshold, distance_threshold)),), options=MLSD_THRESHOLDS),
    AppV11("depth", "Control Stable Diffusion with Depth Maps (ControlNet 1.1)", "control_v11f1p_sd15_depth", (
        Preprocessor("Depth_Midas", lambda ann, img: ann.midas(img)[0]),)),
    AppV11("normalbae", "Control Stable Diffusion with Normal Maps (ControlNet 1.1)", "control_v11p_sd15_normalbae", (
        Preprocessor("Normal_BAE", lambda ann, img: ann.normalbae(img)),)),
    AppV11("seg", "Control Stable Diffusion with Semantic Segmentation (ControlNet 1.1)", "control_v11p_sd15_seg", (
        Preprocessor("Seg_UFADE20K", lambda ann, img: ann.uniformer(img)),)),
    AppV11("inpaint", "Control Stable Diffusion with Inpaint Mask (ControlNet 1.1)", "control_v11p_sd15_inpaint",
           options=(MASK_BLUR,), kind="inpaint", detect_resolution=False),
    AppV11("lineart", "Control Stable Diffusion with Lineart (ControlNet 1.1)", "control_v11p_sd15_lineart", (
        Preprocessor("Lineart", lambda ann, img: ann.lineart(img)),
        Preprocessor("Lineart_Coarse", lambda ann, img: ann.lineart(img, True))), invert_control=True),
    AppV11("lineart_anime", "Control Anything V3 with Anime Lineart (ControlNet 1.1)",
           "control_v11p_sd15s2_lineart_anime",
           (Preprocessor("Lineart_Anime", lambda ann, img: ann.lineart_anime(img)),),
           default=NONE, invert_control=True, max_resolution=2048,
           added_prompt="masterpiece, best quality, ultra-detailed, illustration, disheveled hair",
           negative_prompt="longbody, lowres, bad anatomy, bad hands, missing fingers, pubic hair,extra digit, "
                           "fewer digits, cropped, worst quality, low quality"),
    AppV11("openpose", "Control Stable Diffusion with OpenPose (ControlNet 1.1)", "control_v11p_sd15_openpose", (
        Preprocessor("Openpose_Full", lambda ann, img: ann.openpose_full(img, True)[0]),
        Preprocessor("Openpose", lambda ann, img: ann.openpose_full(img, False)[0]))),
    AppV11("scribble", "Control Stable Diffusion with Synthesized Scribble (ControlNet 1.1)",
           "control_v11p_sd15_scribble", (Preprocessor("Scribble_HED", lambda ann, img: ann.hed(img)),
                                          Preprocessor("Scribble_PIDI", lambda ann, img: ann.pidinet(img))), thin=True),
    AppV11("softedge", "Control Stable Diffusion with Soft Edge (ControlNet 1.1)", "control_v11p_sd15_softedge", (
        Preprocessor("SoftEdge_PIDI", lambda ann, img: ann.pidinet(img)),
        Preprocessor("SoftEdge_PIDI_safe", lambda ann, img: ann.pidinet(img, True)),
        Preprocessor("SoftEdge_HED", lambda ann, img: ann.hed(img)),
        Preprocessor("SoftEdge_HED_safe", lambda ann, img: ann.hed(img, True)))),
    AppV11("shuffle", "Control Stable Diffusion with Content Shuffle (ControlNet 1.1)", "control_v11e_sd15_shuffle",
           (Preprocessor("Shuffle", _shuffle),), default=NONE, detect_resolution=False, seeded=True),
    AppV11("ip2p", "Control Stable Diffusion with Instruct Pix2Pix (ControlNet 1.1)", "control_v11e_sd15_ip2p",
           detect_resolution=False),
    AppV11("tile", "Control Stable Diffusion with Tile (ControlNet 1.1)", "control_v11f1e_sd15_tile",
           options=(DENOISE,), raw_map=tile_control, kind="img2img", max_resolution=2048, steps=32,
           negative_prompt="blur, " + NEGATIVE_PROMPT, detect_resolution=False),
)}
