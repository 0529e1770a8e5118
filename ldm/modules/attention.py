"""Transformer blocks of the Stable Diffusion UNet (upstream ``ldm/modules/attention.py``).

Attention goes through ``torch.nn.functional.scaled_dot_product_attention``, which picks the fused kernel
for the device and dtype (its default scale is upstream's ``dim_head ** -0.5``). It sits in a parameter-free
module, ``ScaledDotProductAttention``, so that an inference backend (``ldm.accel``) can put another kernel in
its place. ``FeedForward`` runs its 8x-wide hidden layer over a bounded number of tokens at a time.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ldm.modules.diffusionmodules.util import maybe_checkpoint, repeat_rows, zero_module

# Token rows per FeedForward chunk: the (rows, 8 * dim) hidden activations then fit in the CPU's cache
# (a 64x64 latent's 8192 rows at width 2560 would be 84 MB), and peak memory stays bounded.
FEED_FORWARD_ROWS = 2048


class ScaledDotProductAttention(nn.Module):
    """softmax(q k^T / sqrt(d)) v per head, on (b, n, heads * d) queries and (b, m, heads * d) keys and values."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        out = F.scaled_dot_product_attention(*(rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v)))
        return rearrange(out, "b h n d -> b n (h d)")


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` (b, n, query_dim) over ``context`` (b, m, context_dim), or itself."""

    def __init__(self, query_dim: int, context_dim: Optional[int] = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.context_dim = context_dim
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.attention = ScaledDotProductAttention()
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x if context is None else context
        # q, k and v live only as the attention's arguments, so they are freed before the output projection
        out = self.attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out(out)


class GEGLU(nn.Module):
    """GELU-gated linear unit (Shazeer 2020): one projection to (value, gate) halves, ``value * gelu(gate)``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU MLP with 4x expansion (keys ``net.0.proj``, ``net.2``), applied to ``FEED_FORWARD_ROWS``
    token rows at a time (each row is independent, so the result is the same)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] <= FEED_FORWARD_ROWS:
            return self.net(x)
        return torch.cat([self.net(chunk) for chunk in rows.split(FEED_FORWARD_ROWS)]).view(*x.shape[:-1], -1)


class BasicTransformerBlock(nn.Module):
    """Pre-LN block: self-attention, cross-attention to the text, feed-forward."""

    def __init__(self, dim: int, n_heads: int, d_head: int, dropout: float = 0.0,
                 context_dim: Optional[int] = None, use_checkpoint: bool = False):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        return maybe_checkpoint(self._forward, x, context, enabled=self.use_checkpoint)

    def _forward(self, x, context):
        # each residual is added into the sublayer's fresh output (no backward needs it)
        h = self.attn1(self.norm1(x))
        h += x
        if context is not None:  # latents shared by several contexts part here (repeat_rows)
            h = repeat_rows(h, context.shape[0])
        x = self.attn2(self.norm2(h), context=context)
        x += h
        h = self.ff(self.norm3(x))
        h += x
        return h


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class SpatialTransformer(nn.Module):
    """Image features (b, c, h, w) -> tokens -> transformer blocks -> back, with a residual.

    ``use_linear`` (SD2) projects tokens with Linear layers after flattening instead of 1x1 convs before.
    """

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1, dropout: float = 0.0,
                 context_dim: Optional[int] = None, use_linear: bool = False, use_checkpoint: bool = False):
        super().__init__()
        inner_dim = n_heads * d_head
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        self.use_linear = use_linear
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
            self.proj_out = zero_module(nn.Linear(inner_dim, in_channels))
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, 1)
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, 1))
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, dropout, context_dim, use_checkpoint)
            for _ in range(depth))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        _, _, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context=context)
        if self.use_linear:
            x = self.proj_out(x)
        # back in the block input's memory layout: the permuted view is channels-last to a convolution, which
        # would hand that layout on to every following layer of an NCHW model
        layout = torch.channels_last if _is_channels_last(residual) else torch.contiguous_format
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w).contiguous(memory_format=layout)
        if not self.use_linear:
            x = self.proj_out(x)
        x += repeat_rows(residual, x.shape[0])
        return x
