"""Seconds per image for each annotator on this machine, beside upstream's figures.

Random weights with the real files' layouts (`annotator/manifests`, `../shared/manifests/annotators`) are written to a
temporary folder and loaded through each detector's own loader; every annotator then runs on a 512x512
crop of a test image (MiDaS on 384x384, the annotator app's resolution). Reported: the medians of --runs
timed calls after one warm-up call (which also loads the weights), as wall-clock seconds and as this
process's CPU seconds. On a shared machine the wall time grows with the other load; with --threads 1 the
CPU time stays close to what an idle machine would show.

    python bench/bench_annotators.py [--threads 1] [--runs 3] [--only hed,mlsd] [--device cpu] [--dtype float32]
"""
import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.annotator_weights import TEST_IMGS, make_random_weights  # noqa: E402

# Builders take the detector keyword arguments (device, dtype, ckpt_dir) and return a callable on an RGB
# uint8 image; detectors are imported inside so a missing module only skips its own row.


def _canny(**_):
    from annotator.canny import CannyDetector
    return lambda img: CannyDetector()(img, 100, 200)


def _hed(weights="ControlNetHED.pth", **kwargs):
    from annotator.hed import HEDdetector
    return HEDdetector(weights, **kwargs)


def _hed_legacy(**kwargs):
    return _hed("network-bsds500.pth", **kwargs)


def _mlsd(**kwargs):
    from annotator.mlsd import MLSDdetector
    detector = MLSDdetector(**kwargs)
    return lambda img: detector(img, 0.1, 0.1)


def _midas(**kwargs):
    from annotator.midas import MidasDetector
    return MidasDetector(**kwargs)


def _openpose(**kwargs):
    from annotator.openpose import OpenposeDetector
    return OpenposeDetector(**kwargs)


def _uniformer(**kwargs):
    from annotator.uniformer import UniformerDetector
    return UniformerDetector(**kwargs)


def _pidinet(safe=False, **kwargs):
    from annotator.pidinet import PidiNetDetector
    detector = PidiNetDetector(**kwargs)
    return lambda img: detector(img, safe=safe)


def _scribble_pidinet(**kwargs):
    from annotator.scribble import fake_scribble
    detector = _pidinet(**kwargs)
    return lambda img: fake_scribble(detector(img))


def _lineart(coarse=False, **kwargs):
    from annotator.lineart import LineartDetector
    detector = LineartDetector(**kwargs)
    return lambda img: detector(img, coarse=coarse)


def _lineart_anime(**kwargs):
    from annotator.lineart_anime import LineartAnimeDetector
    return LineartAnimeDetector(**kwargs)


def _openpose_full(**kwargs):
    """1.1 OpenPose with hands and faces; random weights find arbitrary people, so the hand/face work
    varies: read this row as an order of magnitude."""
    from annotator.openpose.full import OpenposeFullDetector
    detector = OpenposeFullDetector(**kwargs)
    return lambda img: detector(img, hand_and_face=True)


def _openpose_v11_body(**kwargs):
    from annotator.openpose.full import OpenposeFullDetector
    detector = OpenposeFullDetector(**kwargs)
    return lambda img: detector(img, hand_and_face=False)


def _normalbae(**kwargs):
    from annotator.normalbae import NormalBaeDetector
    return NormalBaeDetector(**kwargs)


def _shuffle(**_):
    from annotator.shuffle import ContentShuffleDetector
    return lambda img: ContentShuffleDetector()(img, seed=0)


def _tile_resample(**_):
    from annotator.tile import tile_resample
    return lambda img: tile_resample(img, 2.0)


# name: (weight files, input side, upstream seconds per image as measured on this machine, builder)
ANNOTATORS = {
    "canny": ((), 512, "0.003", _canny),
    "hed": (("ControlNetHED.pth",), 512, "1.6", _hed),
    "hed_legacy": (("network-bsds500.pth",), 512, "1.6", _hed_legacy),
    "mlsd": (("mlsd_large_512_fp32.pth",), 512, "0.6", _mlsd),
    "midas": (("dpt_hybrid-midas-501f0c75.pt",), 384, "2.0-2.5", _midas),
    "openpose": (("body_pose_model.pth",), 512, "0.9-1.1", _openpose),
    "uniformer": (("upernet_global_small.pth",), 512, "4.4-4.9", _uniformer),
    # ControlNet 1.1 (no upstream figures measured here: "-")
    "pidinet": (("table5_pidinet.pth",), 512, "-", _pidinet),
    "scribble_pidinet": (("table5_pidinet.pth",), 512, "-", _scribble_pidinet),
    "lineart": (("sk_model.pth",), 512, "-", _lineart),
    "lineart_anime": (("netG.pth",), 512, "-", _lineart_anime),
    "openpose_v11": (("body_pose_model.pth",), 512, "-", _openpose_v11_body),
    "openpose_full": (("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"), 512, "-", _openpose_full),
    "normalbae": (("scannet.pt",), 512, "-", _normalbae),
    "shuffle": ((), 512, "-", _shuffle),
    "tile_resample": ((), 512, "-", _tile_resample),
}
MODULE_OF = {"midas": "annotator.midas", "uniformer": "annotator.uniformer"}  # written separately; may be absent


def square_test_image(side: int, name: str = "human.png") -> np.ndarray:
    """Centre square crop of a test image, resized to side x side, RGB uint8."""
    img = cv2.cvtColor(cv2.imread(str(TEST_IMGS / name)), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    s = min(h, w)
    crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)


def time_calls(fn, img, runs: int):
    """(median wall seconds, median CPU seconds) per call, after a warm-up call."""
    fn(img)  # warm-up: loads weights, primes oneDNN
    wall, cpu = [], []
    for _ in range(runs):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn(img)
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (machine is shared)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", help="comma-separated subset of: " + ", ".join(ANNOTATORS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    names = args.only.split(",") if args.only else list(ANNOTATORS)

    print(f"annotators, random weights, {args.device} {args.dtype}, {args.threads} thread(s), median of {args.runs}")
    print(f"{'annotator':<16} {'input':>9} {'ours wall (s)':>24} {'ours CPU (s)':>13} {'upstream (s)':>13}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-annotators-") as ckpts:
        for name in names:  # each row is printed as soon as it is measured
            files, side, upstream, build = ANNOTATORS[name]
            if name in MODULE_OF and importlib.util.find_spec(MODULE_OF[name]) is None:
                wall, cpu = "skipped (module missing)", ""
            else:
                for file in files:
                    make_random_weights(file, ckpts)
                detector = build(device=args.device, dtype=getattr(torch, args.dtype), ckpt_dir=ckpts)
                wall, cpu = (f"{t:.3f}" for t in time_calls(detector, square_test_image(side), args.runs))
                for file in files:  # keep the temporary folder small
                    (Path(ckpts) / file).unlink()
            print(f"{name:<16} {f'{side}x{side}':>9} {wall:>24} {cpu:>13} {upstream:>13}", flush=True)


if __name__ == "__main__":
    main()
