"""annotator.util: HWC3, resize_image, checkpoint lookup and the one-line weight errors; banned imports."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from annotator import util
from annotator.util import (CKPT_ENV_VAR, BadWeightsError, HWC3, MissingWeightsError, annotator_ckpt_dir,
                            ckpt_path, fold_batchnorm, load_checkpoint, load_state_dict_strict, resize_image)


# ------------------------------------------------------------------------------------------------ HWC3

def test_hwc3_grey_and_single_channel_repeat():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for img in (grey, grey[:, :, None]):
        out = HWC3(img)
        assert out.shape == (3, 4, 3) and out.dtype == np.uint8
        assert all((out[:, :, c] == grey).all() for c in range(3))


def test_hwc3_rgb_is_returned_unchanged():
    rgb = np.zeros((2, 2, 3), np.uint8)
    assert HWC3(rgb) is rgb


def test_hwc3_rgba_is_composited_on_white():
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [100, 0, 200, 51]]], np.uint8)
    out = HWC3(rgba)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [10, 20, 30]
    a = np.float32(51) / np.float32(255)
    expected = (np.array([100, 0, 200], np.float32) * a + np.float32(255) * (np.float32(1) - a)).astype(np.uint8)
    assert out[0, 2].tolist() == expected.tolist()  # float32 maths, truncated


@pytest.mark.parametrize("img", [np.zeros((2, 2, 3), np.uint16), np.zeros((2, 2, 3), np.float32),
                                 np.zeros((2, 2, 5), np.uint8), np.zeros((2,), np.uint8), [[1, 2]]])
def test_hwc3_rejects_other_types_and_shapes(img):
    with pytest.raises(ValueError, match="expected"):
        HWC3(img)


# ------------------------------------------------------------------------------------------ resize_image

@pytest.mark.parametrize("shape, resolution, expected", [
    ((200, 224, 3), 200, (192, 256)),  # 224/64 = 3.5 -> 4 (half to even, up)
    ((200, 288, 3), 200, (192, 256)),  # 288/64 = 4.5 -> 4 (half to even, down; round-half-up gives 320)
    ((100, 150, 3), 512, (512, 768)),
    ((501, 563, 3), 512, (512, 576)),
])
def test_resize_image_rounds_each_side_to_64_half_to_even(shape, resolution, expected):
    assert resize_image(np.zeros(shape, np.uint8), resolution).shape[:2] == expected


def test_resize_image_interpolation_lanczos_up_area_down_and_equal():
    import cv2
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    assert (resize_image(img, 128) == cv2.resize(img, (192, 128), interpolation=cv2.INTER_LANCZOS4)).all()
    big = rng.integers(0, 256, (128, 200, 3), dtype=np.uint8)
    for res in (64, 128):  # k < 1 and k == 1 both use INTER_AREA
        h, w = resize_image(big, res).shape[:2]
        assert (resize_image(big, res) == cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)).all()


@pytest.mark.parametrize("shape, resolution", [((0, 10, 3), 64), ((10, 0, 3), 64), ((10, 10, 3), 16)])
def test_resize_image_empty_or_degenerate_is_a_value_error(shape, resolution):
    with pytest.raises(ValueError):
        resize_image(np.zeros(shape, np.uint8), resolution)


# ------------------------------------------------------------------------------------------ checkpoints

def test_ckpt_dir_env_var_and_default(monkeypatch, tmp_path):
    monkeypatch.delenv(CKPT_ENV_VAR, raising=False)
    assert annotator_ckpt_dir() == util.DEFAULT_CKPT_DIR
    assert util.DEFAULT_CKPT_DIR.parts[-2:] == ("annotator", "ckpts")
    monkeypatch.setenv(CKPT_ENV_VAR, str(tmp_path))
    assert ckpt_path("x.pth") == tmp_path / "x.pth"
    assert ckpt_path("x.pth", ckpt_dir=tmp_path / "other") == tmp_path / "other" / "x.pth"


def test_every_manifest_file_has_a_url():
    """Both manifest folders are in the repository: 1.0 files (tests/manifests) and 1.1 ones (annotator/)."""
    from tests.annotator_weights import MANIFEST_DIR, REPO_MANIFEST_DIR
    import json
    index = {}
    for folder in (MANIFEST_DIR, REPO_MANIFEST_DIR):
        index |= json.loads((folder / "index.json").read_text())
    assert {k: v["url"] for k, v in index.items() if not k.startswith("_")} == util.CKPT_URLS


def test_missing_file_message_has_name_path_and_url(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        load_checkpoint("body_pose_model.pth", ckpt_dir=tmp_path)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError) and "\n" not in message
    assert "body_pose_model.pth" in message and str(tmp_path / "body_pose_model.pth") in message
    assert util.CKPT_URLS["body_pose_model.pth"] in message


@pytest.mark.parametrize("name, content", [("hed.pth", b""), ("hed.pth", b"not a checkpoint at all" * 10),
                                           ("hed.pth", "truncated"), ("hed.safetensors", b"garbage" * 10)])
def test_corrupted_file_is_one_line_bad_weights_error(tmp_path, name, content):
    if content == "truncated":
        torch.save({"w": torch.zeros(1000)}, tmp_path / "full.pth")
        content = (tmp_path / "full.pth").read_bytes()[:2000]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BadWeightsError, match=rf"^{name} is corrupted") as err:
        load_checkpoint(name, ckpt_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_safetensors_and_pth_load_the_same(tmp_path):
    from safetensors.torch import save_file
    state = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        loaded = load_checkpoint(name, "cpu", tmp_path)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)


def test_strict_load_reports_missing_unexpected_and_shapes():
    good = _Tiny().state_dict()
    with pytest.raises(BadWeightsError, match=r"^x\.pth is not a tiny file: missing conv\.bias, conv\.weight; "
                                              r"unexpected other\.weight$"):
        load_state_dict_strict(_Tiny(), {"other.weight": torch.zeros(1), **{k: v for k, v in good.items()
                                                                            if not k.startswith("conv")}},
                               "x.pth", "tiny")
    with pytest.raises(BadWeightsError, match=r"wrong shape conv\.weight \[4, 3, 5, 5\] \(expected \[4, 3, 3, 3\]\)"):
        load_state_dict_strict(_Tiny(), {**good, "conv.weight": torch.zeros(4, 3, 5, 5)}, "x.pth", "tiny")
    with pytest.raises(BadWeightsError, match="it holds a list"):
        load_state_dict_strict(_Tiny(), [1, 2], "x.pth", "tiny")


def test_strict_load_lists_at_most_three_keys():
    with pytest.raises(BadWeightsError, match=r"missing bn\.bias, bn\.running_mean, bn\.running_var \(\+3 more\)"):
        load_state_dict_strict(_Tiny(), {}, "x.pth", "tiny")


def test_strict_load_assigns_and_tolerates_absent_num_batches_tracked():
    source = _Tiny()
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    with torch.device("meta"):
        target = _Tiny()
    load_state_dict_strict(target, state, "x.pth", "tiny")
    assert torch.equal(target.conv.weight, source.conv.weight)
    assert target.bn.num_batches_tracked.item() == 0 and not target.bn.num_batches_tracked.is_meta


def test_fold_batchnorm_keeps_outputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)))
    for bn in (net[1], net[3][1]):
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    net.eval()
    x = torch.randn(2, 3, 9, 9)
    expected = net(x)
    fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


def test_no_banned_dependencies_anywhere_in_annotator():
    banned = re.compile(r"^\s*(import|from)\s+(torchvision|timm|mmcv|mmseg|open_clip|scipy|skimage)\b", re.M)
    package = Path(util.__file__).parent
    offenders = [str(p) for p in package.rglob("*.py") if banned.search(p.read_text())]
    assert offenders == []
