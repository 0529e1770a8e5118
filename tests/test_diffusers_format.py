"""diffusers' ControlNet format (cldm.formats.diffusers): bit-exact round trip, and diffusers' own loaders
(ControlNetModel.from_pretrained on our export, from_single_file on our checkpoints) agreeing with our
ControlNet. Offline; diffusers is a dev dependency."""
import copy
import json
import warnings

import pytest
import torch
from conftest import ROOT, TINY_CLDM, build_tiny, randomize_zero_convs

from cldm.formats import diffusers as dformat
from cldm.loading import CONTROL, load_model_weights
from cldm.model import create_control_net, load_model_config, save_state_dict

diffusers = pytest.importorskip("diffusers")

SD15 = str(ROOT / "models" / "cldm_v15.yaml")


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def tiny():
    return randomize_zero_convs(build_tiny(seed=7))


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "controlnet"
    dformat.save_folder(tiny.control_model.state_dict(), load_model_config(TINY_CLDM), out)
    return out


# Tiny models in float32 differ by up to ~5e-5 where their last levels are 1x1 and 2x2 (our CPU kernels and
# diffusers' oneDNN convolutions round differently, as in tests/test_diffusers_parity.py); so the tiny checks run in
# float64, where only the maths can differ. The full-size check runs in float32 at the 1e-5.
TINY_DTYPE, TINY_TOLERANCE = torch.float64, 1e-10


def inputs(latent, context_dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, latent, latent, generator=g, dtype=dtype),
            torch.rand(2, 3, 8 * latent, 8 * latent, generator=g, dtype=dtype),
            torch.tensor([7, 801]), torch.randn(2, 77, context_dim, generator=g, dtype=dtype))


def assert_same_residuals(net, theirs, latent, context_dim, dtype=torch.float32, tolerance=1e-5):
    if next(net.parameters()).dtype != dtype:
        net = copy.deepcopy(net).to(dtype)
    theirs = theirs.to(dtype)
    x, hint, t, ctx = inputs(latent, context_dim, dtype)
    with torch.no_grad():
        ours = net(x, hint, t, ctx)
        down, mid = theirs(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
    theirs_all = list(down) + [mid]
    assert len(ours) == len(theirs_all) == 13
    for i, (a, b) in enumerate(zip(ours, theirs_all)):
        assert a.shape == b.shape and rel_err(a, b) <= tolerance, (i, rel_err(a, b))
    assert max(o.abs().max().item() for o in ours) > 0


def test_folder_layout_and_config(exported):
    assert sorted(p.name for p in exported.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    config = json.loads((exported / "config.json").read_text())
    assert config["_class_name"] == "ControlNetModel"
    assert config["block_out_channels"] == [32, 32, 64, 64] and config["layers_per_block"] == 2
    assert config["cross_attention_dim"] == 32 and config["attention_head_dim"] == 2
    assert config["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_round_trip_is_bit_exact(tiny, tmp_path, dtype):
    sd = {k: v.to(dtype) for k, v in tiny.control_model.state_dict().items()}
    dformat.save_folder(sd, load_model_config(TINY_CLDM), tmp_path / "cn")
    back = dformat.load_folder(tmp_path / "cn")
    assert back.keys() == sd.keys()
    assert all(back[k].dtype == dtype and torch.equal(back[k], v) for k, v in sd.items())


def test_existing_folder_is_never_overwritten(tiny, exported):
    before = (exported / "diffusion_pytorch_model.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        dformat.save_folder(tiny.control_model.state_dict(), load_model_config(TINY_CLDM), exported)
    assert (exported / "diffusion_pytorch_model.safetensors").read_bytes() == before
    assert not list(exported.parent.glob(".*tmp*"))


def test_from_pretrained_loads_our_export(tiny, exported):
    theirs = diffusers.ControlNetModel.from_pretrained(str(exported)).eval()
    assert_same_residuals(tiny.control_model, theirs, 8, 32, TINY_DTYPE, TINY_TOLERANCE)


@pytest.mark.parametrize("name", ["full.ckpt", "control.safetensors", "control.pth"])
def test_from_single_file_loads_our_checkpoints(tiny, exported, tmp_path, name):
    """diffusers' single-file loader, given our exported folder as the local config."""
    sd = tiny.state_dict()
    if name.startswith("control"):
        sd = {k: v for k, v in sd.items() if k.startswith(CONTROL)}
    path = tmp_path / name
    if name.endswith(".ckpt"):
        torch.save({"state_dict": sd}, path)
    else:
        save_state_dict(sd, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.ControlNetModel.from_single_file(str(path), config=str(exported)).eval()
    assert_same_residuals(tiny.control_model, theirs, 8, 32, TINY_DTYPE, TINY_TOLERANCE)


def test_diffusers_folder_loads_as_our_control(tiny, exported, tmp_path):
    base = {k: v for k, v in tiny.state_dict().items() if not k.startswith(CONTROL)}
    save_state_dict(base, str(tmp_path / "base.safetensors"))
    model = build_tiny(seed=12)
    report = load_model_weights(model, exported, base=tmp_path / "base.safetensors")
    assert not report.control.missing and not report.control.unexpected
    want = tiny.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


def test_config_flags_and_yaml_choice():
    shuffle = dformat.diffusers_config(load_model_config(str(ROOT / "models" / "control_v11e_sd15_shuffle.yaml")))
    assert shuffle["global_pool_conditions"] is True
    v21 = dformat.diffusers_config(load_model_config(str(ROOT / "models" / "cldm_v21.yaml")))
    assert v21["attention_head_dim"] == [5, 10, 20, 20] and v21["use_linear_projection"] is True
    assert v21["cross_attention_dim"] == 1024
    models = ROOT / "models"
    assert dformat.matching_yaml(v21, models).name == "cldm_v21.yaml"
    assert dformat.matching_yaml(shuffle, models).name == "control_v11e_sd15_shuffle.yaml"
    assert dformat.matching_yaml(dformat.diffusers_config(load_model_config(SD15)), models).name == "cldm_v15.yaml"
    assert dformat.matching_yaml(dformat.diffusers_config(load_model_config(TINY_CLDM)), models) is None


@pytest.mark.parametrize("config", ["cldm_v15", "cldm_v21"])
def test_full_size_key_layout_matches_diffusers(config):
    """Our names for every full-size ControlNet key are exactly diffusers' ControlNetModel keys, same shapes."""
    path = str(ROOT / "models" / f"{config}.yaml")
    ours = create_control_net(path, device="meta").state_dict()
    cfg = {k: v for k, v in dformat.diffusers_config(load_model_config(path)).items() if not k.startswith("_")}
    with torch.device("meta"):
        theirs = diffusers.ControlNetModel(**cfg).state_dict()
    renamed = dformat.to_diffusers(ours)
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert dformat.from_diffusers(renamed, cfg).keys() == ours.keys()


@pytest.mark.slow
def test_full_size_sd15_controlnet_in_both_diffusers_loaders(tmp_path):
    """Full-size cldm_v15 ControlNet, random weights: export -> from_pretrained, control-only file ->
    from_single_file; residuals at an 8x8 latent (64 px hint) equal ours to 1e-5 relative, fp32."""
    torch.manual_seed(0)
    net = create_control_net(SD15, device="meta").to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.02, generator=g)
    sd = net.state_dict()
    folder = dformat.save_folder(sd, load_model_config(SD15), tmp_path / "controlnet")
    theirs = diffusers.ControlNetModel.from_pretrained(str(folder)).eval()
    assert_same_residuals(net, theirs, 8, 768)
    back = dformat.load_folder(folder)
    assert all(torch.equal(back[k], v) for k, v in sd.items())
    del theirs, back
    control_file = tmp_path / "control_v11p_sd15_canny.safetensors"
    save_state_dict({CONTROL + k: v for k, v in sd.items()}, str(control_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single = diffusers.ControlNetModel.from_single_file(str(control_file), config=str(folder)).eval()
    assert_same_residuals(net, single, 8, 768)
