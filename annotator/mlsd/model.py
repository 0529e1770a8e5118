"""M-LSD large: MobileNetV2 trunk + U-shaped decoder (Gu et al., "Towards Light-weight and Real-time Line
Segment Detection", AAAI 2022). Module names follow upstream `mbv2_mlsd_large.py` so
`mlsd_large_512_fp32.pth` loads strictly.
"""
import torch
import torch.nn.functional as F
from torch import nn

# MobileNetV2 inverted-residual settings (expand ratio t, channels c, repeats n, first stride s), cut after
# the 96-channel stage: 1 stem + 13 blocks = the 14 `features` in the weight file.
TRUNK_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
TRUNK_TAPS = (1, 3, 6, 10, 13)  # features giving 16 ch @1/2, 24 @1/4, 32 @1/8, 64 @1/16, 96 @1/16
OUTPUT_CHANNELS = slice(7, 16)  # of the 16 head channels only 7..15 are used: centre logit + 4 displacements


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) + BN + ReLU6; stride 2 uses TensorFlow 'same' padding (pad right/bottom by one)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, groups=1):
        padding = 0 if stride == 2 else (kernel_size - 1) // 2
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU6(inplace=True))
        self.stride = stride

    def forward(self, x):
        if self.stride == 2:
            x = F.pad(x, (0, 1, 0, 1))
        return super().forward(x)


class InvertedResidual(nn.Module):
    """[1x1 expand] -> 3x3 depthwise -> 1x1 linear projection, with a skip when shapes allow."""

    def __init__(self, in_channels, out_channels, stride, expand_ratio):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        layers = [ConvBNReLU6(in_channels, hidden, kernel_size=1)] if expand_ratio != 1 else []
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Trunk(nn.Module):
    """The first 14 MobileNetV2 feature blocks on a 4-channel input; returns the five tapped maps."""

    def __init__(self, in_channels=4):
        super().__init__()
        features = [ConvBNReLU6(in_channels, 32, stride=2)]
        channels = 32
        for t, c, n, s in TRUNK_SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                channels = c
        self.features = nn.Sequential(*features)

    def forward(self, x):
        taps = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in TRUNK_TAPS:
                taps.append(x)
        return taps


def conv_bn_relu(in_channels, out_channels, kernel_size=1, dilation=1):
    """Conv (with bias) + BN + ReLU, 'same' padding."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class Fuse(nn.Module):
    """Upstream BlockTypeA: 1x1 on the skip (`conv2`) and the deep map (`conv1`, optionally upsampled x2), concat."""

    def __init__(self, skip_channels, deep_channels, out_skip, out_deep, upscale=True):
        super().__init__()
        self.conv1 = conv_bn_relu(deep_channels, out_deep)
        self.conv2 = conv_bn_relu(skip_channels, out_skip)
        self.upscale = upscale

    def forward(self, skip, deep):
        deep = self.conv1(deep)
        if self.upscale:
            deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((self.conv2(skip), deep), dim=1)


class Refine(nn.Module):
    """Upstream BlockTypeB: residual 3x3 conv, then a 3x3 conv to `out_channels`."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels, in_channels, 3)
        self.conv2 = conv_bn_relu(in_channels, out_channels, 3)

    def forward(self, x):
        return self.conv2(self.conv1(x) + x)


class Head(nn.Module):
    """Upstream BlockTypeC: dilation-5 3x3, 3x3, then a 1x1 to the output maps."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels, in_channels, 3, dilation=5)
        self.conv2 = conv_bn_relu(in_channels, in_channels, 3)
        self.conv3 = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        return self.conv3(self.conv2(self.conv1(x)))


class MLSDLarge(nn.Module):
    """(b, 4, H, W) in [-1, 1] -> (b, 9, H/2, W/2): centre logit, then start/end (dx, dy) displacements.

    H and W must be multiples of 16 so the decoder's x2 upsamplings meet the trunk's taps.
    """

    def __init__(self):
        super().__init__()
        self.backbone = MobileNetV2Trunk()
        self.block15 = Fuse(64, 96, 64, 64, upscale=False)
        self.block16 = Refine(128, 64)
        self.block17 = Fuse(32, 64, 64, 64)
        self.block18 = Refine(128, 64)
        self.block19 = Fuse(24, 64, 64, 64)
        self.block20 = Refine(128, 64)
        self.block21 = Fuse(16, 64, 64, 64)
        self.block22 = Refine(128, 64)
        self.block23 = Head(64, 16)

    def forward(self, x):
        c1, c2, c3, c4, c5 = self.backbone(x)
        x = self.block16(self.block15(c4, c5))
        x = self.block18(self.block17(c3, x))
        x = self.block20(self.block19(c2, x))
        x = self.block22(self.block21(c1, x))
        return self.block23(x)[:, OUTPUT_CHANNELS]
