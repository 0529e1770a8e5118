"""Random stand-ins for the real annotator weight files, built from the key layouts in
`annotator/manifests/*.json` (ControlNet 1.1 files) and `shared/manifests/annotators/*.json` (1.0 files).

The files are saved exactly as the real ones are stored (plain state dict, mmcv's `{'state_dict', 'meta'}`
container, or a training checkpoint `{'state_dict'}` / `{'model'}`), so a detector's own loader can be tested without
the real weights.
Values are scaled like a fan-in initialisation so random nets give finite, non-trivial maps.
"""
import atexit
import functools
import json
import math
import shutil
import tempfile
from pathlib import Path

import cv2
import pytest
import torch

from annotator.util import resize_image

_REPO = Path(__file__).resolve().parents[1]
_CANDIDATES = [_REPO / "shared", _REPO.parent / "shared"]
SHARED_DIR = next((d for d in _CANDIDATES if (d / "manifests").is_dir()), _CANDIDATES[-1])
MANIFEST_DIR = _REPO / "tests" / "manifests" / "annotators"  # the 1.0 annotator files, kept in the repository
REPO_MANIFEST_DIR = _REPO / "annotator" / "manifests"  # kept in the repository
TEST_IMGS = SHARED_DIR / "test_imgs"


def load_test_image(name: str, resolution: int = 64):
    """`shared/test_imgs/<name>` as RGB uint8, `resize_image`d small for fast tests; skips if absent."""
    path = TEST_IMGS / name
    if not path.is_file():
        pytest.skip(f"test image {path} not available")
    return resize_image(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), resolution)


def _manifest_folder(name: str) -> Path:
    return REPO_MANIFEST_DIR if (REPO_MANIFEST_DIR / f"{name}.json").is_file() else MANIFEST_DIR


def manifest(name: str) -> dict:
    """Key -> shape of weight file `name`; skips the calling test when the manifests are absent."""
    path = _manifest_folder(name) / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"manifest {path} not available")
    return json.loads(path.read_text())


def manifest_container(name: str) -> str:
    """'plain', 'mmcv', 'checkpoint' or 'model_checkpoint', as listed in the manifest index."""
    return json.loads((_manifest_folder(name) / "index.json").read_text())[name]["container"]


def _random_tensor(key: str, shape, gen: torch.Generator) -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.zeros((), dtype=torch.long)
    if key.endswith("running_var"):
        return torch.rand(shape, generator=gen) + 0.5
    if key.endswith("running_mean") or key.endswith("bias"):
        return torch.randn(shape, generator=gen) * 0.1
    if len(shape) <= 1 and key.endswith("weight"):  # norm scales
        return 1.0 + torch.randn(shape, generator=gen) * 0.1
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    return torch.randn(shape, generator=gen) * math.sqrt(2.0 / max(fan_in, 1))


def random_meta(num_classes: int = 150) -> dict:
    """An mmseg-style `meta` with synthetic class names and a deterministic palette."""
    gen = torch.Generator().manual_seed(1)
    palette = torch.randint(0, 256, (num_classes, 3), generator=gen).tolist()
    return {"CLASSES": tuple(f"class{i}" for i in range(num_classes)), "PALETTE": palette}


def make_random_state_dict(manifest_name: str, drop_num_batches_tracked: bool = False, seed: int = 0) -> dict:
    """Random tensors with the manifest's keys and shapes (float32; num_batches_tracked int64 scalars)."""
    gen = torch.Generator().manual_seed(seed)
    return {key: _random_tensor(key, shape, gen) for key, shape in manifest(manifest_name).items()
            if not (drop_num_batches_tracked and key.endswith("num_batches_tracked"))}


def make_random_weights(manifest_name: str, path, drop_num_batches_tracked: bool = False,
                        container: str = None, meta: dict = None, seed: int = 0) -> Path:
    """Save a random stand-in for `manifest_name` at `path` (a file or a folder) and return the file path.

    container: 'plain' (the dict itself), 'mmcv' (`{'state_dict': ..., 'meta': meta or random_meta()}`),
    'checkpoint' (`{'state_dict': ...}`) or 'model_checkpoint' (`{'model': ...}`); default: the real file's.
    """
    path = Path(path)
    if path.is_dir():
        path = path / manifest_name
    state = make_random_state_dict(manifest_name, drop_num_batches_tracked, seed)
    container = container or manifest_container(manifest_name)
    if container == "mmcv":
        obj = {"state_dict": state, "meta": meta if meta is not None else random_meta()}
    elif container == "checkpoint":
        obj = {"state_dict": state}
    elif container == "model_checkpoint":
        obj = {"model": state}
    elif container == "plain":
        obj = state
    else:
        raise ValueError(f"unknown container {container!r}: use 'plain', 'mmcv' or 'checkpoint'")
    torch.save(obj, path)
    return path


@functools.lru_cache(maxsize=None)
def _shared_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="annotator-ckpts-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def random_ckpt_dir(*names: str) -> Path:
    """A temporary folder holding random stand-ins for weight files `names`, shared by the whole test
    process (each file is written once: the OpenPose ones take ~1 s) and removed at exit. Tests must not
    modify it; use `make_random_weights` into `tmp_path` for that."""
    folder = _shared_folder()
    for name in names:
        if not (folder / name).is_file():
            make_random_weights(name, folder)
    return folder
