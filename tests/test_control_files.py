"""Control-only files with a base checkpoint, in every format and precision (cldm.loading), and the 1.1 configs."""
import glob
import json
import os

import pytest
import torch
from conftest import ROOT, build_tiny, manifest, randomize_zero_convs

from cldm.formats import diffusers as dformat
from cldm.loading import (CONTROL, classify, file_kind, load_control_weights, load_model_weights,
                          open_file)
from cldm.model import CheckpointError, create_model, load_model_config, save_state_dict

V11_CONFIGS = sorted(glob.glob(str(ROOT / "models" / "control_v11*.yaml")))


@pytest.fixture(scope="module")
def trained():
    """A tiny ControlLDM standing in for a trained one: every weight random and non-zero."""
    return randomize_zero_convs(build_tiny(seed=3))


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory):
    """The trained model split as people hold it: SD base files and control-only files."""
    d = tmp_path_factory.mktemp("files")
    sd = trained.state_dict()
    base = {k: v for k, v in sd.items() if not k.startswith(CONTROL)}
    control = {k: v for k, v in sd.items() if k.startswith(CONTROL)}
    paths = {}
    torch.save({"state_dict": base, "global_step": 470000}, d / "v1-5-pruned.ckpt")  # the SD file's layout
    paths["base.ckpt"] = d / "v1-5-pruned.ckpt"
    save_state_dict(base, str(d / "community.safetensors"))
    paths["base.safetensors"] = d / "community.safetensors"
    for dtype in (torch.float32, torch.float16):
        for ext in ("pth", "safetensors"):
            path = d / f"control_v11p_sd15_canny_{str(dtype)[6:]}.{ext}"
            save_state_dict({k: v.to(dtype) for k, v in control.items()}, str(path))
            paths[f"control.{str(dtype)[6:]}.{ext}"] = path
    save_state_dict(sd, str(d / "control_sd15_canny.pth"))
    paths["full"] = d / "control_sd15_canny.pth"
    return paths


def fresh():
    return build_tiny(seed=11)


@pytest.mark.parametrize("base", ["base.ckpt", "base.safetensors"])
@pytest.mark.parametrize("control", ["control.float32.pth", "control.float32.safetensors", "control.float16.pth",
                                     "control.float16.safetensors"])
def test_base_plus_control_only_file_rebuilds_the_model(trained, files, base, control):
    model = fresh()
    report = load_model_weights(model, files[control], base=files[base])
    assert not report.control.missing and not report.control.unexpected
    half = "float16" in control
    loaded = model.state_dict()
    for key, value in trained.state_dict().items():
        got = loaded[key]
        assert got.dtype == value.dtype  # half-precision files load into the model's dtype
        want = value.half().to(value.dtype) if half and key.startswith(CONTROL) else value
        assert torch.equal(got, want), key
    assert report.dtypes[str(files[control])] == (["float16"] if half else ["float32"])


def test_half_model_takes_float32_files(trained, files):
    model = fresh().half()
    load_model_weights(model, files["control.float32.safetensors"], base=files["base.ckpt"])
    got = model.control_model.input_hint_block[0].weight
    assert got.dtype == torch.float16
    assert torch.equal(got, trained.control_model.input_hint_block[0].weight.half())


def test_full_checkpoint_alone_and_as_base(trained, files):
    model = fresh()
    load_model_weights(model, files["full"])
    want = trained.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    other = randomize_zero_convs(build_tiny(seed=5)).control_model.state_dict()
    other_path = files["full"].parent / "other_control.safetensors"
    save_state_dict({CONTROL + k: v for k, v in other.items()}, str(other_path))
    report = load_model_weights(model, other_path, base=files["full"])  # the full file's ControlNet is replaced
    assert len(report.replaced) == len(other)
    loaded = model.control_model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in other.items())


def test_safetensors_are_read_straight_into_the_parameters(files):
    model = fresh()
    pointers = {k: v.data_ptr() for k, v in model.state_dict().items()}
    load_model_weights(model, files["control.float32.safetensors"], base=files["base.safetensors"])
    assert pointers == {k: v.data_ptr() for k, v in model.state_dict().items()}


def test_file_kinds(files, tmp_path, trained):
    assert file_kind(files["full"]) == "full"
    assert file_kind(files["base.ckpt"]) == "sd"
    assert file_kind(files["control.float16.safetensors"]) == "control"
    assert classify(["input_hint_block.0.weight", "zero_convs.0.0.weight"]) == "bare-control"
    assert classify(["controlnet_cond_embedding.conv_in.weight"]) == "diffusers-control"
    assert classify(["lora_unet_x.lora_up.weight"]) == "other"


def test_bare_and_diffusers_single_files_load_as_controls(trained, files, tmp_path):
    control = trained.control_model.state_dict()
    bare = tmp_path / "thibaud_style.safetensors"
    save_state_dict(control, str(bare))
    theirs = tmp_path / "diffusers_single.safetensors"
    save_state_dict(dformat.to_diffusers(control), str(theirs))
    for path in (bare, theirs):
        net = fresh().control_model
        load_control_weights(net, path)
        loaded = net.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in control.items())


def test_control_only_file_alone_asks_for_a_base(files):
    with pytest.raises(CheckpointError, match="--base") as err:
        load_model_weights(fresh(), files["control.float16.pth"])
    assert str(files["control.float16.pth"]) in str(err.value)


def test_swapped_files_are_refused(files):
    with pytest.raises(CheckpointError, match="base must be a Stable Diffusion"):
        load_model_weights(fresh(), files["base.ckpt"], base=files["control.float32.pth"])
    with pytest.raises(CheckpointError, match="without a ControlNet"):
        load_model_weights(fresh(), files["base.safetensors"], base=files["base.ckpt"])
    with pytest.raises(CheckpointError, match="holds no ControlNet"):
        load_model_weights(fresh(), None, base=files["base.ckpt"])


def test_control_of_another_shape_is_refused_before_anything_is_copied(files, tmp_path):
    small = build_tiny(seed=1).control_model.state_dict()
    bad = {CONTROL + k: (v[:1] if k == "zero_convs.0.0.weight" else v) for k, v in small.items()}
    path = tmp_path / "control_v11p_sd21_canny.safetensors"
    save_state_dict(bad, str(path))
    model = fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_model_weights(model, path, base=files["base.ckpt"])
    assert str(path) in str(err.value) and "zero_convs.0.0.weight" in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # not even the base was copied
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_model_weights(model, path, base=tmp_path / "missing.ckpt")


def test_truncated_and_empty_safetensors(files, tmp_path):
    data = files["control.float32.safetensors"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        open_file(cut)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        open_file(empty)


# --- full size, keys and shapes only -----------------------------------------------------------------------

def write_layout(path, shapes, dtype="F16"):
    """A .safetensors file with the real layout and no data: the header, then a sparse hole."""
    size = {"F16": 2, "F32": 4}[dtype]
    header, offset = {}, 0
    for key, shape in shapes.items():
        n = size
        for d in shape:
            n *= d
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)
    return path


@pytest.mark.parametrize("config, base, extra", [
    ("control_v11p_sd15_canny", "sd15_ldm", None),  # v1-5-pruned-emaonly
    ("control_v11e_sd15_shuffle", "sd15_ldm", "sd15_ldm_ema_extra"),  # v1-5-pruned.ckpt, with EMA
    ("cldm_v21", "sd21_ldm", None),  # SD2.1 + an SD2.1 ControlNet
])
def test_full_size_pairs_check(tmp_path, config, base, extra):
    layout = manifest(base) | (manifest(extra) if extra else {})
    family = "cldm_v21" if "21" in config else "cldm_v15"
    control = {k: v for k, v in manifest(family).items() if k.startswith(CONTROL)}
    assert len(control) == 340
    base_file = write_layout(tmp_path / "base.safetensors", layout)
    control_file = write_layout(tmp_path / "control.safetensors", control, "F32")
    model = create_model(str(ROOT / "models" / f"{config}.yaml"), device="meta")
    report = load_model_weights(model, control_file, base=base_file, check_only=True)
    assert not report.control.missing and len(report.base.missing) == 340
    with pytest.raises(CheckpointError, match="Stable Diffusion 2.x" if family == "cldm_v15" else "1.x"):
        other = "cldm_v21" if family == "cldm_v15" else "cldm_v15"
        wrong = {k: v for k, v in manifest(other).items() if not k.startswith(CONTROL)}
        load_model_weights(model, control_file, base=write_layout(tmp_path / "wrong.safetensors", wrong),
                           check_only=True)


def test_sd21_control_into_sd15_model_is_refused(tmp_path):
    control = {k: v for k, v in manifest("cldm_v21").items() if k.startswith(CONTROL)}
    path = write_layout(tmp_path / "control_v11p_sd21_canny.safetensors", control)
    model = create_model(str(ROOT / "models" / "cldm_v15.yaml"), device="meta")
    with pytest.raises(CheckpointError, match="other shapes") as err:
        load_control_weights(model.control_model, path, check_only=True)
    assert "control_v11p_sd21_canny.safetensors" in str(err.value)


# --- the 1.1 configs -------------------------------------------------------------------------------------------

def test_all_fourteen_v11_configs_build_the_released_layout():
    assert len(V11_CONFIGS) == 14
    expected = manifest("cldm_v15")
    for path in V11_CONFIGS:
        model = create_model(path, device="meta")
        assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected, path
        name = os.path.basename(path)
        assert model.global_average_pooling == ("shuffle" in name), name
        encoder = model.cond_stage_model
        assert (encoder.clip_skip, encoder.long_prompt_chunks) == ((2, 3) if "sd15s2" in name else (1, 1)), name


def test_lineart_anime_text_encoder_is_clip_skip_2_with_three_windows():
    """The yaml's text-encoder settings, on a tiny tower: upstream's hack_everything(clip_skip=2) output,
    i.e. final_layer_norm(hidden_states[-2]) of each of three 77-token windows."""
    from ldm.modules.encoders.modules import FrozenCLIPEmbedder
    params = load_model_config(str(ROOT / "models" / "control_v11p_sd15s2_lineart_anime.yaml"))
    params = params["params"]["cond_stage_config"]["params"]
    tiny = {"width": 32, "layers": 3, "heads": 2}
    torch.manual_seed(0)
    anime = FrozenCLIPEmbedder(**params, text_config=tiny)
    plain = FrozenCLIPEmbedder(text_config=tiny)
    plain.load_state_dict(anime.state_dict())
    with torch.no_grad():
        z = anime(["a girl, " * 60])
        tokens = anime.tokenize(["a girl, " * 60]).view(3, 77)
        text_model = anime.transformer.text_model
        want = text_model(tokens, num_layers=2, final_norm=True).reshape(1, 231, 32)
        assert z.shape == (1, 231, 32)
        assert torch.allclose(z, want, atol=1e-6)
        assert not torch.allclose(z[:, :77], plain(["a girl, " * 60]), atol=1e-3)  # skip 2 differs from 1


def test_legacy_pickle_and_diffusers_bin_files(trained, files, tmp_path):
    """A pre-zip torch.save file (read whole, still weights_only) and a diffusers folder with a .bin."""
    control = trained.control_model.state_dict()
    legacy = tmp_path / "control_legacy.pth"
    torch.save({CONTROL + k: v for k, v in control.items()}, legacy, _use_new_zipfile_serialization=False)
    folder = tmp_path / "diffusers_bin"
    folder.mkdir()
    torch.save(dformat.to_diffusers(control), folder / "diffusion_pytorch_model.bin")
    for path in (legacy, folder):
        model = fresh()
        load_model_weights(model, path, base=files["base.ckpt"])
        loaded = model.control_model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in control.items()), path
