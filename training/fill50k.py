"""Generate the Fill50K toy data set of the ControlNet paper (section 4 / upstream ``docs/train.md``).

Each sample is a white circle outline on black (``source/N.png``, the control) and the same circle filled with
one CSS named colour on a background of another (``target/N.png``), with the prompt
``"<circle colour> circle with <background colour> background"``. ``prompt.json`` holds one JSON object per
line: ``{"source": "source/N.png", "target": "target/N.png", "prompt": ...}``.

Upstream ships the 50,000 images as a download; generating them makes any size and count reproducible.
Sample ``N`` depends only on ``(seed, N)``, so the output is the same for any number of workers.

    python -m training.fill50k --out training/fill50k --count 50000 --size 512 --seed 0
"""
import argparse
import json
import logging
import math
import multiprocessing
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterator, Tuple

import cv2
import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

RGB = Tuple[int, int, int]

# The CSS named colours (CSS Color Module Level 4), written as the lowercase words used in prompts.
# The "grey" spellings are left out: they duplicate the "gray" ones. aqua/cyan and fuchsia/magenta are
# kept as upstream's prompts use both; MIN_COLOR_DISTANCE keeps such twins from being paired.
COLORS: Dict[str, RGB] = {
    "alice blue": (240, 248, 255), "antique white": (250, 235, 215), "aqua": (0, 255, 255),
    "aquamarine": (127, 255, 212), "azure": (240, 255, 255), "beige": (245, 245, 220),
    "bisque": (255, 228, 196), "black": (0, 0, 0), "blanched almond": (255, 235, 205),
    "blue": (0, 0, 255), "blue violet": (138, 43, 226), "brown": (165, 42, 42),
    "burly wood": (222, 184, 135), "cadet blue": (95, 158, 160), "chartreuse": (127, 255, 0),
    "chocolate": (210, 105, 30), "coral": (255, 127, 80), "cornflower blue": (100, 149, 237),
    "cornsilk": (255, 248, 220), "crimson": (220, 20, 60), "cyan": (0, 255, 255),
    "dark blue": (0, 0, 139), "dark cyan": (0, 139, 139), "dark goldenrod": (184, 134, 11),
    "dark gray": (169, 169, 169), "dark green": (0, 100, 0), "dark khaki": (189, 183, 107),
    "dark magenta": (139, 0, 139), "dark olive green": (85, 107, 47), "dark orange": (255, 140, 0),
    "dark orchid": (153, 50, 204), "dark red": (139, 0, 0), "dark salmon": (233, 150, 122),
    "dark sea green": (143, 188, 143), "dark slate blue": (72, 61, 139), "dark slate gray": (47, 79, 79),
    "dark turquoise": (0, 206, 209), "dark violet": (148, 0, 211), "deep pink": (255, 20, 147),
    "deep sky blue": (0, 191, 255), "dim gray": (105, 105, 105), "dodger blue": (30, 144, 255),
    "firebrick": (178, 34, 34), "floral white": (255, 250, 240), "forest green": (34, 139, 34),
    "fuchsia": (255, 0, 255), "gainsboro": (220, 220, 220), "ghost white": (248, 248, 255),
    "gold": (255, 215, 0), "goldenrod": (218, 165, 32), "gray": (128, 128, 128),
    "green": (0, 128, 0), "green yellow": (173, 255, 47), "honeydew": (240, 255, 240),
    "hot pink": (255, 105, 180), "indian red": (205, 92, 92), "indigo": (75, 0, 130),
    "ivory": (255, 255, 240), "khaki": (240, 230, 140), "lavender": (230, 230, 250),
    "lavender blush": (255, 240, 245), "lawn green": (124, 252, 0), "lemon chiffon": (255, 250, 205),
    "light blue": (173, 216, 230), "light coral": (240, 128, 128), "light cyan": (224, 255, 255),
    "light goldenrod yellow": (250, 250, 210), "light gray": (211, 211, 211), "light green": (144, 238, 144),
    "light pink": (255, 182, 193), "light salmon": (255, 160, 122), "light sea green": (32, 178, 170),
    "light sky blue": (135, 206, 250), "light slate gray": (119, 136, 153), "light steel blue": (176, 196, 222),
    "light yellow": (255, 255, 224), "lime": (0, 255, 0), "lime green": (50, 205, 50),
    "linen": (250, 240, 230), "magenta": (255, 0, 255), "maroon": (128, 0, 0),
    "medium aquamarine": (102, 205, 170), "medium blue": (0, 0, 205), "medium orchid": (186, 85, 211),
    "medium purple": (147, 112, 219), "medium sea green": (60, 179, 113), "medium slate blue": (123, 104, 238),
    "medium spring green": (0, 250, 154), "medium turquoise": (72, 209, 204),
    "medium violet red": (199, 21, 133), "midnight blue": (25, 25, 112), "mint cream": (245, 255, 250),
    "misty rose": (255, 228, 225), "moccasin": (255, 228, 181), "navajo white": (255, 222, 173),
    "navy": (0, 0, 128), "old lace": (253, 245, 230), "olive": (128, 128, 0),
    "olive drab": (107, 142, 35), "orange": (255, 165, 0), "orange red": (255, 69, 0),
    "orchid": (218, 112, 214), "pale goldenrod": (238, 232, 170), "pale green": (152, 251, 152),
    "pale turquoise": (175, 238, 238), "pale violet red": (219, 112, 147), "papaya whip": (255, 239, 213),
    "peach puff": (255, 218, 185), "peru": (205, 133, 63), "pink": (255, 192, 203),
    "plum": (221, 160, 221), "powder blue": (176, 224, 230), "purple": (128, 0, 128),
    "rebecca purple": (102, 51, 153), "red": (255, 0, 0), "rosy brown": (188, 143, 143),
    "royal blue": (65, 105, 225), "saddle brown": (139, 69, 19), "salmon": (250, 128, 114),
    "sandy brown": (244, 164, 96), "sea green": (46, 139, 87), "seashell": (255, 245, 238),
    "sienna": (160, 82, 45), "silver": (192, 192, 192), "sky blue": (135, 206, 235),
    "slate blue": (106, 90, 205), "slate gray": (112, 128, 144), "snow": (255, 250, 250),
    "spring green": (0, 255, 127), "steel blue": (70, 130, 180), "tan": (210, 180, 140),
    "teal": (0, 128, 128), "thistle": (216, 191, 216), "tomato": (255, 99, 71),
    "turquoise": (64, 224, 208), "violet": (238, 130, 238), "wheat": (245, 222, 179),
    "white": (255, 255, 255), "white smoke": (245, 245, 245), "yellow": (255, 255, 0),
    "yellow green": (154, 205, 50),
}
COLOR_NAMES = tuple(COLORS)
# CSS keyword form ("mediumseagreen", also "grey" spellings) -> prompt form ("medium sea green").
_BY_KEYWORD = {name.replace(" ", ""): name for name in COLORS}
_BY_KEYWORD.update({k.replace("gray", "grey"): v for k, v in _BY_KEYWORD.items() if "gray" in k})

# Euclidean RGB distance below which two colours read as one (white vs snow is 7, red vs crimson 41).
MIN_COLOR_DISTANCE = 64.0
OUTLINE_PX_AT_512 = 3  # upstream's outlines are about 3 px wide at 512 px
MIN_RADIUS_FRACTION, MAX_RADIUS_FRACTION = 1 / 16, 1 / 2  # of the image size

_PROMPT = re.compile(r"^\s*(.+?)\s+circle\s+with\s+(.+?)\s+background\s*$")


@dataclass(frozen=True)
class Circle:
    """What one sample shows: pixel centre (x right, y down), radius, outline width and the two colours."""
    x: int
    y: int
    radius: int
    thickness: int
    color: str
    background: str

    @property
    def prompt(self) -> str:
        return f"{self.color} circle with {self.background} background"


def color_distance(a: RGB, b: RGB) -> float:
    return math.dist(a, b)


def color_rgb(name: str) -> RGB:
    """RGB of a colour given as prompt words or a CSS keyword ("medium sea green", "MediumSeaGreen")."""
    key = name.lower().replace(" ", "")
    if key not in _BY_KEYWORD:
        raise ValueError(f"unknown colour name: {name!r}")
    return COLORS[_BY_KEYWORD[key]]


def parse_prompt(prompt: str) -> Tuple[RGB, RGB]:
    """``"<a> circle with <b> background"`` -> (circle RGB, background RGB)."""
    match = _PROMPT.match(prompt.lower())
    if match is None:
        raise ValueError(f"not a Fill50K prompt: {prompt!r}")
    return color_rgb(match.group(1)), color_rgb(match.group(2))


def outline_thickness(size: int) -> int:
    return max(1, round(OUTLINE_PX_AT_512 * size / 512))


def sample_circle(index: int, size: int, seed: int) -> Circle:
    """Draw the parameters of sample ``index``: a function of ``(seed, index)`` only."""
    rng = np.random.default_rng([seed, index])
    x, y = (int(v) for v in rng.integers(0, size, 2))
    radius = int(rng.integers(max(1, round(size * MIN_RADIUS_FRACTION)), round(size * MAX_RADIUS_FRACTION) + 1))
    while True:  # rejection: about 7% of pairs are too close
        color, background = (COLOR_NAMES[i] for i in rng.choice(len(COLOR_NAMES), 2, replace=False))
        if color_distance(COLORS[color], COLORS[background]) >= MIN_COLOR_DISTANCE:
            return Circle(x, y, radius, outline_thickness(size), color, background)


def render(circle: Circle, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(source, target) as (size, size, 3) uint8 RGB: the outline on black and the filled circle."""
    source = np.zeros((size, size, 3), np.uint8)
    cv2.circle(source, (circle.x, circle.y), circle.radius, (255, 255, 255), circle.thickness, cv2.LINE_AA)
    target = np.empty((size, size, 3), np.uint8)
    target[:] = COLORS[circle.background]
    cv2.circle(target, (circle.x, circle.y), circle.radius, COLORS[circle.color], -1, cv2.LINE_AA)
    return source, target


def make_sample(index: int, size: int = 512, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, str, Circle]:
    """Sample ``index`` of the data set for ``seed``: (source RGB, target RGB, prompt, circle)."""
    circle = sample_circle(index, size, seed)
    source, target = render(circle, size)
    return source, target, circle.prompt, circle


def _write_sample(job: Tuple[str, int, int, int]) -> Dict[str, str]:
    out, index, size, seed = job
    source, target, prompt, _ = make_sample(index, size, seed)
    entry = {"source": f"source/{index}.png", "target": f"target/{index}.png", "prompt": prompt}
    for key, image in (("source", source), ("target", target)):
        if not cv2.imwrite(os.path.join(out, entry[key]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {os.path.join(out, entry[key])}")
    return entry


def generate(out: str, count: int, size: int = 512, seed: int = 0, workers: int = 1) -> str:
    """Write ``count`` samples and ``prompt.json`` under ``out``; returns the path of ``prompt.json``."""
    if count < 1 or size < 8:
        raise ValueError(f"need count >= 1 and size >= 8, got count={count}, size={size}")
    for sub in ("source", "target"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    jobs: Iterator = ((out, i, size, seed) for i in range(count))
    bar = dict(total=count, desc="fill50k", unit="img", smoothing=0.05)
    if workers <= 1:
        entries = [_write_sample(job) for job in tqdm(jobs, **bar)]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            chunk = max(1, min(256, count // (workers * 8)))
            entries = list(tqdm(pool.imap(_write_sample, jobs, chunksize=chunk), **bar))
    index_path = os.path.join(out, "prompt.json")
    tmp = index_path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(entry) + "\n" for entry in entries)
    os.replace(tmp, index_path)  # a half-written index never looks complete
    log.info("wrote %d samples of %dpx to %s", count, size, out)
    return index_path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="training/fill50k", help="output folder (default: %(default)s)")
    parser.add_argument("--count", type=int, default=50000, help="number of samples (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes (default: all cores, %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = generate(args.out, args.count, args.size, args.seed, args.workers)
    print(f"wrote {args.count} samples to {args.out} (index: {path})")


if __name__ == "__main__":
    main()
