"""tool_extract_control.py: control-only files and diffusers folders out of our checkpoints, and back."""
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_CLDM, build_tiny, randomize_zero_convs

from cldm.formats.tool import main
from cldm.loading import CONTROL, open_file
from cldm.model import load_state_dict, save_state_dict


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    sd = randomize_zero_convs(build_tiny(seed=9)).state_dict()
    path = d / "control_sd15_canny.ckpt"
    torch.save({"state_dict": sd, "global_step": 1}, path)
    return path, {k: v for k, v in sd.items() if k.startswith(CONTROL)}


def read(path):
    with open_file(path) as f:
        return {k: f.tensor(k).clone() for k in f.shapes()}


def test_extract_default_name_and_exact_tensors(full, tmp_path, capsys):
    path, control = full
    before = path.read_bytes()
    src = tmp_path / path.name
    src.write_bytes(before)
    main([str(src)])
    out = tmp_path / "control_sd15_canny_control.safetensors"
    assert f"written: {out}" in capsys.readouterr().out
    got = read(out)
    assert got.keys() == control.keys() and all(torch.equal(got[k], v) for k, v in control.items())
    assert src.read_bytes() == before
    with pytest.raises(SystemExit, match="already exists"):  # a second run never overwrites
        main([str(src)])


def test_half_and_pth_output(full, tmp_path):
    path, control = full
    main([str(path), str(tmp_path / "c16.pth"), "--half"])
    got = load_state_dict(str(tmp_path / "c16.pth"))
    assert all(got[k].dtype == torch.float16 and torch.equal(got[k], v.half()) for k, v in control.items())


def test_refusals(full, tmp_path):
    path, control = full
    with pytest.raises(SystemExit, match="is the input"):
        main([str(path), str(path)])
    base = tmp_path / "sd.safetensors"
    save_state_dict({"model.diffusion_model.out.0.weight": torch.ones(2)}, str(base))
    with pytest.raises(SystemExit, match="without a ControlNet"):
        main([str(base)])
    with pytest.raises(SystemExit, match="does not fit"):  # a ControlNet of another shape than the config's
        main([str(path), str(tmp_path / "x.safetensors"), "--config", str(ROOT / "models" / "cldm_v15.yaml")])
    assert not (tmp_path / "x.safetensors").exists()


def test_diffusers_round_trip_through_the_tool(full, tmp_path):
    path, control = full
    folder = tmp_path / "canny-diffusers"
    main([str(path), "--to-diffusers", str(folder), "--config", TINY_CLDM])
    assert (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file()
    with pytest.raises(SystemExit, match="already exists"):
        main([str(path), "--to-diffusers", str(folder), "--config", TINY_CLDM])
    back = tmp_path / "back.safetensors"
    main(["--from-diffusers", str(folder), str(back)])
    got = read(back)
    assert got.keys() == control.keys()
    assert all(got[k].dtype == v.dtype and torch.equal(got[k], v) for k, v in control.items())  # bit-exact


def test_script_runs(full, tmp_path):
    path, _ = full
    out = tmp_path / "c.safetensors"
    result = subprocess.run([sys.executable, str(ROOT / "tool_extract_control.py"), str(path), str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.is_file()
