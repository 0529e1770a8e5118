"""UniFormer segmentation annotator: checkpoint contract, mmcv container loading, pipeline, end to end.

Random weights stand in for `upernet_global_small.pth`. End to end, the test-time resize target is shrunk so
the real architecture runs at 64 px instead of 512.
"""
import cv2
import numpy as np
import pytest
import torch

import annotator.uniformer as uniformer
from annotator.uniformer import WEIGHTS, UniformerDetector, net_input_size
from annotator.uniformer.palette import ADE20K_PALETTE
from annotator.uniformer.segmentor import UperNetUniFormer
from annotator.util import BadWeightsError, MissingWeightsError
from tests.annotator_weights import load_test_image, make_random_state_dict, make_random_weights, manifest


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uniformer_ckpts")
    make_random_weights(WEIGHTS, folder)  # mmcv container with num_batches_tracked, like the real file
    return folder


@pytest.fixture(scope="module")
def detector(weights_dir):
    return UniformerDetector(ckpt_dir=weights_dir)


@pytest.fixture
def small_net_input(monkeypatch):
    monkeypatch.setattr(uniformer, "MAX_LONG_SIDE", 256)
    monkeypatch.setattr(uniformer, "MAX_SHORT_SIDE", 64)


def test_state_dict_matches_manifest():
    with torch.device("meta"):
        net = UperNetUniFormer()
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == manifest(WEIGHTS)


def test_loads_mmcv_container_strictly(detector, weights_dir):
    saved = torch.load(weights_dir / WEIGHTS, weights_only=True)["state_dict"]
    params = detector.net.state_dict()
    for key in ("backbone.blocks3.7.attn.qkv.weight", "decode_head.bottleneck.bn.running_var",
                "auxiliary_head.conv_seg.weight"):
        assert torch.equal(params[key], saved[key])


@pytest.mark.parametrize("container, drop_nbt", [("mmcv", True), ("plain", False)])
def test_loads_other_containers(tmp_path, container, drop_nbt):
    make_random_weights(WEIGHTS, tmp_path, drop_num_batches_tracked=drop_nbt, container=container)
    net = UniformerDetector(ckpt_dir=tmp_path).net
    assert net.decode_head.conv_seg.weight.shape == (150, 512, 1, 1)


def test_strips_module_prefix(tmp_path):
    state = {f"module.{k}": v for k, v in make_random_state_dict(WEIGHTS).items()}
    torch.save({"state_dict": state, "meta": {}}, tmp_path / WEIGHTS)
    net = UniformerDetector(ckpt_dir=tmp_path).net
    assert torch.equal(net.backbone.norm4.bias, state["module.backbone.norm4.bias"])


def test_net_input_size_fits_2048_by_512():
    assert net_input_size(512, 512) == (512, 512)
    assert net_input_size(384, 512) == (683, 512)  # a 384-px input is upscaled to short side 512
    assert net_input_size(100, 10000) == (2048, 20)  # long side bound: 10000 * 0.2048, 100 * 0.2048 + 0.5


def test_pipeline_reverses_channels_and_paints_palette(detector, monkeypatch, small_net_input):
    seen = {}

    def fake_net(x):
        seen["x"] = x
        logits = torch.zeros(1, 150, *x.shape[-2:])
        logits[:, 48] = 1.0  # skyscraper everywhere
        return logits

    monkeypatch.setitem(detector.__dict__, "net", fake_net)
    img = np.zeros((40, 50, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30
    seg = detector(img)
    assert seen["x"].shape == (1, 3, 64, 80)
    expected = (np.array([30, 20, 10], np.float32) - uniformer.MEAN) * uniformer.INV_STD  # B, G, R order
    assert torch.equal(seen["x"][0, :, 0, 0], torch.from_numpy(expected))
    assert seg.shape == (40, 50, 3) and seg.dtype == np.uint8
    assert (seg == [140, 140, 140]).all()


def test_end_to_end_on_test_image(detector, small_net_input):
    img = cv2.resize(load_test_image("room.png", 512), (72, 48), interpolation=cv2.INTER_AREA)  # skips if absent
    seg = detector(img)
    assert seg.shape == (48, 72, 3) and seg.dtype == np.uint8
    colours = np.unique(seg.reshape(-1, 3), axis=0)
    assert len(colours) > 1
    assert all((ADE20K_PALETTE == c).all(axis=1).any() for c in colours)


def test_too_elongated_image_is_rejected(detector):
    with pytest.raises(ValueError, match="too elongated"):
        detector(np.zeros((1, 400, 3), np.uint8))


def test_missing_file(tmp_path):
    with pytest.raises(MissingWeightsError, match=WEIGHTS):
        UniformerDetector(ckpt_dir=tmp_path)(np.zeros((64, 64, 3), np.uint8))


def test_wrong_file_names_file_and_keys(tmp_path):
    path = make_random_weights("mlsd_large_512_fp32.pth", tmp_path)
    with pytest.raises(BadWeightsError) as err:
        UniformerDetector(weights=str(path)).net
    message = str(err.value)
    assert "\n" not in message and "mlsd_large_512_fp32.pth" in message
    assert "missing" in message and "auxiliary_head." in message and "unexpected" in message


def test_non_dict_file_is_rejected(tmp_path):
    torch.save([1, 2, 3], tmp_path / WEIGHTS)
    with pytest.raises(BadWeightsError, match=WEIGHTS):
        UniformerDetector(ckpt_dir=tmp_path).net


def test_decode_head_matches_transformers_upernet(weights_dir):
    """transformers' UperNetHead is an independent implementation of mmseg's UPerHead: outputs must agree."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.upernet.modeling_upernet import UperNetHead

    config = transformers.UperNetConfig(hidden_size=512, pool_scales=[1, 2, 3, 6], num_labels=150)
    with torch.device("meta"):
        reference = UperNetHead(config, in_channels=[64, 128, 320, 512])
        ours = UperNetUniFormer().decode_head
    prefix = "decode_head."
    saved = torch.load(weights_dir / WEIGHTS, weights_only=True, mmap=True)["state_dict"]
    state = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
    ours.load_state_dict(state, assign=True)
    renamed = {k.replace(".bn.", ".batch_norm.").replace("conv_seg.", "classifier."): v for k, v in state.items()}
    reference.load_state_dict(renamed, strict=True, assign=True)
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, ch, 24 // 2 ** i, 32 // 2 ** i, generator=gen) for i, ch in enumerate((64, 128, 320, 512))]
    with torch.inference_mode():
        torch.testing.assert_close(ours.eval()(feats), reference.eval()(feats))
