"""Detectors follow the device and dtype they are given (CUDA cases skip on machines without a GPU)."""
import numpy as np
import pytest
import torch

from annotator.hed import LEGACY_WEIGHTS, HEDdetector
from annotator.mlsd import MLSDdetector
from annotator.openpose import OpenposeDetector
from tests.annotator_weights import load_test_image, random_ckpt_dir

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
EDGE_FILES = ("ControlNetHED.pth", LEGACY_WEIGHTS, "mlsd_large_512_fp32.pth")


def _run_all(device, dtype, with_pose=True):
    ckpts = random_ckpt_dir(*EDGE_FILES, *(("body_pose_model.pth",) if with_pose else ()))
    img = load_test_image("human.png", 64)
    kwargs = {"device": device, "dtype": dtype, "ckpt_dir": ckpts}
    maps = [HEDdetector(**kwargs)(img), HEDdetector(LEGACY_WEIGHTS, **kwargs)(img), MLSDdetector(**kwargs)(img, 0, 0)]
    if with_pose:
        maps.append(OpenposeDetector(**kwargs)(img)[0])
    for m in maps:
        assert m.dtype == np.uint8 and m.shape[:2] == img.shape[:2]
    return maps


def test_bfloat16_on_cpu():
    _run_all("cpu", torch.bfloat16, with_pose=False)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_cpu(dtype):
    cpu, gpu = _run_all("cpu", torch.float32), _run_all("cuda", dtype)
    for a, b in zip(cpu, gpu):
        assert np.mean(a != b) < (0.01 if dtype == torch.float32 else 0.1)


# ControlNet 1.1 detectors
V11_FILES = ("sk_model.pth", "table5_pidinet.pth", "scannet.pt", "netG.pth")


def _run_v11(device, dtype):
    from annotator.lineart import LineartDetector
    from annotator.lineart_anime import LineartAnimeDetector
    from annotator.normalbae import NormalBaeDetector
    from annotator.pidinet import PidiNetDetector
    ckpts = random_ckpt_dir(*V11_FILES)
    img = load_test_image("human.png", 64)
    kwargs = {"device": device, "dtype": dtype, "ckpt_dir": ckpts}
    maps = [LineartDetector(**kwargs)(img), LineartAnimeDetector(**kwargs)(img), PidiNetDetector(**kwargs)(img),
            NormalBaeDetector(**kwargs)(img)]
    for m in maps:
        assert m.dtype == np.uint8 and m.shape[:2] == img.shape[:2]
    return maps


def test_v11_bfloat16_on_cpu_is_close_to_float32():
    for a, b in zip(_run_v11("cpu", torch.float32), _run_v11("cpu", torch.bfloat16)):
        assert np.abs(a.astype(int) - b).mean() < 12  # bf16 keeps 8 bits of mantissa


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_v11_cuda_matches_cpu(dtype):
    for a, b in zip(_run_v11("cpu", torch.float32), _run_v11("cuda", dtype)):
        assert np.abs(a.astype(int) - b).mean() < (1 if dtype == torch.float32 else 6)
