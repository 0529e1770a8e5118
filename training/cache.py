"""Cached encodings (``--cache-latents``, ``--cache-text``): the VAE posterior of every training image and the
text-encoder output of every caption, computed once into safetensors files, so training steps skip both encoders.

- What is cached is what the uncached step computes before drawing any random number: the posterior's moments
  (mean and clamped log-variance), from which each step still draws its own latent sample, and the caption's
  context. A cached run's losses therefore equal an uncached run's up to fp32 rounding (the encoders ran at batch
  size 1 rather than the training batch); tests/test_cache.py checks it.
- Files: ``<cache dir>/latents-<key>.safetensors`` and ``text-<key>.safetensors``, by default in ``.encodings/``
  next to the data (``--cache-dir`` elsewhere). The key is a SHA-256 over the encoder's weights, the transform
  settings and every sample's identity (file name, size and modification time; captions verbatim), so changing
  any of them makes a new cache instead of reusing a stale one. Files are written atomically.
- Latents need a deterministic image: no ``--random-crop`` or ``--flip`` (one encoding per image). Prompt
  dropout works with the text cache: the empty prompt's context is cached too.
"""
import hashlib
import logging
import os
import time
from typing import Dict, List, Optional

import torch
from einops import rearrange
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from cldm.cldm import ControlLDM
from training.model import TrainControlLDM

log = logging.getLogger(__name__)


CachedControlLDM = TrainControlLDM  # the model class that reads cached encodings


def _tensor_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _identity(dataset: Dataset, index: int) -> str:
    """A sample's file identity: name, size and modification time of its image."""
    if hasattr(dataset, "records"):
        blob = dataset.records[index].image
        path, extra = blob.path, f"{blob.member}@{blob.offset}"
    else:  # PromptDataset
        path, extra = os.path.join(dataset.root, dataset.items[index]["target"]), ""
    st = os.stat(path)
    return f"{path}|{extra}|{st.st_size}|{st.st_mtime_ns}"


def _caption(dataset: Dataset, index: int) -> str:
    if hasattr(dataset, "records"):
        return dataset.records[index].caption
    return dataset.items[index]["prompt"]


def _image(dataset: Dataset, index: int) -> torch.Tensor:
    """The (1, 3, H, W) image of a sample as the uncached step sees it (prompt dropout does not touch it)."""
    item = dataset.load(index) if hasattr(dataset, "load") else dataset[index]
    return rearrange(torch.from_numpy(item["jpg"]), "h w c -> 1 c h w").float()


def _settings(dataset: Dataset) -> str:
    return repr({k: getattr(dataset, k, None) for k in ("resolution", "buckets", "random_crop", "flip")})


def cache_dir_for(data_root: str) -> str:
    base = data_root if os.path.isdir(data_root) else os.path.dirname(os.path.abspath(data_root))
    return os.path.join(base, ".encodings")


def cache_key(kind: str, encoder: torch.nn.Module, dataset: Dataset) -> str:
    h = hashlib.sha256(f"{kind}\n{_tensor_digest(encoder)}\n{_settings(dataset)}\n".encode())
    for i in range(len(dataset)):
        h.update((_identity(dataset, i) if kind == "latents" else _caption(dataset, i)).encode() + b"\n")
    return h.hexdigest()[:20]


def _save_atomic(tensors: Dict[str, torch.Tensor], path: str, meta: Dict[str, str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _wait_for(path: str, timeout: float = 24 * 3600) -> None:
    """Other ranks wait while rank 0 writes the cache."""
    deadline = time.monotonic() + timeout
    while not os.path.isfile(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the encoding cache {path} did not appear (rank 0 writes it)")
        time.sleep(2.0)


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0 and \
        int(os.environ.get("LOCAL_RANK", "0")) == 0


@torch.no_grad()
def build_cache(model: ControlLDM, dataset: Dataset, kind: str, folder: str) -> str:
    """The cache file of ``kind`` ('latents' or 'text') for ``dataset``, computed if missing; its path."""
    if kind == "latents" and (getattr(dataset, "random_crop", False) or getattr(dataset, "flip", False)):
        raise ValueError("--cache-latents stores one encoding per image: it cannot be combined with --random-crop "
                         "or --flip")
    encoder = model.first_stage_model if kind == "latents" else model.cond_stage_model
    path = os.path.join(folder, f"{kind}-{cache_key(kind, encoder, dataset)}.safetensors")
    if os.path.isfile(path):
        log.info("encoding cache: using %s", path)
        return path
    if not _is_rank_zero():
        _wait_for(path)
        return path
    start = time.perf_counter()
    tensors: Dict[str, torch.Tensor] = {}
    device = model.device
    for i in range(len(dataset)):
        if kind == "latents":
            posterior = model.encode_first_stage(_image(dataset, i).to(device))
            tensors[str(i)] = torch.cat([posterior.mean, posterior.logvar], 1)[0].float().cpu().contiguous()
        else:
            tensors[str(i)] = model.get_learned_conditioning([_caption(dataset, i)])[0].float().cpu().contiguous()
    if kind == "text":
        tensors["empty"] = model.get_learned_conditioning([""])[0].float().cpu().contiguous()
    _save_atomic(tensors, path, {"kind": kind, "samples": str(len(dataset))})
    log.info("encoding cache: %d %s encoded in %.1f s into %s", len(dataset), kind, time.perf_counter() - start, path)
    return path


class CachedDataset(Dataset):
    """The items of ``dataset`` with ``moments`` (instead of ``jpg``) and/or ``context`` from cache files."""

    def __init__(self, dataset: Dataset, latents: Optional[str] = None, text: Optional[str] = None):
        self.dataset, self.latents, self.text = dataset, latents, text
        self._files: Dict[str, object] = {}

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}

    def __len__(self) -> int:
        return len(self.dataset)

    def groups(self) -> Optional[List]:
        return self.dataset.groups() if hasattr(self.dataset, "groups") else None

    def _get(self, path: str, key: str) -> torch.Tensor:
        if path not in self._files:
            self._files[path] = safe_open(path, framework="pt")
        return self._files[path].get_tensor(key)

    def __getitem__(self, index: int):
        item = dict(self.dataset[index])
        if self.latents:
            item.pop("jpg", None)
            item["moments"] = self._get(self.latents, str(index))
        if self.text:
            item["context"] = self._get(self.text, "empty" if item["txt"] == "" else str(index))
        return item
