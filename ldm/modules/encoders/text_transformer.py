"""Pieces shared by the two CLIP text towers (SD1.x's OpenAI ViT-L/14, SD2.x's OpenCLIP ViT-H/14).

Both are the GPT-2-style causal transformer of CLIP (Radford et al. 2021): token + learned position
embeddings, pre-LayerNorm residual blocks, a final LayerNorm. They differ only in parameter names and
in the MLP activation, so the maths lives here and each layout module only names its parameters.
"""

import dataclasses
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class TextTransformerConfig:
    """Shape of a CLIP text tower; the defaults are OpenAI CLIP ViT-L/14 (SD1.x)."""

    vocab_size: int = 49408
    context_length: int = 77  # learned positions
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * width (3072 for ViT-L/14, 4096 for ViT-H/14)
    act: str = "quick_gelu"  # OpenAI-trained towers use QuickGELU; OpenCLIP-trained ones exact "gelu"
    eps: float = 1e-5  # LayerNorm epsilon

    def with_overrides(self, overrides: dict | None) -> "TextTransformerConfig":
        """A copy with `overrides` (e.g. a tiny test tower from the yaml's `text_config`) applied."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides or {}) - fields)
        if unknown:
            raise ValueError(f"unknown text_config keys {unknown}; allowed: {sorted(fields)}")
        config = dataclasses.replace(self, **(overrides or {}))
        if config.act not in ACTIVATIONS:
            raise ValueError(f"text_config act={config.act!r}; allowed: {sorted(ACTIVATIONS)}")
        if config.width % config.heads:
            raise ValueError(f"text_config width={config.width} is not divisible by heads={config.heads}")
        return config


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): OpenAI CLIP's cheap GELU approximation, which its weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


def mlp(config: TextTransformerConfig, names: tuple[str, str]) -> nn.Sequential:
    """Linear -> activation -> Linear, the two linears named as the checkpoint names them."""
    hidden = config.mlp_ratio * config.width
    return nn.Sequential(
        OrderedDict(
            [
                (names[0], nn.Linear(config.width, hidden)),
                ("act", ACTIVATIONS[config.act]()),
                (names[1], nn.Linear(hidden, config.width)),
            ]
        )
    )


def causal_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention of (B, T, C) projections where each token sees only itself and earlier ones."""
    B, T, C = q.shape
    q, k, v = (t.view(B, T, heads, C // heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C)
