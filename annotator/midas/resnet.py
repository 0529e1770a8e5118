"""BiT-style ResNet-50 trunk of DPT-Hybrid (timm ``ResNetV2`` as built for ``vit_base_resnet50_384``).

Non-pre-activation bottlenecks with weight-standardised convolutions, GroupNorm(32) and TensorFlow "SAME"
padding (the stem max-pool included); three stages of 3, 4 and 9 blocks with outputs at strides 4, 8 and 16.
Module names follow the checkpoint keys under ``pretrained.model.patch_embed.backbone``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32
WS_EPS = 1e-8  # weight-standardisation epsilon of the hybrid ViT's ResNet (timm's default would be 1e-6)


def pad_same(x: torch.Tensor, kernel_size: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad (B, C, H, W) as TensorFlow "SAME" does: output size ceil(size / stride), odd pixel at bottom/right."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad lists the last dimension first
        total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class StdConv2dSame(nn.Conv2d):
    """Bias-free conv whose kernel is standardised per output channel (zero mean, unit variance) at each call."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1):
        # Stride 1 with an odd kernel is "SAME" with symmetric padding, which the conv can do itself.
        super().__init__(in_ch, out_ch, kernel_size, stride, padding=(kernel_size - 1) // 2 if stride == 1 else 0,
                         bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Per-output-channel standardisation written as a training-mode batch_norm over (1, out, in*k*k):
        # the same (w - mean) / sqrt(biased var + eps) as timm computes, and several times faster than var_mean.
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                              eps=WS_EPS).view_as(self.weight)
        if self.stride[0] > 1:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, weight, None, self.stride, self.padding)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm(32, eps 1e-5), optionally followed by ReLU."""

    def __init__(self, channels: int, relu: bool = True):
        super().__init__(GROUPS, channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.relu(x, inplace=True) if self.relu else x


class Stem(nn.Module):
    """7x7/2 conv, GroupNorm + ReLU, 3x3/2 max-pool ("SAME", padded with -inf): stride 4, 64 channels."""

    def __init__(self, out_ch: int = 64):
        super().__init__()
        self.conv = StdConv2dSame(3, out_ch, 7, stride=2)
        self.norm = GroupNormAct(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)


class Downsample(nn.Module):
    """Projection shortcut of a stage's first block: 1x1 conv (strided) + GroupNorm without activation."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv = StdConv2dSame(in_ch, out_ch, 1, stride=stride)
        self.norm = GroupNormAct(out_ch, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 with 4x expansion; ReLU after the residual sum."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, project: bool):
        super().__init__()
        mid_ch = out_ch // 4
        self.downsample = Downsample(in_ch, out_ch, stride) if project else None
        self.conv1 = StdConv2dSame(in_ch, mid_ch, 1)
        self.norm1 = GroupNormAct(mid_ch)
        self.conv2 = StdConv2dSame(mid_ch, mid_ch, 3, stride=stride)
        self.norm2 = GroupNormAct(mid_ch)
        self.conv3 = StdConv2dSame(mid_ch, out_ch, 1)
        self.norm3 = GroupNormAct(out_ch, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut, inplace=True)


class Stage(nn.Module):
    """``depth`` bottlenecks; the first one strides and projects the shortcut."""

    def __init__(self, in_ch: int, out_ch: int, depth: int, stride: int):
        super().__init__()
        self.blocks = nn.Sequential(*(
            Bottleneck(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, project=i == 0)
            for i in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class BiTResNet(nn.Module):
    """Stem + 3 stages (256/512/1024 channels at strides 4/8/16); returns every stage's output."""

    def __init__(self, depths=(3, 4, 9), widths=(256, 512, 1024)):
        super().__init__()
        self.stem = Stem()
        in_chs = (64,) + tuple(widths[:-1])
        self.stages = nn.ModuleList(
            Stage(in_ch, out_ch, depth, stride=1 if i == 0 else 2)
            for i, (in_ch, out_ch, depth) in enumerate(zip(in_chs, widths, depths)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
