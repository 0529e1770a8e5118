"""Load a ControlLDM from the files people hold: a full checkpoint, or a Stable Diffusion base plus a ControlNet.

A ControlNet comes as a full ControlLDM checkpoint (1.0's ``control_sd15_*.pth``), a control-only file (1.1's
``control_v11*_sd15_*.pth``, keys ``control_model.*`` only, fp32 or fp16), a file of bare ControlNet keys
(``input_hint_block.*``, as some SD2 ControlNets ship), or diffusers' format (a folder with ``config.json`` +
``diffusion_pytorch_model.safetensors``, or such a single file). ``open_weights`` reads any of them as a
``WeightFile``: keys and shapes first (for the strict checks of ``cldm.model.check_state_dict``), then each
tensor copied straight into the model's own parameter, converted to its dtype on the way.

Memory: nothing is loaded whole. A ``.safetensors`` file is read tensor by tensor with plain reads into the
parameters (no mapping, no intermediate copy when the dtypes agree); a zip ``.pth``/``.ckpt`` is memory-mapped
and each tensor's pages are handed back to the OS once copied (Linux). Peak memory is the model plus one tensor.
"""
import ctypes
import json
import logging
import mmap
import os
import sys
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from cldm.model import CheckpointError, LoadReport, check_state_dict

log = logging.getLogger(__name__)

CONTROL = "control_model."
UNET = "model.diffusion_model."
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


# --- reading tensors one at a time --------------------------------------------------------------------------

class WeightFile:
    """The tensors of one checkpoint under their names, read lazily. Subclasses supply the reading."""

    def __init__(self, path: str):
        self.path = str(path)

    def shapes(self) -> Dict[str, torch.Size]:
        raise NotImplementedError

    def dtypes(self) -> Dict[str, torch.dtype]:
        raise NotImplementedError

    def copy_into(self, key: str, dst: torch.Tensor) -> None:
        """Copy tensor ``key`` into ``dst`` (same shape), converting to ``dst``'s dtype."""
        raise NotImplementedError

    def tensor(self, key: str) -> torch.Tensor:
        out = torch.empty(self.shapes()[key], dtype=self.dtypes()[key])
        self.copy_into(key, out)
        return out

    def meta_state_dict(self) -> Dict[str, torch.Tensor]:
        """Keys and shapes only, for ``check_state_dict``."""
        return {k: torch.empty(s, dtype=self.dtypes()[k], device="meta") for k, s in self.shapes().items()}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SafetensorsFile(WeightFile):
    """A ``.safetensors`` file read with ``readinto`` straight into the destination (no mmap: the page cache
    is not charged to the process, and nothing is mapped while the model fills)."""

    def __init__(self, path: str):
        super().__init__(path)
        self._file = open(path, "rb")
        try:
            header_len = int.from_bytes(self._file.read(8), "little")
            if not 2 <= header_len <= 100_000_000:
                raise ValueError(f"header length {header_len}")
            header = json.loads(self._file.read(header_len))
        except Exception as e:
            self._file.close()
            raise CheckpointError(f"cannot read checkpoint {path}: not a valid safetensors file ({e})") from e
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + header_len
        self._entries = header
        size = os.path.getsize(path)
        for key, entry in header.items():
            if entry.get("dtype") not in _SAFETENSORS_DTYPES:
                raise CheckpointError(f"{path}: tensor {key} has the unsupported dtype {entry.get('dtype')}")
            if self._data_start + entry["data_offsets"][1] > size:
                raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated (tensor {key} "
                                      f"ends past its {size} bytes): an interrupted download?")

    def shapes(self):
        return {k: torch.Size(e["shape"]) for k, e in self._entries.items()}

    def dtypes(self):
        return {k: _SAFETENSORS_DTYPES[e["dtype"]] for k, e in self._entries.items()}

    def copy_into(self, key, dst):
        entry = self._entries[key]
        begin, end = entry["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        direct = dst.dtype == dtype and dst.is_contiguous() and dst.device.type == "cpu"
        buf = dst if direct else torch.empty(dst.shape, dtype=dtype)
        self._file.seek(self._data_start + begin)
        view = buf.detach().reshape(-1).view(torch.uint8).numpy()
        if view.nbytes != end - begin:
            raise CheckpointError(f"{self.path}: tensor {key} holds {end - begin} bytes, expected {view.nbytes}")
        if self._file.readinto(view) != view.nbytes:
            raise CheckpointError(f"cannot read checkpoint {self.path}: tensor {key} is cut short")
        if not direct:
            with torch.no_grad():
                dst.copy_(buf)

    def close(self):
        self._file.close()


class TorchFile(WeightFile):
    """A ``.pth``/``.ckpt`` read with ``torch.load(weights_only=True)``, memory-mapped for zip files; a copied
    tensor's pages are released at once, so the mapping does not grow to the whole file."""

    def __init__(self, path: str, sd: Optional[Dict[str, torch.Tensor]] = None):
        super().__init__(path)
        if sd is None:
            from cldm.model import load_state_dict
            sd = load_state_dict(path)  # mmap for zip files; unwraps 'state_dict'; clear errors
        self._sd = sd
        self._mapped = zipfile.is_zipfile(path) if os.path.isfile(path) else False

    def shapes(self):
        return {k: v.shape for k, v in self._sd.items()}

    def dtypes(self):
        return {k: v.dtype for k, v in self._sd.items()}

    def copy_into(self, key, dst):
        src = self._sd[key]
        with torch.no_grad():
            dst.copy_(src)
        if self._mapped:
            _release_pages(src)

    def tensor(self, key):
        return self._sd[key]

    def close(self):
        self._sd = {}


class RenamedFile(WeightFile):
    """Another file's tensors under other names (``names``: new -> old)."""

    def __init__(self, inner: WeightFile, names: Dict[str, str], kind: str = ""):
        super().__init__(inner.path)
        self.inner, self.names, self.kind = inner, names, kind

    def shapes(self):
        inner = self.inner.shapes()
        return {new: inner[old] for new, old in self.names.items()}

    def dtypes(self):
        inner = self.inner.dtypes()
        return {new: inner[old] for new, old in self.names.items()}

    def copy_into(self, key, dst):
        self.inner.copy_into(self.names[key], dst)

    def tensor(self, key):
        return self.inner.tensor(self.names[key])

    def close(self):
        self.inner.close()


def _release_pages(t: torch.Tensor) -> None:
    """Hand the memory-mapped pages under ``t`` back to the OS (``MADV_DONTNEED`` on a private file mapping:
    the data stays readable from the file). A no-op off Linux."""
    if not sys.platform.startswith("linux") or t.numel() == 0:
        return
    page = mmap.PAGESIZE
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    first, last = -(-start // page) * page, end // page * page  # whole pages inside the tensor only
    if last > first:
        _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 4)  # 4 = MADV_DONTNEED


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _LIBC


def open_file(path) -> WeightFile:
    """A checkpoint file or diffusers folder as a ``WeightFile`` of its own key names (diffusers' names for a
    diffusers folder: see ``open_weights`` for the conversion)."""
    path = str(path)
    if os.path.isdir(path):
        for name in DIFFUSERS_WEIGHTS:
            if os.path.isfile(os.path.join(path, name)):
                return open_file(os.path.join(path, name))
        raise CheckpointError(f"{path} is a folder without {' or '.join(DIFFUSERS_WEIGHTS)}: not a diffusers model "
                              "folder")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        if os.path.getsize(path) == 0:
            raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes): an interrupted "
                                  "download?")
        return SafetensorsFile(path)
    return TorchFile(path)


# --- what a file holds ----------------------------------------------------------------------------------------

def classify(keys) -> str:
    """'full' (SD + ControlNet), 'sd' (no ControlNet), 'control' (``control_model.*`` only), 'bare-control'
    (ControlNet keys without prefix), 'diffusers-control' (diffusers' ControlNetModel names) or 'other'."""
    keys = list(keys)
    has_control = any(k.startswith(CONTROL) for k in keys)
    has_unet = any(k.startswith(UNET) for k in keys)
    if has_control and has_unet:
        return "full"
    if has_control:
        return "control" if all(k.startswith(CONTROL) for k in keys) else "full"
    if has_unet:
        return "sd"
    if "input_hint_block.0.weight" in keys:
        return "bare-control"
    if "controlnet_cond_embedding.conv_in.weight" in keys:
        return "diffusers-control"
    return "other"


def control_weights(path) -> WeightFile:
    """The ControlNet of any supported file, under the ControlNet module's own key names (no prefix)."""
    from cldm.formats import diffusers as dformat

    raw = open_file(path)
    kind = classify(raw.shapes())
    if kind in ("full", "control"):
        names = {k[len(CONTROL):]: k for k in raw.shapes() if k.startswith(CONTROL)}
    elif kind == "bare-control":
        names = {k: k for k in raw.shapes()}
    elif kind == "diffusers-control":
        config = dformat.read_config(path)
        names = dformat.from_diffusers_names(list(raw.shapes()), dformat.layers_per_block(config, raw.shapes()))
    else:
        raw.close()
        what = "a Stable Diffusion checkpoint without a ControlNet" if kind == "sd" else "no ControlNet weights"
        raise CheckpointError(f"{path} holds {what} (no '{CONTROL}*', 'input_hint_block.*' or diffusers "
                              "'controlnet_cond_embedding.*' keys): pass a ControlNet file as the control, and a "
                              "Stable Diffusion file as the base")
    return RenamedFile(raw, names, kind)


# --- loading into a model -------------------------------------------------------------------------------------

@dataclass
class WeightsReport:
    """What ``load_model_weights`` did, per file."""
    base: Optional[LoadReport] = None
    control: Optional[LoadReport] = None
    replaced: List[str] = field(default_factory=list)  # base keys overwritten by the control file
    dtypes: Dict[str, List[str]] = field(default_factory=dict)  # file -> dtypes read


def fill(module: torch.nn.Module, source: WeightFile, keys=None) -> int:
    """Copy ``source``'s tensors into ``module``'s parameters and buffers of the same names; returns the count."""
    own = module.state_dict(keep_vars=True)
    count = 0
    for key in (source.shapes() if keys is None else keys):
        dst = own.get(key)
        if dst is None:
            continue
        source.copy_into(key, dst.data)
        count += 1
    return count


def _dtype_names(source: WeightFile) -> List[str]:
    return sorted({str(d).replace("torch.", "") for d in source.dtypes().values()})


def load_model_weights(model: torch.nn.Module, checkpoint=None, base=None, check_only: bool = False) -> WeightsReport:
    """Fill a ControlLDM from ``checkpoint`` alone (a full file), or from ``base`` (any SD file of the
    config's family; a full ControlLDM file too) plus ``checkpoint`` as the ControlNet (any format above).

    Strict: every model key must come from a file, except the known drifts of ``cldm.model``; a file that
    does not fit raises ``CheckpointError`` naming it, before anything is copied. ``check_only``: the checks
    alone (a ``meta`` model is enough), nothing is read but the files' key lists.
    """
    report = WeightsReport()
    if base is None:
        with open_file(checkpoint) as ckpt:
            kind = classify(ckpt.shapes())
            if kind not in ("full", "sd"):
                raise CheckpointError(
                    f"{checkpoint} holds only a ControlNet ({kind.replace('-', ' ')} file): name a Stable Diffusion "
                    f"base checkpoint for it too (apps: --base BASE --control {checkpoint}; Python: "
                    "load_model_weights(model, control, base=BASE))")
            report.base = check_state_dict(model, ckpt.meta_state_dict(), source=str(checkpoint))
            if not check_only:
                fill(model, ckpt)
            report.dtypes[str(checkpoint)] = _dtype_names(ckpt)
        return report

    with open_file(base) as base_file:
        if classify(base_file.shapes()) in ("control", "bare-control", "diffusers-control"):
            raise CheckpointError(f"{base} holds only a ControlNet: the base must be a Stable Diffusion checkpoint "
                                  "(e.g. v1-5-pruned.ckpt), and the ControlNet goes in as the control")
        report.base = check_state_dict(model, base_file.meta_state_dict(), allow_missing=(CONTROL,), source=str(base))
        report.replaced = [k for k in base_file.shapes() if k.startswith(CONTROL)]
        if checkpoint is None and report.base.missing:
            raise CheckpointError(f"{base} holds no ControlNet: name a ControlNet file to go with it")
        if checkpoint is not None:  # check the control file too before filling anything
            with control_weights(checkpoint) as source:
                check_state_dict(model.control_model, source.meta_state_dict(), source=str(checkpoint))
        if not check_only:
            fill(model, base_file, [k for k in base_file.shapes() if not k.startswith(CONTROL)])
        report.dtypes[str(base)] = _dtype_names(base_file)
    if checkpoint is not None:
        control = load_control_weights(model.control_model, checkpoint, check_only)
        report.control, report.dtypes[str(checkpoint)] = control.control, control.dtypes[str(checkpoint)]
        if report.replaced:
            log.info("%s: its %d ControlNet tensors are replaced by %s", base, len(report.replaced), checkpoint)
    return report


def load_control_weights(net: torch.nn.Module, path, check_only: bool = False) -> WeightsReport:
    """Fill a ControlNet module from any ControlNet file (see ``control_weights``), strictly."""
    report = WeightsReport()
    with control_weights(path) as source:
        report.control = check_state_dict(net, source.meta_state_dict(), source=str(path))
        if not check_only:
            fill(net, source)
        report.dtypes[str(path)] = _dtype_names(source)
    log.info("%s: ControlNet loaded (%s)", path, report.control.summary())
    return report


def file_kind(path) -> str:
    """``classify`` of a file's keys, reading only its header (safetensors) or index (zip)."""
    with open_file(path) as f:
        return classify(f.shapes())
