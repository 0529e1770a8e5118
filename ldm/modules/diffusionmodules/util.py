"""Building blocks shared by the UNet, the ControlNet and the diffusion schedule."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _torch_checkpoint


def linear_beta_schedule(n_timestep: int, linear_start: float, linear_end: float) -> np.ndarray:
    """Stable Diffusion's "linear" schedule: linear in sqrt(beta), computed in float64 as upstream."""
    return np.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=np.float64) ** 2


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding (b,) -> (b, dim), cosines first then sines (the GLIDE/LDM convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it (the paper's zero convolutions)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in at least float32 whatever the activation dtype (fp16 statistics overflow);
    float64 stays float64."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        weight = None if self.weight is None else self.weight.to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.group_norm(x.to(dtype), self.num_groups, weight, bias, self.eps).to(x.dtype)


class InPlaceSiLU(nn.Module):
    """SiLU that overwrites its input when no graph is recorded (one activation-sized buffer less per use);
    only for inputs nothing else reads, such as a GroupNorm's output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=not torch.is_grad_enabled())


def normalization(channels: int) -> nn.Module:
    return GroupNorm32(32, channels)


def repeat_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` tiled along dim 0 to ``rows`` rows; ``x`` itself when it has them.

    Classifier-free guidance evaluates the same latents under two contexts. The UNet takes those latents
    once (b rows) with the 2b context rows, and tiles its activations only where the contexts first make
    the rows differ, the first cross-attention: everything before it (the first convolutions and ResBlock,
    the first self-attention, the ControlNet's hint encoder) runs once instead of twice.
    """
    if x.shape[0] == rows:
        return x
    if rows % x.shape[0]:
        raise ValueError(f"cannot tile {x.shape[0]} rows to {rows}: contexts must be a multiple of the latents")
    return torch.cat([x] * (rows // x.shape[0]))  # keeps x's memory layout (channels-last), unlike repeat


def maybe_checkpoint(fn, *args, enabled: bool):
    """Gradient checkpointing when enabled and a graph is being recorded; a plain call otherwise."""
    if enabled and torch.is_grad_enabled():
        return _torch_checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
