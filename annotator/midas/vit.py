"""Hybrid ViT-B/16 of DPT-Hybrid (timm ``vit_base_resnet50_384``): ResNet-50 features -> 1x1 projection to
768-d tokens (stride 16) -> class token + position embeddings -> 12 pre-norm transformer blocks.

Module names follow the checkpoint keys under ``pretrained.model``. ``TransformerBlock`` is also the body
of UniFormer's global attention blocks (same structure and key names).
"""

import torch
import torch.nn.functional as F
from torch import nn

from annotator.midas.resnet import BiTResNet


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (scale head_dim ** -0.5, via SDPA)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, head_dim)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block on (B, N, C) tokens: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HybridEmbed(nn.Module):
    """ResNet trunk plus the 1x1 conv turning its stride-16 map into a grid of ``dim``-d tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.backbone = BiTResNet()
        self.proj = nn.Conv2d(1024, dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The ResNet stage outputs and the token grid (B, dim, H/16, W/16)."""
        features = self.backbone(x)
        return features, self.proj(features[-1])


class HybridViT(nn.Module):
    """ViT-B/16 on ResNet-50 features, trained on a 24x24 token grid (384 px).

    ``norm`` and ``head`` (ImageNet classifier) are never used by DPT but are part of the checkpoint.
    """

    def __init__(self, dim: int = 768, depth: int = 12, num_heads: int = 12, train_grid: int = 24):
        super().__init__()
        self.patch_embed = HybridEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + train_grid * train_grid, dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 1000)

    def resized_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings (1, 1 + grid_h * grid_w, C): the grid part resized bilinearly (align_corners=False)."""
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[0, 1:]
        side = int(grid_pos.shape[0] ** 0.5)
        grid_pos = grid_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
        return torch.cat([cls_pos, grid_pos.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: torch.Tensor, taps: tuple[int, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Returns the ResNet stage outputs and the tokens (B, 1 + N, C) after each block index in ``taps``."""
        features, grid = self.patch_embed(x)
        tokens = grid.flatten(2).transpose(1, 2)  # (B, N, C)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.resized_pos_embed(*grid.shape[-2:])
        tapped = []
        for i, block in enumerate(self.blocks[:max(taps) + 1]):
            tokens = block(tokens)
            if i in taps:
                tapped.append(tokens)
        return features, tapped
