"""Shared annotator plumbing: image normalisation, checkpoint lookup/loading, the lazy `Detector` base.

Image rules reproduce upstream `annotator/util.py` (`HWC3`, `resize_image`); the checkpoint helpers add
what upstream lacks: one clear error for a missing, unreadable or wrong weight file.
"""
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

CKPT_ENV_VAR = "CONTROLNET_ANNOTATOR_CKPTS"
DEFAULT_CKPT_DIR = Path(__file__).resolve().parent / "ckpts"

_HF = "https://huggingface.co/lllyasviel"
CKPT_URLS = {
    "body_pose_model.pth": f"{_HF}/ControlNet/resolve/main/annotator/ckpts/body_pose_model.pth",
    "hand_pose_model.pth": f"{_HF}/ControlNet/resolve/main/annotator/ckpts/hand_pose_model.pth",
    "network-bsds500.pth": f"{_HF}/ControlNet/resolve/main/annotator/ckpts/network-bsds500.pth",
    "ControlNetHED.pth": f"{_HF}/Annotators/resolve/main/ControlNetHED.pth",
    "dpt_hybrid-midas-501f0c75.pt": f"{_HF}/ControlNet/resolve/main/annotator/ckpts/dpt_hybrid-midas-501f0c75.pt",
    "mlsd_large_512_fp32.pth": f"{_HF}/ControlNet/resolve/main/annotator/ckpts/mlsd_large_512_fp32.pth",
    "upernet_global_small.pth": f"{_HF}/ControlNet/resolve/main/annotator/ckpts/upernet_global_small.pth",
    # ControlNet 1.1 (lllyasviel/Annotators)
    "sk_model.pth": f"{_HF}/Annotators/resolve/main/sk_model.pth",
    "sk_model2.pth": f"{_HF}/Annotators/resolve/main/sk_model2.pth",
    "netG.pth": f"{_HF}/Annotators/resolve/main/netG.pth",
    "table5_pidinet.pth": f"{_HF}/Annotators/resolve/main/table5_pidinet.pth",
    "facenet.pth": f"{_HF}/Annotators/resolve/main/facenet.pth",
    "scannet.pt": f"{_HF}/Annotators/resolve/main/scannet.pt",
}


# ---------------------------------------------------------------------------------------------- images

def HWC3(x: np.ndarray) -> np.ndarray:
    """uint8 HxW, HxWx1, HxWx3 or HxWx4 -> HxWx3 (same array if already 3 channels; RGBA over white)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        raise ValueError(f"expected a uint8 numpy image, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {x.shape}")
    channels = x.shape[2]
    if channels == 3:
        return x
    if channels == 1:
        return np.concatenate([x, x, x], axis=2)
    rgb = x[:, :, :3].astype(np.float32)
    alpha = x[:, :, 3:].astype(np.float32) / 255.0
    return (rgb * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def check_rgb(img: np.ndarray, min_side: int = 1) -> np.ndarray:
    """Validate a detector input and return it as HxWx3 uint8 (grey and RGBA are converted by HWC3)."""
    img = HWC3(img)
    if min(img.shape[:2]) < min_side:
        raise ValueError(f"image of size {img.shape[1]}x{img.shape[0]} is too small: "
                         f"each side must be at least {min_side} px")
    return img


def resize_image(img: np.ndarray, resolution: int) -> np.ndarray:
    """Scale so the short side is ~`resolution`, each side rounded to a multiple of 64 (half to even)."""
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"cannot resize an empty image of shape {img.shape}")
    k = float(resolution) / min(h, w)
    new_h = int(np.round(h * k / 64.0)) * 64
    new_w = int(np.round(w * k / 64.0)) * 64
    if new_h == 0 or new_w == 0:
        raise ValueError(f"image of size {w}x{h} is too elongated for resolution {resolution}: "
                         f"one side rounds to 0 px")
    interpolation = cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA
    return cv2.resize(img, (new_w, new_h), interpolation=interpolation)


def safe_step(x: np.ndarray, step: int = 2) -> np.ndarray:
    """Quantise a 0..1 edge map to `step + 1` levels (1.1's "safe" soft edges): `int(x * (step + 1)) / step`,
    so with step 2 the map holds only 0, 0.5, 1 (and 1.5 where x == 1), in float32."""
    y = x.astype(np.float32) * float(step + 1)
    return y.astype(np.int32).astype(np.float32) / float(step)


# ----------------------------------------------------------------------------------------- checkpoints

class MissingWeightsError(FileNotFoundError):
    """A weight file is not where the annotator looks for it."""

    def __init__(self, filename: str, path: Path):
        name = Path(filename).name
        self.filename, self.path, self.url = name, path, CKPT_URLS.get(name, "(no known download URL)")
        super().__init__(f"missing annotator weights {name}: download {self.url} and put it at {path} "
                         f"(or set {CKPT_ENV_VAR} to the folder holding it)")

    def __str__(self):  # OSError would format its arguments as "[Errno ...]"
        return self.args[0]


class BadWeightsError(ValueError):
    """A weight file exists but is unreadable or holds the wrong network."""


def annotator_ckpt_dir() -> Path:
    """Folder holding annotator weights: $CONTROLNET_ANNOTATOR_CKPTS, else `annotator/ckpts/`."""
    return Path(os.environ.get(CKPT_ENV_VAR) or DEFAULT_CKPT_DIR)


def ckpt_path(filename: str, ckpt_dir=None) -> Path:
    """Where `filename` is looked up (an absolute `filename` is used as is)."""
    return Path(ckpt_dir or annotator_ckpt_dir()) / filename


_DECODE_ERRORS = (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, SafetensorError)


def load_checkpoint(filename: str, device="cpu", ckpt_dir=None) -> dict:
    """Read a weight file (`.pth/.pt` with weights_only=True, or `.safetensors`) onto `device`."""
    path = ckpt_path(filename, ckpt_dir)
    if not path.is_file():
        raise MissingWeightsError(filename, path)
    try:
        if path.suffix == ".safetensors":
            return load_safetensors(path, device=str(device))
        return torch.load(path, map_location=device, weights_only=True)
    except _DECODE_ERRORS as e:
        reason = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadWeightsError(f"{path.name} is corrupted or not a weight file ({path}): {reason}") from e


def strip_prefix(state_dict, prefix: str):
    """`state_dict` with `prefix` removed from the keys that start with it (e.g. DataParallel's `module.`);
    anything that is not a dict is returned as is, for `load_state_dict_strict` to reject."""
    if not isinstance(state_dict, dict):
        return state_dict
    return {(k[len(prefix):] if isinstance(k, str) and k.startswith(prefix) else k): v for k, v in state_dict.items()}


def unwrap_state_dict(checkpoint, key: str = "state_dict"):
    """The weights of a training checkpoint `{key: weights, 'epoch': ..., ...}`; a plain state dict as is."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
        return checkpoint[key]
    return checkpoint


def _first_few(items, limit=3) -> str:
    """'a, b, c (+n more)', sorted case-insensitively (`conv4_3_CPM` before `Mconv1_stage2`)."""
    items = sorted(items, key=str.lower)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_state_dict_strict(module: nn.Module, state_dict: dict, filename: str, kind: str) -> nn.Module:
    """Load `state_dict` into `module` with every key and shape matching, else raise BadWeightsError.

    `kind` names the expected network ("body-pose") for the message. Tensors are assigned, not copied,
    so `module` may be built on the meta device. Missing BatchNorm `num_batches_tracked` are filled with 0
    (PyTorch tolerates their absence and some files omit them).
    """
    if not isinstance(state_dict, dict):
        raise BadWeightsError(f"{filename} is not a {kind} file: it holds a {type(state_dict).__name__}")
    expected = module.state_dict()
    state_dict = dict(state_dict)
    for key in expected:
        if key.endswith("num_batches_tracked"):
            state_dict.setdefault(key, torch.zeros((), dtype=torch.long))
    missing = expected.keys() - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    problems = []
    if missing:
        problems.append(f"missing {_first_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_first_few(unexpected)}")
    if not problems:
        wrong = [f"{k} {list(state_dict[k].shape)} (expected {list(v.shape)})"
                 for k, v in expected.items() if state_dict[k].shape != v.shape]
        if wrong:
            problems.append(f"wrong shape {_first_few(wrong)}")
    if problems:
        raise BadWeightsError(f"{filename} is not a {kind} file: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d inside a Sequential into that conv
    (the BN becomes Identity): same outputs, one pass less over each activation."""
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
    return module


# -------------------------------------------------------------------------------------------- detector

class Detector:
    """Base for network annotators: remembers device/dtype/ckpt_dir; nets load on first use.

    Subclasses expose each net as a `functools.cached_property` returning `self.load_net(...)`, so
    constructing a detector is free and a missing file only surfaces when the detector is first called.
    """

    def __init__(self, device="cpu", dtype=torch.float32, ckpt_dir=None):
        self.device = torch.device(device)
        self.dtype = dtype
        self.ckpt_dir = ckpt_dir

    def read_weights(self, filename: str) -> dict:
        """The raw checkpoint object of `filename`, loaded onto the detector's device."""
        return load_checkpoint(filename, self.device, self.ckpt_dir)

    def build_net(self, net_class, state_dict: dict, filename: str, kind: str,
                  channels_last: bool = False, fold_bn: bool = False) -> nn.Module:
        """Instantiate `net_class()` on the meta device (no wasted random init), load `state_dict` strictly,
        move to device/dtype, eval mode. `net_class.__init__` must not create non-persistent buffers.

        channels_last: store conv weights NHWC, which oneDNN/cuDNN convolve faster (~20% for VGG on CPU);
        `to_tensor` already yields NHWC-strided inputs.
        fold_bn: fold BatchNorms into their convs (`fold_batchnorm`), in float32 before any dtype cast.
        """
        with torch.device("meta"):
            net = net_class()
        load_state_dict_strict(net, state_dict, filename, kind)
        net = net.to(self.device).eval().requires_grad_(False)
        if fold_bn:
            net = fold_batchnorm(net)
        net = net.to(self.dtype)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net

    def load_net(self, net_class, filename: str, kind: str, **options) -> nn.Module:
        """`build_net` from a plain state-dict file; `options` as there."""
        return self.build_net(net_class, self.read_weights(filename), filename, kind, **options)

    def to_tensor(self, array: np.ndarray) -> torch.Tensor:
        """HxWxC numpy -> 1xCxHxW tensor on the detector's device/dtype (NHWC strides: no transposing copy)."""
        return torch.from_numpy(np.ascontiguousarray(array))[None].permute(0, 3, 1, 2).to(self.device, self.dtype)
