"""Machine-specific inference speed-ups, applied explicitly by callers (the apps, the CLI, evaluation and the
benchmarks) on top of the plain model core: ``model = prepare_for_inference(model, device, dtype)``."""
from typing import Union

import torch
from torch import nn

from ldm.accel.cpu import accelerate_for_inference, restore
from ldm.accel.dtypes import DTYPE_CHOICES, preferred_dtype, resolve_dtype

__all__ = ["accelerate_for_inference", "restore", "preferred_dtype", "resolve_dtype", "prepare_for_inference",
           "DTYPE_CHOICES"]


def prepare_for_inference(model: nn.Module, device="cpu", dtype: Union[str, torch.dtype] = "auto",
                          accelerate: bool = True) -> nn.Module:
    """``model`` in eval mode on ``device`` in ``dtype`` ("auto": ``preferred_dtype``), with this machine's
    inference backend applied (``accelerate=False``: the plain model). Returns ``model``."""
    dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    model = model.to(device=device, dtype=dtype).eval()
    return accelerate_for_inference(model) if accelerate else model
