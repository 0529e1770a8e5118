"""Annotate one image or a folder: `python -m annotator NAME INPUT OUTPUT_DIR [--resolution N] [...]`.

Each image is read as the apps receive it (RGB, alpha dropped, 16-bit reduced to 8-bit), resized with
`resize_image` to the resolution (defaults follow upstream's annotator app: 384 for M-LSD and MiDaS, 512
otherwise), annotated, and written as OUTPUT_DIR/<name>.png. Unreadable or unusable images are skipped
with a message and listed at the end; a missing or bad weight file stops the run. Exit status: 0 if at
least one image was annotated, 1 if none, 2 on a weight-file error.
"""
import argparse
import logging
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from annotator.util import BadWeightsError, HWC3, MissingWeightsError, resize_image

log = logging.getLogger("annotator")


# Each builder takes the parsed arguments and returns `annotate(rgb) -> map` (HxW or HxWx3 uint8 RGB).
# Detectors are imported inside the builders so only the requested one is loaded.

def _net_kwargs(args):
    return {"device": args.device, "dtype": getattr(torch, args.dtype), "ckpt_dir": args.ckpt_dir}


def _canny(args):
    from annotator.canny import CannyDetector
    detector = CannyDetector()
    return lambda img: detector(img, args.low, args.high)


def _hed(args, weights=None):
    from annotator.hed import HEDdetector
    return HEDdetector(weights or args.hed_weights, **_net_kwargs(args))


def _hed_legacy(args):
    from annotator.hed import LEGACY_WEIGHTS
    return _hed(args, LEGACY_WEIGHTS)


def _fake_scribble(args):
    from annotator.scribble import fake_scribble
    hed = _hed(args)
    return lambda img: fake_scribble(hed(img))


def _scribble(args):
    from annotator.scribble import scribble_map
    return scribble_map


def _mlsd(args):
    from annotator.mlsd import MLSDdetector
    detector = MLSDdetector(**_net_kwargs(args))
    return lambda img: detector(img, args.thr_v, args.thr_d)


def _openpose(args):
    from annotator.openpose import OpenposeDetector
    detector = OpenposeDetector(**_net_kwargs(args))
    return lambda img: detector(img, hand=args.hand)[0]


def _midas(args, output=0):
    from annotator.midas import MidasDetector
    detector = MidasDetector(**_net_kwargs(args))
    return lambda img: detector(img, a=args.a, bg_th=args.bg_th)[output]


def _normal(args):
    return _midas(args, output=1)


def _uniformer(args):
    from annotator.uniformer import UniformerDetector
    return UniformerDetector(**_net_kwargs(args))


ANNOTATORS = {  # name -> (builder, default resolution)
    "canny": (_canny, 512),
    "hed": (_hed, 512),
    "hed_legacy": (_hed_legacy, 512),
    "fake_scribble": (_fake_scribble, 512),
    "scribble": (_scribble, 512),
    "mlsd": (_mlsd, 384),
    "openpose": (_openpose, 512),
    "midas": (_midas, 384),
    "normal": (_normal, 384),
    "uniformer": (_uniformer, 512),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m annotator", description=__doc__.split("\n")[0])
    p.add_argument("name", choices=sorted(ANNOTATORS), help="annotator (midas = depth, uniformer = segmentation)")
    p.add_argument("input", type=Path, help="an image file or a folder of images (not recursive)")
    p.add_argument("output_dir", type=Path)
    p.add_argument("--resolution", type=int,
                   help="short side before annotation (default: 384 for mlsd/midas/normal, else 512)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--ckpt-dir", type=Path,
                   help="weight folder (default: $CONTROLNET_ANNOTATOR_CKPTS, else annotator/ckpts)")
    g = p.add_argument_group("detector options (defaults: upstream's annotator app)")
    g.add_argument("--low", type=int, default=100, help="canny low threshold")
    g.add_argument("--high", type=int, default=200, help="canny high threshold")
    g.add_argument("--hed-weights", default="ControlNetHED.pth", help="hed/fake_scribble weight file")
    g.add_argument("--thr-v", type=float, default=0.1, help="mlsd value threshold")
    g.add_argument("--thr-d", type=float, default=0.1, help="mlsd distance threshold")
    g.add_argument("--hand", action="store_true", help="openpose: also detect hands")
    g.add_argument("--a", type=float, default=6.2,
                   help=f"midas/normal: z component of the normals (detector default 2 pi = {2 * math.pi:.3f})")
    g.add_argument("--bg-th", type=float, default=0.1, help="midas/normal: background threshold")
    return p.parse_args(argv)


def read_rgb(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB, like the apps get it: EXIF orientation applied, alpha dropped,
    16-bit reduced to its top byte. ValueError if OpenCV cannot read it or its pixels are not 8/16-bit."""
    img = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise ValueError("not a readable image")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)  # what OpenCV's own 8-bit conversion does
    if img.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {img.dtype}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.ndim == 3 else HWC3(img)


def write_map(path: Path, annotation: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if annotation.ndim == 3:
        annotation = cv2.cvtColor(annotation, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), annotation):
        raise OSError(f"could not write {path}")


def list_inputs(path: Path) -> list:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"input {path} does not exist")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    builder, default_resolution = ANNOTATORS[args.name]
    resolution = args.resolution or default_resolution
    try:
        files = list_inputs(args.input)
    except FileNotFoundError as e:
        log.error(str(e))
        return 1
    annotate = builder(args)
    done, skipped = 0, []
    for path in tqdm(files, desc=args.name, unit="img", file=sys.stderr):
        try:
            annotation = annotate(resize_image(read_rgb(path), resolution))
        except (MissingWeightsError, BadWeightsError) as e:
            log.error(str(e))
            return 2
        except ValueError as e:
            skipped.append((path, str(e)))
            tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
            continue
        write_map(args.output_dir / f"{path.stem}.png", annotation)
        done += 1
    log.info("%s: annotated %d of %d file(s) into %s", args.name, done, len(files), args.output_dir)
    if skipped:
        log.info("skipped %d: %s", len(skipped), "; ".join(f"{p.name} ({why})" for p, why in skipped))
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
