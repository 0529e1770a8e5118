"""UniFormer-S backbone for segmentation (Li et al. 2022; the ``UniFormer`` of ControlNet's
``annotator/uniformer``, config ``upernet_global_small``: global attention in stages 3-4, no windows).

Four stages (64/128/320/512 channels, 3/4/8/3 blocks, strides 4/8/16/32). Stages 1-2 use convolutional
"local relation" blocks with BatchNorm; stages 3-4 use global self-attention blocks (head dim 64). Every
block starts with a residual 3x3 depthwise conv ("dynamic position embedding"). Module names follow the
checkpoint keys under ``backbone``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from annotator.midas.vit import TransformerBlock  # same pre-norm block and key names as UniFormer's SABlock


def layer_norm_channels(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channel axis of a (B, C, H, W) map."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch`` x ``patch`` conv (stride = patch) followed by LayerNorm (eps 1e-5)."""

    def __init__(self, in_ch: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_channels(self.norm, self.proj(x))


class ConvMlp(nn.Module):
    """1x1 conv -> exact GELU -> 1x1 conv."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LocalBlock(nn.Module):
    """UniFormer's CBlock: position conv, then BN -> 1x1 -> 5x5 depthwise ("local attention") -> 1x1, then
    BN -> conv MLP; each step residual."""

    def __init__(self, dim: int, mlp_ratio: int = 4):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class GlobalBlock(TransformerBlock):
    """UniFormer's SABlock: position conv on the (B, C, H, W) map, then a transformer block on its H*W tokens."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__(dim, num_heads, eps=1e-6)
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        B, C, H, W = x.shape
        tokens = super().forward(x.flatten(2).transpose(1, 2))  # (B, H*W, C)
        return tokens.transpose(1, 2).reshape(B, C, H, W)


class UniFormer(nn.Module):
    """(B, 3, H, W) normalised image -> 4 maps (B, dims[i], H / 2**(i+2), W / 2**(i+2)), each LayerNorm'ed.

    Stage i owns ``patch_embed{i}``, ``blocks{i}`` and ``norm{i}`` (numbered names fixed by the checkpoint).
    """

    def __init__(self, dims=(64, 128, 320, 512), depths=(3, 4, 8, 3), head_dim: int = 64):
        super().__init__()
        self.num_stages = len(dims)
        for i, (dim, depth) in enumerate(zip(dims, depths), start=1):
            in_ch, patch = (3, 4) if i == 1 else (dims[i - 2], 2)
            self.add_module(f"patch_embed{i}", PatchEmbed(in_ch, dim, patch))
            blocks = [LocalBlock(dim) if i <= 2 else GlobalBlock(dim, dim // head_dim) for _ in range(depth)]
            self.add_module(f"blocks{i}", nn.ModuleList(blocks))
            self.add_module(f"norm{i}", nn.LayerNorm(dim, eps=1e-6))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"blocks{i}"):
                x = block(x)
            outs.append(layer_norm_channels(getattr(self, f"norm{i}"), x))
        return outs
