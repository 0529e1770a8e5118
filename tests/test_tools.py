"""tool_add_control / tool_transfer_control (issue 4, 'What it must show' 3), on tiny configs and small dicts."""
import pytest
import torch
from conftest import ROOT, TINY_CLDM, TINY_LDM, build_tiny, randomize_zero_convs

from cldm.model import load_checkpoint, load_state_dict, save_state_dict
from training.control_weights import add_control, add_control_cli, transfer_control, transfer_control_cli

FRESH_PARTS = ("control_model.input_hint_block.", "control_model.zero_convs.", "control_model.middle_block_out.")


@pytest.fixture(scope="module")
def sd_state_dict():
    """A tiny 'Stable Diffusion' with every weight non-zero, so copies are told apart from fresh zeros."""
    return {k: v.clone() for k, v in randomize_zero_convs(build_tiny(TINY_LDM)).state_dict().items()}


@pytest.fixture(scope="module")
def added(sd_state_dict):
    originals = {k: v.clone() for k, v in sd_state_dict.items()}
    out, fresh = add_control(sd_state_dict, TINY_CLDM)
    assert all(torch.equal(v, originals[k]) for k, v in sd_state_dict.items()), "the input was modified"
    return out, fresh


def test_add_control_copies_exactly_the_unet_encoder(sd_state_dict, added):
    out, fresh = added
    control_keys = [k for k in out if k.startswith("control_model.")]
    copied = [k for k in control_keys if "model.diffusion_" + k[len("control_"):] in sd_state_dict]
    assert sorted(copied + fresh) == sorted(control_keys)
    assert fresh and all(k.startswith(FRESH_PARTS) for k in fresh)
    assert not any(k.startswith(FRESH_PARTS) for k in copied)
    for k in copied:
        twin = sd_state_dict["model.diffusion_" + k[len("control_"):]]
        assert torch.equal(out[k], twin) and out[k].data_ptr() != twin.data_ptr()
    for k, v in sd_state_dict.items():  # the SD part is the input's
        assert torch.equal(out[k], v)


def test_add_control_leaves_the_new_layers_fresh(added):
    out, fresh = added
    hint_convs = sorted({int(k.split(".")[2]) for k in fresh if k.startswith(FRESH_PARTS[0])})
    assert hint_convs == [0, 2, 4, 6, 8, 10, 12, 14]
    zero = [k for k in fresh if not k.startswith(FRESH_PARTS[0])] + [
        f"control_model.input_hint_block.{hint_convs[-1]}.{p}" for p in ("weight", "bias")]
    assert len(zero) == 2 * 13 + 2
    assert all(out[k].abs().sum() == 0 for k in zero)
    assert all(out[f"control_model.input_hint_block.{i}.weight"].abs().sum() > 0 for i in hint_convs[:-1])


def test_add_control_output_loads_strictly(added):
    model = build_tiny(TINY_CLDM)
    report = load_checkpoint(model, added[0])
    assert not report.missing and not report.unexpected


def test_add_control_cli(sd_state_dict, tmp_path, capsys):
    sd_path, out_path = str(tmp_path / "sd.safetensors"), str(tmp_path / "control_ini.ckpt")
    save_state_dict(sd_state_dict, sd_path)
    add_control_cli("unused-in", "unused-out", TINY_CLDM, [sd_path, out_path])
    printed = capsys.readouterr().out
    assert printed.count("These weights are newly added: control_model.") == 2 * 8 + 2 * 13
    assert set(load_state_dict(out_path)) == set(build_tiny(TINY_CLDM).state_dict())
    with pytest.raises(SystemExit, match="already exists"):
        add_control_cli("unused-in", "unused-out", TINY_CLDM, [sd_path, out_path])
    with pytest.raises(SystemExit, match="checkpoint not found: .*missing.ckpt"):
        add_control_cli("unused-in", "unused-out", TINY_CLDM, [str(tmp_path / "missing.ckpt"), out_path + ".new"])
    with pytest.raises(SystemExit, match="already holds a ControlNet"):
        add_control_cli("unused-in", "unused-out", TINY_CLDM, [out_path, str(tmp_path / "o.ckpt")])
    sd15_config = str(ROOT / "models" / "cldm_v15.yaml")
    with pytest.raises(SystemExit, match="does not fit") as err:  # a tiny SD against the SD1.5 config
        add_control_cli("unused-in", "unused-out", sd15_config, [sd_path, str(tmp_path / "o.ckpt")])
    # it is an SD 1.x file, but the config it should use is not the one in use already
    assert "Stable Diffusion 1.x" in str(err.value) and "use models/cldm_v15.yaml" not in str(err.value)
    assert "the family of " + sd15_config in str(err.value)
    assert not (tmp_path / "o.ckpt").exists()


def test_add_control_writes_logvar_when_the_sd_file_lacks_it(sd_state_dict):
    """Upstream writes every key of the model, so a file without `logvar` (older SD training code) gets the
    config's value (logvar_init, 0) and the key is reported as newly added."""
    without = {k: v for k, v in sd_state_dict.items() if k != "logvar"}
    out, fresh = add_control(without, TINY_CLDM)
    assert "logvar" in fresh and torch.equal(out["logvar"], torch.zeros_like(sd_state_dict["logvar"]))
    assert out["logvar"].dtype == torch.float32
    report = load_checkpoint(build_tiny(TINY_CLDM), out)
    assert not report.missing and not report.tolerated


def _synthetic():
    """Three small state dicts shaped like SD / ControlNet files."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    unet_keys = ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.middle_block.0.bias"]
    frozen_keys = ["first_stage_model.decoder.conv_in.weight", "cond_stage_model.transformer.final.weight"]
    base = {k: rand(3, 2) for k in unet_keys + frozen_keys}
    new_base = {k: rand(3, 2) for k in unet_keys + frozen_keys}
    new_base["model_ema.decay"] = torch.tensor(0.999)  # keys the control file lacks are not carried over
    control = {k: rand(3, 2) for k in unet_keys + frozen_keys}
    for key in ("control_model.input_blocks.0.0.weight", "control_model.middle_block.0.bias",
                "control_model.zero_convs.0.0.weight"):
        control[key] = rand(3, 2)
    control["betas"] = rand(4)
    return base, control, new_base


def test_transfer_control_arithmetic():
    base, control, new_base = _synthetic()
    out, report = transfer_control(base, control, new_base)
    assert set(out) == set(control)
    for name in ("input_blocks.0.0.weight", "middle_block.0.bias"):
        twin = "model.diffusion_model." + name
        expected = control["control_model." + name] + new_base[twin] - base[twin]
        assert torch.allclose(out["control_model." + name], expected)
        # the control file's own UNet (trained when sd_locked=False) moves by the same difference (upstream)
        assert torch.allclose(out[twin], control[twin] + new_base[twin] - base[twin])
    assert torch.equal(out["control_model.zero_convs.0.0.weight"], control["control_model.zero_convs.0.0.weight"])
    for k in ("first_stage_model.decoder.conv_in.weight", "cond_stage_model.transformer.final.weight"):
        assert torch.equal(out[k], new_base[k])
    assert torch.equal(out["betas"], control["betas"])
    assert report["kept"] == ["control_model.zero_convs.0.0.weight"]
    assert sorted(report["offset"]) == sorted("model.diffusion_model." + n for n in ("input_blocks.0.0.weight",
                                                                                     "middle_block.0.bias"))
    assert report["kept_missing_in_new_base"] == ["betas"]


def test_transfer_control_refuses_mismatched_bases():
    base, control, new_base = _synthetic()
    new_base["model.diffusion_model.middle_block.0.bias"] = torch.zeros(5)
    with pytest.raises(RuntimeError, match="shapes differ"):
        transfer_control(base, control, new_base)
    del new_base["first_stage_model.decoder.conv_in.weight"]
    new_base["model.diffusion_model.middle_block.0.bias"] = torch.zeros(3, 2)
    with pytest.raises(RuntimeError, match="lacks first_stage_model"):
        transfer_control(base, control, new_base)


def test_transfer_control_cli(tmp_path, capsys):
    paths = {name: str(tmp_path / f"{name}.{ext}") for name, ext in
             (("base", "ckpt"), ("control", "pth"), ("new", "safetensors"), ("out", "pth"))}
    for name, sd in zip(("base", "control", "new"), _synthetic()):
        save_state_dict(sd, paths[name])
    argv = ["--base", paths["base"], "--control", paths["control"], "--new-base", paths["new"], "--out", paths["out"]]
    transfer_control_cli(argv)
    assert "Transferred 2 ControlNet tensors, kept 1" in capsys.readouterr().out
    assert set(load_state_dict(paths["out"])) == set(_synthetic()[1])
    with pytest.raises(SystemExit, match="already exists"):
        transfer_control_cli(argv)


def test_transfer_control_keeps_unet_offsets_of_an_unlocked_controlnet():
    """An sd_locked=False ControlNet's decoder differs from its base: that difference survives the move."""
    base, control, new_base = _synthetic()
    key = "model.diffusion_model.middle_block.0.bias"
    control[key] = base[key] + 0.5  # what training changed
    out, _ = transfer_control(base, control, new_base)
    assert torch.allclose(out[key], new_base[key] + 0.5)


def test_transfer_control_refuses_a_control_file_without_controlnet(tmp_path):
    base, control, new_base = _synthetic()
    plain_sd = {k: v for k, v in control.items() if not k.startswith("control_model.")}
    paths = {name: str(tmp_path / f"{name}.safetensors") for name in ("base", "control", "new")}
    for name, sd in zip(("base", "control", "new"), (base, plain_sd, new_base)):
        save_state_dict(sd, paths[name])
    out = tmp_path / "out.pth"
    with pytest.raises(SystemExit, match=r"control\.safetensors holds no ControlNet") as err:
        transfer_control_cli(["--base", paths["base"], "--control", paths["control"], "--new-base", paths["new"],
                              "--out", str(out)])
    assert err.value.code != 0 and not isinstance(err.value.code, int)  # a message: Python exits with 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "control.safetensors",
                                                          "new.safetensors"]
