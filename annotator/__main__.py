"""Annotate one image or a folder: `python -m annotator NAME[,NAME...|all] INPUT OUTPUT_DIR [--resolution N] [...]`.

Each image is read as the apps receive it (RGB, alpha dropped, 16-bit reduced to 8-bit), resized with
`resize_image` to the resolution (defaults follow upstream's annotator apps: 384 for M-LSD and MiDaS, 512
otherwise), annotated, and written as OUTPUT_DIR/<stem>.png (OUTPUT_DIR/<annotator>/<stem>.png when several
annotators run; `all` runs every one). Runs are resumable: a map already written is skipped (`--overwrite`
redoes it), and maps are written atomically, so an interrupted run leaves no half-written file. An output
that would replace its own input is refused. Unreadable or unusable images are skipped with a message and
listed at the end; a missing or bad weight file stops that annotator (the others still run). Exit status:
2 if a weight file was missing or bad, else 0 if each annotator has maps (new or from before), else 1.
"""
import argparse
import logging
import math
import os
import sys
import tempfile
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


# ControlNet 1.1 preprocessors

def _hed_safe(args):
    hed = _hed(args)
    return lambda img: hed(img, safe=True)


def _pidinet(args, safe=False):
    from annotator.pidinet import PidiNetDetector
    detector = PidiNetDetector(**_net_kwargs(args))
    return lambda img: detector(img, safe=safe)


def _pidinet_safe(args):
    return _pidinet(args, safe=True)


def _scribble_of(edges):
    from annotator.scribble import fake_scribble
    return lambda img: fake_scribble(edges(img))


def _scribble_hed(args):
    return _scribble_of(_hed(args))


def _scribble_pidinet(args):
    return _scribble_of(_pidinet(args))


def _lineart(args, coarse=False):
    from annotator.lineart import LineartDetector
    detector = LineartDetector(**_net_kwargs(args))
    return lambda img: detector(img, coarse=coarse)


def _lineart_coarse(args):
    return _lineart(args, coarse=True)


def _lineart_anime(args):
    from annotator.lineart_anime import LineartAnimeDetector
    return LineartAnimeDetector(**_net_kwargs(args))


def _openpose_full(args, hand_and_face=True):
    from annotator.openpose.full import OpenposeFullDetector
    detector = OpenposeFullDetector(**_net_kwargs(args))
    return lambda img: detector(img, hand_and_face=hand_and_face)[0]


def _openpose_v11(args):
    return _openpose_full(args, hand_and_face=False)


def _shuffle(args):
    from annotator.shuffle import ContentShuffleDetector
    detector = ContentShuffleDetector()
    return lambda img: detector(img, seed=args.seed)


def _tile_resample(args):
    from annotator.tile import tile_resample
    return lambda img: tile_resample(img, args.rate)


def _tile_blur(args):
    from annotator.tile import tile_blur
    return lambda img: tile_blur(img, args.sigma)


def _normalbae(args):
    from annotator.normalbae import NormalBaeDetector
    return NormalBaeDetector(**_net_kwargs(args))


def _ip2p(args):
    return lambda img: img  # instruct-pix2pix takes the image itself


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
    # ControlNet 1.1
    "hed_safe": (_hed_safe, 512),
    "pidinet": (_pidinet, 512),
    "pidinet_safe": (_pidinet_safe, 512),
    "scribble_hed": (_scribble_hed, 512),
    "scribble_pidinet": (_scribble_pidinet, 512),
    "lineart": (_lineart, 512),
    "lineart_coarse": (_lineart_coarse, 512),
    "lineart_anime": (_lineart_anime, 512),
    "openpose_v11": (_openpose_v11, 512),
    "openpose_full": (_openpose_full, 512),
    "normalbae": (_normalbae, 512),
    "shuffle": (_shuffle, 512),
    "tile_resample": (_tile_resample, 512),
    "tile_blur": (_tile_blur, 512),
    "ip2p": (_ip2p, 512),
}


def annotator_names(spec: str) -> list:
    """'all', one name or a comma-separated list -> names, each checked."""
    names = list(ANNOTATORS) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in ANNOTATORS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown annotator {', '.join(unknown) or repr(spec)}: "
                                         f"choose from all, {', '.join(ANNOTATORS)}")
    return names


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m annotator", description=__doc__.split("\n")[0])
    p.add_argument("names", type=annotator_names, metavar="NAME",
                   help="annotator, comma-separated annotators or 'all' (midas = depth, uniformer = segmentation): "
                        + ", ".join(ANNOTATORS))
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
    g.add_argument("--seed", type=int, default=12345, help="shuffle: seed of the random flow (same for each image)")
    g.add_argument("--rate", type=float, default=2.0, help="tile_resample: down-sampling rate")
    g.add_argument("--sigma", type=float, default=5.0, help="tile_blur: Gaussian sigma in px")
    p.add_argument("--overwrite", action="store_true", help="redo maps that already exist (default: skip them)")
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
    """Write a PNG atomically (a temporary file in the same folder, then renamed over `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if annotation.ndim == 3:
        annotation = cv2.cvtColor(annotation, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", annotation)
    if not ok:
        raise OSError(f"could not encode the map for {path}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png.part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.tobytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_inputs(path: Path) -> list:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"input {path} does not exist")


def run_annotator(name: str, args, files: list, output_dir: Path) -> int:
    """Annotate `files` into `output_dir` with annotator `name`; the exit status of that part (see the module doc)."""
    builder, default_resolution = ANNOTATORS[name]
    resolution = args.resolution or default_resolution
    annotate = builder(args)
    done, already, skipped = 0, 0, []
    for path in tqdm(files, desc=name, unit="img", file=sys.stderr):
        out = output_dir / f"{path.stem}.png"
        if out.resolve() == path.resolve():
            skipped.append((path, "the map would replace the input: choose another output folder"))
            tqdm.write(f"skipped {path}: {skipped[-1][1]}", file=sys.stderr)
            continue
        if out.exists() and not args.overwrite:
            already += 1
            continue
        try:
            annotation = annotate(resize_image(read_rgb(path), resolution))
        except (MissingWeightsError, BadWeightsError) as e:
            log.error("%s: %s", name, e)
            return 2
        except ValueError as e:
            skipped.append((path, str(e)))
            tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
            continue
        write_map(out, annotation)
        done += 1
    log.info("%s: annotated %d of %d file(s) into %s%s", name, done, len(files), output_dir,
             f" ({already} already done)" if already else "")
    if skipped:
        log.info("skipped %d: %s", len(skipped), "; ".join(f"{p.name} ({why})" for p, why in skipped))
    return 0 if done or already else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        files = list_inputs(args.input)
    except FileNotFoundError as e:
        log.error(str(e))
        return 1
    several = len(args.names) > 1
    status = [run_annotator(name, args, files, args.output_dir / name if several else args.output_dir)
              for name in args.names]
    return 2 if 2 in status else max(status)


if __name__ == "__main__":
    sys.exit(main())
