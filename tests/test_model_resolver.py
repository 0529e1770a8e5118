"""What the apps run (cldm.app.weights): --base + --control pairs, the models folder scan, config choice, header."""
import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_CLDM, build_tiny, randomize_zero_convs

from cldm.app.cli import _engine, make_parser
from cldm.app.engine import Engine
from cldm.app.weights import ModelChoice, config_for, resolve_model, scan_controls
from cldm.formats import diffusers as dformat
from cldm.loading import CONTROL
from cldm.model import load_model_config, save_state_dict

MODELS = ROOT / "models"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A models folder holding a tiny base file and a tiny 1.1-style control-only file."""
    d = tmp_path_factory.mktemp("models")
    model = randomize_zero_convs(build_tiny(seed=4))
    sd = model.state_dict()
    save_state_dict({k: v for k, v in sd.items() if not k.startswith(CONTROL)}, str(d / "v1-5-pruned-emaonly.safetensors"))
    save_state_dict({k: v.half() for k, v in sd.items() if k.startswith(CONTROL)},
                    str(d / "control_v11p_sd15_canny_fp16.safetensors"))
    return d, model


def test_config_beside_the_file_then_by_name_then_v15(tmp_path):
    own = tmp_path / "control_v11p_sd15_canny.pth"
    own.write_bytes(b"x")
    (tmp_path / "control_v11p_sd15_canny.yaml").write_text("model: {}")
    assert config_for(own) == tmp_path / "control_v11p_sd15_canny.yaml"
    assert config_for(tmp_path / "control_v11p_sd15_canny_fp16.safetensors") == tmp_path / "control_v11p_sd15_canny.yaml"
    assert config_for(tmp_path / "control_v11e_sd15_shuffle.pth") == MODELS / "control_v11e_sd15_shuffle.yaml"
    assert config_for(tmp_path / "control_v11p_sd15s2_lineart_anime_fp16.safetensors") == \
        MODELS / "control_v11p_sd15s2_lineart_anime.yaml"
    assert config_for(tmp_path / "control_v11p_sd21_canny.safetensors") == MODELS / "cldm_v21.yaml"
    assert config_for(tmp_path / "my_controlnet.pth") == MODELS / "cldm_v15.yaml"
    folder = tmp_path / "sd21-controlnet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dformat.diffusers_config(load_model_config(str(MODELS / "cldm_v21.yaml")))))
    assert config_for(folder) == MODELS / "cldm_v21.yaml"


def test_models_folder_scan(tmp_path):
    assert scan_controls("hed", tmp_path) is None
    for name in ("control_v11p_sd15_softedge_fp16.safetensors", "control_v11p_sd15_softedge.pth",
                 "control_v11p_sd15_openpose.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert scan_controls("hed", tmp_path).name == "control_v11p_sd15_softedge.pth"  # fp32 before fp16
    assert scan_controls("openpose", tmp_path) is None  # not a weights file
    (tmp_path / "control_v11p_sd15_openpose").mkdir()
    (tmp_path / "control_v11p_sd15_openpose" / "config.json").write_text("{}")
    assert scan_controls("openpose", tmp_path).name == "control_v11p_sd15_openpose"  # a diffusers folder
    (tmp_path / "control_sd15_hed.pth").write_bytes(b"x")
    assert scan_controls("hed", tmp_path).name == "control_sd15_hed.pth"  # upstream 1.0's file first


def test_control_only_file_gets_the_folders_base(tiny_files):
    folder, _ = tiny_files
    choice = resolve_model("canny", models_dir=folder, config=TINY_CLDM)
    assert choice.ckpts == (folder / "control_v11p_sd15_canny_fp16.safetensors",)
    assert choice.base == folder / "v1-5-pruned-emaonly.safetensors" and not choice.demo
    assert choice.describe() == "control_v11p_sd15_canny_fp16.safetensors on v1-5-pruned-emaonly.safetensors " \
                                "(cldm_tiny.yaml)"


def test_control_only_file_without_base_says_what_to_do(tiny_files, tmp_path):
    folder, _ = tiny_files
    control = tmp_path / "control_v11p_sd15_canny.safetensors"
    control.write_bytes((folder / "control_v11p_sd15_canny_fp16.safetensors").read_bytes())
    choice = resolve_model("canny", [control], models_dir=tmp_path, demo_weights=tmp_path / "absent")
    assert not choice.available and "--base" in choice.banner and "v1-5-pruned-emaonly.safetensors" in choice.banner
    args = make_parser("t").parse_args(["--control", str(control), "--models-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="^error: control_v11p_sd15_canny.safetensors holds only a ControlNet: "
                                         "name its Stable Diffusion base with --base"):
        _engine(args, ["canny"])


def test_cli_base_and_control_load_the_model_and_the_header_names_it(tiny_files):
    folder, model = tiny_files
    control = folder / "control_v11p_sd15_canny_fp16.safetensors"
    base = folder / "v1-5-pruned-emaonly.safetensors"
    args = make_parser("t").parse_args(["--control", str(control), "--base", str(base), "--config", TINY_CLDM,
                                        "--dtype", "float32", "--device", "cpu"])
    engine = _engine(args, ["canny"])
    want = model.state_dict()
    for key, value in engine.model.state_dict().items():
        expected = want[key].half().float() if key.startswith(CONTROL) else want[key]
        assert torch.equal(value, expected), key
    assert engine.model_label.startswith("control_v11p_sd15_canny_fp16.safetensors on v1-5-pruned-emaonly")
    from cldm.app import tasks
    from cldm.app.ui import build_demo
    demo = build_demo(tasks.TASKS["canny"], engine, None)
    texts = [getattr(block, "value", "") for block in demo.blocks.values()]
    assert any(isinstance(t, str) and t.startswith("Model: `control_v11p_sd15_canny_fp16") for t in texts)


def test_engine_takes_a_diffusers_folder_as_second_controlnet(tiny_files, tmp_path):
    folder, model = tiny_files
    out = dformat.save_folder(model.control_model.state_dict(), load_model_config(TINY_CLDM), tmp_path / "cn")
    choice = ModelChoice(Path(TINY_CLDM), (folder / "control_v11p_sd15_canny_fp16.safetensors", out),
                         base=folder / "v1-5-pruned-emaonly.safetensors")
    engine = Engine.load(choice, "cpu", torch.float32)
    second = engine.extra_nets[0].state_dict()
    assert all(torch.equal(second[k], v) for k, v in model.control_model.state_dict().items())


def test_each_controlnet_gets_its_own_config(tmp_path):
    from cldm.model import create_control_net
    first, second = tmp_path / "control_sd15_canny.pth", tmp_path / "control_v11e_sd15_shuffle.pth"
    first.write_bytes(b"x")
    second.write_bytes(b"x")
    choice = resolve_model(["canny", "shuffle"], [first, second], demo_weights=tmp_path / "absent")
    assert choice.config_of(0) == MODELS / "cldm_v15.yaml"
    assert choice.config_of(1) == MODELS / "control_v11e_sd15_shuffle.yaml"
    assert create_control_net(str(choice.config_of(1)), device="meta").global_average_pooling
    assert not create_control_net(str(choice.config_of(0)), device="meta").global_average_pooling
