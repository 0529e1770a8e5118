"""PiDiNet, "Pixel Difference Networks for Efficient Edge Detection" (Su et al., ICCV 2021;
hellozhuo/pidinet), in the configuration of `table5_pidinet.pth` that ControlNet 1.1 ships: 60 base
channels, the `carv4` pattern of pixel-difference convolutions, CDCM dilation modules of 24 channels and
CSAM attention (upstream's `pidinet()`: `PiDiNet(60, carv4, dil=24, sa=True)`).

Module names reproduce the file's keys once DataParallel's `module.` prefix is removed
(`init_block.weight`, `block2_1.shortcut.bias`, `dilations.0.conv2_3.weight`, ...). The pixel-difference
convolutions keep their trained 3x3 weights and turn them into the equivalent plain kernel on the fly
(3x3 for central and angular differences, 5x5 for radial ones), as the paper's conversion does.
"""
import torch
import torch.nn.functional as F
from torch import nn

BASE_CHANNELS = 60
DILATION_CHANNELS = 24
CSAM_CHANNELS = 4
CDCM_DILATIONS = (5, 7, 9, 11)
# carv4: per convolution (init block, then the 15 blocks): central, angular, radial difference or vanilla
CARV4 = ("cd", "ad", "rd", "cv") * 4
# stage -> number of blocks; the first block of stages 2-4 halves the resolution; channels C, 2C, 4C, 4C
STAGES = ((1, 3, 1), (2, 4, 2), (3, 4, 4), (4, 4, 4))  # (stage, blocks, channel multiple)
# Angular difference: each tap minus its clockwise neighbour on the 3x3 ring (centre minus itself).
_CLOCKWISE = (3, 0, 1, 6, 4, 2, 7, 8, 5)
# Radial difference: the 8 outer taps go to the 5x5 ring (+w) and the inner ring (-w).
_RD_OUTER = (0, 2, 4, 10, 14, 20, 22, 24)
_RD_INNER = (6, 7, 8, 11, 13, 16, 17, 18)


def pixel_difference_kernel(weight: torch.Tensor, op: str) -> torch.Tensor:
    """The plain convolution kernel equal to a pixel-difference convolution with trained `weight` (o, i, 3, 3)."""
    if op == "cv":
        return weight
    if op == "cd":  # sum_k w_k (x_k - x_centre)
        kernel = weight.clone()
        kernel[:, :, 1, 1] -= weight.sum(dim=(2, 3))
        return kernel
    flat = weight.flatten(2)
    if op == "ad":
        return (flat - flat[:, :, list(_CLOCKWISE)]).view_as(weight)
    if op == "rd":
        kernel = weight.new_zeros(weight.shape[0], weight.shape[1], 25)
        kernel[:, :, list(_RD_OUTER)] = flat[:, :, 1:]
        kernel[:, :, list(_RD_INNER)] = -flat[:, :, 1:]
        return kernel.view(weight.shape[0], weight.shape[1], 5, 5)
    raise ValueError(f"unknown pixel-difference op {op!r}")


class PixelDifferenceConv(nn.Module):
    """A bias-free 3x3 convolution (stride 1, 'same' output) whose kernel is a pixel-difference op."""

    def __init__(self, op: str, in_channels: int, out_channels: int, groups: int = 1):
        super().__init__()
        self.op, self.groups = op, groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 3, 3))

    def forward(self, x):
        kernel = pixel_difference_kernel(self.weight, self.op)
        return F.conv2d(x, kernel, padding=kernel.shape[-1] // 2, groups=self.groups)


class PDCBlock(nn.Module):
    """[2x2 max-pool] -> depthwise pixel-difference conv -> ReLU -> 1x1 conv, plus the (1x1-projected when
    downsampling) input."""

    def __init__(self, op: str, in_channels: int, out_channels: int, downsample: bool = False):
        super().__init__()
        self.downsample = downsample
        if downsample:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1)
        self.conv1 = PixelDifferenceConv(op, in_channels, in_channels, groups=in_channels)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        if self.downsample:
            x = F.max_pool2d(x, 2, 2)
        y = self.conv2(F.relu(self.conv1(x)))
        return y + (self.shortcut(x) if self.downsample else x)


class CDCM(nn.Module):
    """Compact dilation convolution module: ReLU, 1x1 conv, then the sum of four dilated 3x3 convs."""

    def __init__(self, in_channels: int, channels: int = DILATION_CHANNELS):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1)
        for i, d in enumerate(CDCM_DILATIONS, start=1):
            self.add_module(f"conv2_{i}", nn.Conv2d(channels, channels, 3, dilation=d, padding=d, bias=False))

    def forward(self, x):
        x = self.conv1(F.relu(x))
        return self.conv2_1(x) + self.conv2_2(x) + self.conv2_3(x) + self.conv2_4(x)


class CSAM(nn.Module):
    """Compact spatial attention: x * sigmoid(3x3 conv(1x1 conv(ReLU(x))))."""

    def __init__(self, channels: int = DILATION_CHANNELS):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, CSAM_CHANNELS, 1)
        self.conv2 = nn.Conv2d(CSAM_CHANNELS, 1, 3, padding=1, bias=False)

    def forward(self, x):
        return x * torch.sigmoid(self.conv2(self.conv1(F.relu(x))))


class MapReduce(nn.Module):
    """1x1 conv to one edge-logit channel."""

    def __init__(self, channels: int = DILATION_CHANNELS):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        return self.conv(x)


class PiDiNet(nn.Module):
    """(b, 3, H, W) BGR in 0..1 -> five (b, 1, H, W) edge probabilities: one per stage, then the fused one."""

    def __init__(self):
        super().__init__()
        c = BASE_CHANNELS
        self.init_block = PixelDifferenceConv(CARV4[0], 3, c)
        layer, in_channels, stage_channels = 1, c, []
        for stage, n_blocks, multiple in STAGES:
            out_channels = c * multiple
            for b in range(1, n_blocks + 1):
                block = PDCBlock(CARV4[layer], in_channels, out_channels, downsample=stage > 1 and b == 1)
                self.add_module(f"block{stage}_{b}", block)
                in_channels, layer = out_channels, layer + 1
            stage_channels.append(out_channels)
        self.dilations = nn.ModuleList(CDCM(ch) for ch in stage_channels)
        self.attentions = nn.ModuleList(CSAM() for _ in stage_channels)
        self.conv_reduces = nn.ModuleList(MapReduce() for _ in stage_channels)
        self.classifier = nn.Conv2d(len(stage_channels), 1, 1)
        self.stages = [[f"block{s}_{b}" for b in range(1, n + 1)] for s, n, _ in STAGES]

    def forward(self, x):
        h, w = x.shape[-2:]
        x = self.init_block(x)
        edges = []
        for i, names in enumerate(self.stages):
            for name in names:
                x = getattr(self, name)(x)
            edge = self.conv_reduces[i](self.attentions[i](self.dilations[i](x)))
            edges.append(F.interpolate(edge, (h, w), mode="bilinear", align_corners=False))
        edges.append(self.classifier(torch.cat(edges, dim=1)))
        return [torch.sigmoid(e) for e in edges]
