"""NormalBAE (scannet.pt) without timm: the EfficientNet-B5 backbone's layout and padding, the detector."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from annotator.normalbae import WEIGHTS, NormalBaeDetector
from annotator.normalbae.efficientnet import Conv2dSame, EfficientNetB5
from annotator.normalbae.model import NormalBAE
from annotator.util import BadWeightsError
from tests.annotator_weights import load_test_image, make_random_weights, manifest, random_ckpt_dir


def test_module_matches_the_real_layout():
    with torch.device("meta"):
        net = NormalBAE()
    assert {"module." + k: list(v.shape) for k, v in net.state_dict().items()} == manifest(WEIGHTS)


def test_b5_widths_and_depths():
    with torch.device("meta"):
        net = EfficientNetB5()
    assert net.conv_stem.out_channels == 48 and net.conv_head.out_channels == 2048
    assert [len(stage) for stage in net.blocks] == [3, 5, 5, 7, 7, 9, 3]
    assert [stage[-1].bn2.num_features if i == 0 else stage[-1].bn3.num_features
            for i, stage in enumerate(net.blocks)] == [24, 40, 64, 128, 176, 304, 512]
    assert net.bn1.eps == 1e-3


@pytest.mark.parametrize("size, kernel, stride, pads", [(7, 3, 2, (1, 1)), (8, 3, 2, (0, 1)), (8, 5, 2, (1, 2)),
                                                        (9, 5, 1, (2, 2))])
def test_tensorflow_same_padding(size, kernel, stride, pads):
    """TF 'SAME': output ceil(size / stride); the odd padding pixel goes to the bottom/right."""
    conv = Conv2dSame(2, 3, kernel, stride)
    x = torch.randn(1, 2, size, size + 1)
    wpad = max((-(-(size + 1) // stride) - 1) * stride + kernel - size - 1, 0)
    expected = F.conv2d(F.pad(x, (wpad // 2, wpad - wpad // 2, *pads)), conv.weight, stride=stride)
    out = conv(x)
    assert out.shape[-2:] == (-(-size // stride), -(-(size + 1) // stride))
    torch.testing.assert_close(out, expected)


@pytest.fixture(scope="module")
def ckpts():
    return random_ckpt_dir(WEIGHTS)


def _decoded(normal_map):
    return normal_map.astype(np.float64) / 255 * 2 - 1


def test_normalbae_end_to_end_unit_normals_deterministic_float64(ckpts):
    img = load_test_image("room.png", 64)
    detector = NormalBaeDetector(ckpt_dir=ckpts)
    normal = detector(img)
    assert normal.shape == img.shape and normal.dtype == np.uint8
    assert len(np.unique(normal.reshape(-1, 3), axis=0)) > 10
    assert np.abs(np.linalg.norm(_decoded(normal), axis=2) - 1).max() < 0.03  # unit vectors, up to 8-bit steps
    assert (normal == detector(img)).all()
    precise = NormalBaeDetector(ckpt_dir=ckpts, dtype=torch.float64)(img)
    assert np.abs(normal.astype(int) - precise).max() <= 2


def test_normalbae_odd_sizes_come_back_at_their_size(ckpts):
    img = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    assert NormalBaeDetector(ckpt_dir=ckpts)(img).shape == (40, 70, 3)


@pytest.mark.parametrize("wrap", ["model", "bare"])
def test_normalbae_loads_the_checkpoint_or_a_bare_state_dict(ckpts, tmp_path, wrap):
    checkpoint = torch.load(ckpts / WEIGHTS, weights_only=True)
    assert set(checkpoint) == {"model"}
    state = checkpoint["model"] if wrap == "model" else {k[len("module."):]: v for k, v in checkpoint["model"].items()}
    torch.save(checkpoint if wrap == "model" else state, tmp_path / WEIGHTS)
    net = NormalBaeDetector(ckpt_dir=tmp_path).net
    key = "encoder.original_model.blocks.3.2.conv_dw.weight"
    assert torch.equal(net.state_dict()[key], state[("module." if wrap == "model" else "") + key])
    assert len(net.state_dict()) == len(state)


def test_pidinet_weights_given_to_normalbae_is_a_clear_error(tmp_path):
    make_random_weights("table5_pidinet.pth", tmp_path / WEIGHTS)
    with pytest.raises(BadWeightsError, match=r"^scannet\.pt is not a NormalBAE \(scannet\) file: missing"):
        NormalBaeDetector(ckpt_dir=tmp_path).net
