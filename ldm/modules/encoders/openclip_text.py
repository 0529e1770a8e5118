"""OpenCLIP text tower in open_clip's parameter layout (SD2.x checkpoints, visual tower removed).

Keys, below the embedder's `model.`: `token_embedding.weight`, `positional_embedding`,
`transformer.resblocks.N.{ln_1, attn.{in_proj_weight, in_proj_bias, out_proj}, ln_2, mlp.c_fc, mlp.c_proj}`,
`ln_final`, `text_projection`, `logit_scale`. Attention keeps nn.MultiheadAttention's packed q/k/v
parameters but runs through the shared SDPA path.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .text_transformer import TextTransformerConfig, causal_self_attention, mlp


class PackedSelfAttention(nn.Module):
    """nn.MultiheadAttention's parameters (q, k, v stacked in `in_proj_*`), computed with causal SDPA."""

    def __init__(self, config: TextTransformerConfig):
        super().__init__()
        self.heads = config.heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * config.width, config.width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * config.width))
        self.out_proj = nn.Linear(config.width, config.width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return self.out_proj(causal_self_attention(q, k, v, self.heads))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: TextTransformerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.width, eps=config.eps)
        self.attn = PackedSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.width, eps=config.eps)
        self.mlp = mlp(config, names=("c_fc", "c_proj"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class OpenCLIPTextModel(nn.Module):
    """The text half of an open_clip `CLIP` model."""

    def __init__(self, config: TextTransformerConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        # A ModuleDict only to give the checkpoint's `transformer.resblocks.N` path.
        self.transformer = nn.ModuleDict(
            {"resblocks": nn.ModuleList(ResidualAttentionBlock(config) for _ in range(config.layers))}
        )
        self.ln_final = nn.LayerNorm(config.width, eps=config.eps)
        # Stored in every SD2.x file but unused by the SD text conditioning (it maps the pooled token into
        # CLIP's joint image-text space; ViT-H/14 projects to its own width).
        self.text_projection = nn.Parameter(torch.empty(config.width, config.width))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=config.width**-0.5)

    def forward(self, tokens: torch.Tensor, num_layers: int, final_norm: bool) -> torch.Tensor:
        """(B, T) ids -> (B, T, C) output of the first `num_layers` blocks, optionally through `ln_final`."""
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for block in self.transformer.resblocks[:num_layers]:
            x = block(x)
        return self.ln_final(x) if final_norm else x
