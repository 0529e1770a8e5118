"""PiDiNet soft edges (table5_pidinet.pth), the 1.1 "safe" soft edges (PiDiNet, HED) and 1.1 scribbles."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from annotator.hed import HEDdetector
from annotator.pidinet import WEIGHTS, PidiNetDetector
from annotator.pidinet.model import PiDiNet, pixel_difference_kernel
from annotator.scribble import fake_scribble
from annotator.util import BadWeightsError, safe_step
from tests.annotator_weights import load_test_image, make_random_weights, manifest, random_ckpt_dir


def test_module_matches_the_real_layout():
    with torch.device("meta"):
        net = PiDiNet()
    assert {"module." + k: list(v.shape) for k, v in net.state_dict().items()} == manifest(WEIGHTS)


def _neighbours(x, pad):
    """(b, c, H, W) -> (b, c, k*k, H, W): the k x k neighbourhood of each pixel, zero outside."""
    k = 2 * pad + 1
    return F.unfold(F.pad(x, (pad,) * 4), k).view(x.shape[0], x.shape[1], k * k, *x.shape[2:])


@pytest.mark.parametrize("op", ["cv", "cd", "ad", "rd"])
def test_pixel_difference_kernels_compute_the_paper_differences(op):
    """Oracle: the differences written out per pixel (depthwise, one weight per tap)."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 2, 9, 11, generator=gen, dtype=torch.float64), torch.randn(2, 1, 3, 3, generator=gen,
                                                                                     dtype=torch.float64)
    kernel = pixel_difference_kernel(w, op)
    got = F.conv2d(x, kernel, padding=kernel.shape[-1] // 2, groups=2)
    wf = w.flatten(1)[:, :, None, None]  # (c, 9, 1, 1)
    if op == "rd":  # outer 5x5 ring minus the inner ring, along the 8 directions
        n = _neighbours(x, 2)[0]
        outer, inner = [0, 2, 4, 10, 14, 20, 22, 24], [6, 7, 8, 11, 13, 16, 17, 18]
        expected = ((n[:, outer] - n[:, inner]) * wf[:, 1:]).sum(1)
    else:
        n = _neighbours(x, 1)[0]
        if op == "cv":
            expected = (n * wf).sum(1)
        elif op == "cd":  # each tap minus the centre
            expected = ((n - n[:, 4:5]) * wf).sum(1)
        else:  # each tap minus its clockwise neighbour on the ring (centre - centre = 0)
            expected = ((n - n[:, [1, 2, 5, 0, 4, 8, 3, 6, 7]]) * wf).sum(1)
    torch.testing.assert_close(got[0], expected)


@pytest.fixture(scope="module")
def ckpts():
    return random_ckpt_dir(WEIGHTS, "ControlNetHED.pth")


def test_pidinet_end_to_end_deterministic_and_float64(ckpts):
    img = load_test_image("house.png", 64)
    detector = PidiNetDetector(ckpt_dir=ckpts)
    edge = detector(img)
    assert edge.shape == img.shape[:2] and edge.dtype == np.uint8
    assert len(np.unique(edge)) > 10
    assert (edge == detector(img)).all()
    precise = PidiNetDetector(ckpt_dir=ckpts, dtype=torch.float64)(img)
    assert np.abs(edge.astype(int) - precise).max() <= 1


def test_pidinet_loads_the_checkpoint_strictly(ckpts):
    state = torch.load(ckpts / WEIGHTS, weights_only=True)["state_dict"]
    net = PidiNetDetector(ckpt_dir=ckpts).net
    assert len(net.state_dict()) == len(state)
    for key, value in state.items():
        assert torch.equal(net.state_dict()[key[len("module."):]].cpu(), value), key


def test_pidinet_sees_bgr(ckpts):
    img = load_test_image("house.png", 64)
    detector = PidiNetDetector(ckpt_dir=ckpts)
    bgr01 = torch.from_numpy(img[:, :, ::-1].astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.inference_mode():
        expected = (detector.net(bgr01)[-1][0, 0].numpy() * 255).clip(0, 255).astype(np.uint8)
    assert (detector(img) == expected).all()


@pytest.mark.parametrize("make", [lambda d: PidiNetDetector(ckpt_dir=d), lambda d: HEDdetector(ckpt_dir=d)])
def test_safe_soft_edges_have_three_levels(ckpts, make):
    img = load_test_image("dog.png", 64)
    detector = make(ckpts)
    soft, safe = detector(img), detector(img, safe=True)
    assert set(np.unique(safe)) <= {0, 127, 255} and len(np.unique(safe)) >= 2
    # safe = quantised probability: thirds of the soft map, up to the uint8 truncation of the soft one
    expected = (safe_step(soft.astype(np.float32) / 255) * 255).clip(0, 255).astype(np.uint8)
    assert np.mean(safe != expected) < 0.02


def test_safe_step_levels():
    x = np.array([0.0, 0.33, 0.34, 0.66, 0.67, 0.99, 1.0], np.float32)
    assert safe_step(x).tolist() == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.5]


@pytest.mark.parametrize("make", [lambda d: PidiNetDetector(ckpt_dir=d), lambda d: HEDdetector(ckpt_dir=d)])
def test_scribbles_from_soft_edges_are_binary(ckpts, make):
    img = load_test_image("dog.png", 64)
    scribble = fake_scribble(make(ckpts)(img))
    assert scribble.shape == img.shape[:2] and set(np.unique(scribble)) <= {0, 255}


def test_hed_weights_given_to_pidinet_is_a_clear_error(tmp_path):
    make_random_weights("ControlNetHED.pth", tmp_path / WEIGHTS)
    with pytest.raises(BadWeightsError, match=r"^table5_pidinet\.pth is not a PiDiNet file: missing"):
        PidiNetDetector(ckpt_dir=tmp_path).net
