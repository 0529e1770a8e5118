"""EfficientNet-B5 (Tan & Le, 2019) as gen-efficientnet-pytorch builds `tf_efficientnet_b5_ap`, the
backbone of NormalBAE, in plain PyTorch: TensorFlow "same" padding, BatchNorm eps 1e-3, Swish (SiLU),
squeeze-excitation on every block. Module names follow that package (`conv_stem`, `bn1`,
`blocks.<stage>.<block>.conv_pw`, `se.conv_reduce`, ...), so its weights load by name.

Only what NormalBAE uses is built: the stem, the 7 stages and `conv_head` (+ its `bn2`, present in the
weights though the decoder reads `conv_head`'s raw output). No classifier.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # TensorFlow's default, used by the tf_ ports
WIDTH, DEPTH = 1.6, 2.2  # B5 multipliers
SE_RATIO = 0.25
# EfficientNet-B0 stages: (block type, repeats, kernel, stride, expansion, output channels)
B0_STAGES = (("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
             ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320))
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280


def round_channels(channels: float, divisor: int = 8) -> int:
    """Width scaling: nearest multiple of 8, never more than 10 % below the scaled value."""
    channels *= WIDTH
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


class Conv2dSame(nn.Conv2d):
    """Bias-free convolution with TensorFlow 'SAME' padding: output = ceil(input / stride), the padding
    split with the extra pixel at the bottom/right. Stride-1 odd kernels reduce to symmetric k // 2."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1):
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, groups=groups, bias=False)

    def forward(self, x):
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, None, self.stride, 0, self.dilation, self.groups)


def _bn(channels):
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class SqueezeExcite(nn.Module):
    """x * sigmoid(expand(SiLU(reduce(mean over space)))); `reduced` = block input channels / 4."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.conv_expand(F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True)))))


class DepthwiseSeparable(nn.Module):
    """Stage 1: depthwise conv, BN, SiLU, SE, pointwise conv, BN (no activation); residual if shapes allow."""

    def __init__(self, cin, cout, kernel, stride):
        super().__init__()
        self.residual = stride == 1 and cin == cout
        self.conv_dw = Conv2dSame(cin, cin, kernel, stride, groups=cin)
        self.bn1 = _bn(cin)
        self.se = SqueezeExcite(cin, max(1, int(cin * SE_RATIO)))
        self.conv_pw = Conv2dSame(cin, cout, 1)
        self.bn2 = _bn(cout)

    def forward(self, x):
        y = self.bn2(self.conv_pw(self.se(F.silu(self.bn1(self.conv_dw(x))))))
        return x + y if self.residual else y


class InvertedResidual(nn.Module):
    """MBConv: 1x1 expansion, BN, SiLU, depthwise conv, BN, SiLU, SE, 1x1 projection, BN; residual if shapes allow."""

    def __init__(self, cin, cout, kernel, stride, expansion):
        super().__init__()
        mid = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.conv_pw = Conv2dSame(cin, mid, 1)
        self.bn1 = _bn(mid)
        self.conv_dw = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _bn(mid)
        self.se = SqueezeExcite(mid, max(1, int(cin * SE_RATIO)))
        self.conv_pwl = Conv2dSame(mid, cout, 1)
        self.bn3 = _bn(cout)

    def forward(self, x):
        y = F.silu(self.bn1(self.conv_pw(x)))
        y = self.se(F.silu(self.bn2(self.conv_dw(y))))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.residual else y


class EfficientNetB5(nn.Module):
    """Features for NormalBAE: `forward` returns the outputs of the 7 stages and of `conv_head` (pre-BN)."""

    def __init__(self):
        super().__init__()
        cin = round_channels(STEM_CHANNELS)
        self.conv_stem = Conv2dSame(3, cin, 3, 2)
        self.bn1 = _bn(cin)
        stages = []
        for kind, repeats, kernel, stride, expansion, channels in B0_STAGES:
            cout, blocks = round_channels(channels), []
            for i in range(math.ceil(repeats * DEPTH)):
                s = stride if i == 0 else 1
                blocks.append(DepthwiseSeparable(cin, cout, kernel, s) if kind == "ds"
                              else InvertedResidual(cin, cout, kernel, s, expansion))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = Conv2dSame(cin, round_channels(HEAD_CHANNELS), 1)
        self.bn2 = _bn(round_channels(HEAD_CHANNELS))  # in the weights, unused by NormalBAE

    def forward(self, x):
        x = F.silu(self.bn1(self.conv_stem(x)))
        features = []
        for stage in self.blocks:
            x = stage(x)
            features.append(x)
        features.append(self.conv_head(x))
        return features
