"""Checkpoint files on disk: formats, wrappers, safety and clear errors."""
import pickle

import pytest
import torch

from cldm.model import CheckpointError, load_checkpoint, load_state_dict, save_state_dict
from tests.conftest import build_tiny


@pytest.fixture(scope="module")
def tiny_sd():
    return build_tiny().state_dict()


@pytest.mark.parametrize("ext", [".safetensors", ".ckpt", ".pth"])
def test_roundtrip_by_extension(tmp_path, tiny_sd, ext):
    path = str(tmp_path / f"m{ext}")
    save_state_dict(tiny_sd, path)
    loaded = load_state_dict(path)
    assert loaded.keys() == tiny_sd.keys() and all(torch.equal(loaded[k], tiny_sd[k]) for k in tiny_sd)
    report = load_checkpoint(build_tiny(seed=3), path)
    assert report.summary() == "exact match"


def test_lightning_style_wrapper_is_unwrapped(tmp_path, tiny_sd):
    path = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": tiny_sd, "global_step": 7, "epoch": 1}, path)
    assert load_state_dict(str(path)).keys() == tiny_sd.keys()


def test_never_overwrites_and_leaves_no_temp_file(tmp_path, tiny_sd):
    path = tmp_path / "out.pth"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="out.pth"):
        save_state_dict(tiny_sd, str(path))
    assert path.read_bytes() == b"precious" and sorted(p.name for p in tmp_path.iterdir()) == ["out.pth"]


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": _Evil()}}, f)
    with pytest.raises(CheckpointError, match="evil.ckpt"):
        load_state_dict(str(path))
    assert "pickled code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("ext", [".safetensors", ".pth"])
def test_truncated_file_names_the_file(tmp_path, tiny_sd, ext):
    path = tmp_path / f"full{ext}"
    save_state_dict(tiny_sd, str(path))
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint .*cut{ext}"):
        load_state_dict(str(cut))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_state_dict(str(tmp_path / "nowhere.pth"))


def test_shape_mismatch_lists_keys(tiny_sd):
    bad = dict(tiny_sd)
    bad["control_model.zero_convs.0.0.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(CheckpointError, match=r"zero_convs.0.0.weight: file \[1, 1, 1, 1\] vs model \[32, 32, 1, 1\]"):
        load_checkpoint(build_tiny(), bad, source="bad.pth")


@pytest.mark.parametrize("ext", [".safetensors", ".pth", ".ckpt"])
def test_empty_file_is_a_clean_error_naming_the_file(tmp_path, ext):
    path = tmp_path / f"empty{ext}"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint .*empty{ext}: the file is empty \(0 bytes\)"):
        load_state_dict(str(path))


@pytest.mark.parametrize("ext", [".safetensors", ".pth"])
@pytest.mark.parametrize("keep", [1, 8, 64, 512])
def test_file_cut_anywhere_is_a_clean_error(tmp_path, tiny_sd, ext, keep):
    path = tmp_path / f"full{ext}"
    save_state_dict(tiny_sd, str(path))
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint .*cut{ext}: "):
        load_state_dict(str(cut))
