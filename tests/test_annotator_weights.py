"""The real weight files' layouts (from the manifests) load strictly through each detector's own loader."""
import os

import pytest
import torch

from annotator.hed import LEGACY_WEIGHTS, HEDdetector
from annotator.hed.model import ControlNetHED, LegacyHED
from annotator.mlsd import MLSDdetector
from annotator.mlsd.model import MLSDLarge
from annotator.openpose import OpenposeDetector
from annotator.openpose.model import BodyPoseNet, HandPoseNet
from annotator.util import BadWeightsError, MissingWeightsError
from tests.annotator_weights import make_random_state_dict, make_random_weights, manifest, random_ckpt_dir

POSE_FILES = ("body_pose_model.pth", "hand_pose_model.pth")
HED_FILES = ("ControlNetHED.pth", LEGACY_WEIGHTS)


@pytest.mark.parametrize("net_class, name", [(BodyPoseNet, "body_pose_model.pth"),
                                             (HandPoseNet, "hand_pose_model.pth"),
                                             (ControlNetHED, "ControlNetHED.pth"),
                                             (MLSDLarge, "mlsd_large_512_fp32.pth")])
def test_module_state_dict_equals_manifest(net_class, name):
    with torch.device("meta"):
        net = net_class()
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == manifest(name)


def _loaded_equals_file(net, file_state, rename=lambda k: k):
    loaded = net.state_dict()
    assert len(loaded) == len(file_state)
    for key, value in file_state.items():
        assert torch.equal(loaded[rename(key)].cpu(), value), key


@pytest.mark.parametrize("attribute, name", [("body_net", "body_pose_model.pth"), ("hand_net", "hand_pose_model.pth")])
def test_openpose_files_load_strictly(attribute, name):
    folder = random_ckpt_dir(*POSE_FILES)
    net = getattr(OpenposeDetector(ckpt_dir=folder), attribute)
    _loaded_equals_file(net, torch.load(folder / name, weights_only=True))


def test_controlnet_hed_loads_strictly():
    folder = random_ckpt_dir(*HED_FILES)
    net = HEDdetector(ckpt_dir=folder).net
    assert type(net) is ControlNetHED
    _loaded_equals_file(net, torch.load(folder / "ControlNetHED.pth", weights_only=True))


def test_legacy_hed_loads_strictly_with_renamed_keys():
    folder = random_ckpt_dir(*HED_FILES)
    net = HEDdetector(LEGACY_WEIGHTS, ckpt_dir=folder).net
    assert type(net) is LegacyHED
    state = torch.load(folder / LEGACY_WEIGHTS, weights_only=True)
    assert torch.equal(net.block1.convs[1].weight, state["moduleVggOne.2.weight"])
    assert torch.equal(net.block2.convs[0].weight, state["moduleVggTwo.1.weight"])
    assert torch.equal(net.block5.convs[2].bias, state["moduleVggFiv.5.bias"])
    assert torch.equal(net.block3.projection.weight, state["moduleScoreThr.weight"])
    assert torch.equal(net.combine.weight, state["moduleCombine.0.weight"])
    assert len(net.state_dict()) == len(state)


def test_hed_model_is_chosen_by_keys_not_file_name(tmp_path):
    make_random_weights(LEGACY_WEIGHTS, tmp_path / "ControlNetHED.pth")
    assert type(HEDdetector(ckpt_dir=tmp_path).net) is LegacyHED


@pytest.mark.parametrize("drop", [False, True])
def test_mlsd_loads_with_and_without_num_batches_tracked(tmp_path, drop):
    path = make_random_weights("mlsd_large_512_fp32.pth", tmp_path, drop_num_batches_tracked=drop)
    state = torch.load(path, weights_only=True)
    assert sum(k.endswith("num_batches_tracked") for k in state) == (0 if drop else 57)
    net = MLSDdetector(ckpt_dir=tmp_path).net  # BatchNorms folded into the convs after the strict load
    reference = MLSDLarge().eval()
    reference.load_state_dict(state, strict=not drop)
    x = torch.rand(1, 4, 32, 32) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(net(x), reference(x), rtol=1e-4, atol=1e-4)


def test_detectors_load_lazily_and_report_missing_files(tmp_path):
    detector = OpenposeDetector(ckpt_dir=tmp_path)  # constructing reads nothing
    with pytest.raises(MissingWeightsError, match="body_pose_model.pth.*huggingface.co"):
        detector.body_net


def test_hand_weights_given_to_body_is_a_clear_error(tmp_path):
    os.symlink(random_ckpt_dir(*POSE_FILES) / "hand_pose_model.pth", tmp_path / "body_pose_model.pth")
    expected = (r"^body_pose_model\.pth is not a body-pose file: "
                r"missing conv4_3_CPM\.bias, conv4_3_CPM\.weight, conv4_4_CPM\.bias \(\+161 more\); "
                r"unexpected conv4_3\.bias, conv4_3\.weight, conv4_4\.bias \(\+81 more\)$")
    with pytest.raises(BadWeightsError, match=expected) as err:
        OpenposeDetector(ckpt_dir=tmp_path).body_net
    assert "\n" not in str(err.value)


def test_mlsd_weights_given_to_hed_is_a_clear_error(tmp_path):
    make_random_weights("mlsd_large_512_fp32.pth", tmp_path / "ControlNetHED.pth")
    with pytest.raises(BadWeightsError, match=r"^ControlNetHED\.pth is not a HED \(ControlNetHED\) file"):
        HEDdetector(ckpt_dir=tmp_path).net


def test_corrupted_file_through_a_detector(tmp_path):
    path = make_random_weights("mlsd_large_512_fp32.pth", tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BadWeightsError, match=r"^mlsd_large_512_fp32\.pth is corrupted"):
        MLSDdetector(ckpt_dir=tmp_path).net


def test_mmcv_container_helper(tmp_path):
    state = make_random_state_dict("mlsd_large_512_fp32.pth")
    path = make_random_weights("mlsd_large_512_fp32.pth", tmp_path / "c.pth", container="mmcv")
    obj = torch.load(path, weights_only=True)
    assert set(obj) == {"state_dict", "meta"} and obj["state_dict"].keys() == state.keys()
    assert len(obj["meta"]["CLASSES"]) == len(obj["meta"]["PALETTE"]) == 150
