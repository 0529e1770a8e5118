"""UPerNet decode head (mmseg ``UPerHead``) and the auxiliary FCN head's weights, as configured for
``upernet_global_small``: 512 channels, PPM pool scales 1/2/3/6, BatchNorm + ReLU, bilinear resizing with
align_corners=False, 150 ADE20K classes. Module names follow the checkpoint keys.
"""

import torch
import torch.nn.functional as F
from torch import nn


def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of a (B, C, h, w) map to ``size`` = (H, W)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvModule(nn.Module):
    """Bias-free conv ("same" padding) + BatchNorm + ReLU: mmcv's ``ConvModule`` with ``norm_cfg`` BN."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class UPerHead(nn.Module):
    """Pyramid pooling on the deepest map + FPN over all four -> logits (B, num_classes, H/4, W/4)."""

    def __init__(self, in_chs=(64, 128, 320, 512), ch: int = 512, num_classes: int = 150,
                 pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvModule(in_chs[-1], ch, 1)) for scale in pool_scales)
        self.bottleneck = ConvModule(in_chs[-1] + len(pool_scales) * ch, ch, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(in_ch, ch, 1) for in_ch in in_chs[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(ch, ch, 3) for _ in in_chs[:-1])
        self.fpn_bottleneck = ConvModule(len(in_chs) * ch, ch, 3)
        self.conv_seg = nn.Conv2d(ch, num_classes, 1)  # upstream's dropout before it is inactive at inference

    def pyramid_pool(self, top: torch.Tensor) -> torch.Tensor:
        """PPM: the map and its pooled + projected + upsampled versions, concatenated, then a 3x3 ConvModule."""
        pooled = [resize_to(branch(top), top.shape[-2:]) for branch in self.psp_modules]
        return self.bottleneck(torch.cat([top] + pooled, dim=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, feats)]
        laterals.append(self.pyramid_pool(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + resize_to(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [resize_to(x, size) for x in outs[1:]]
        return self.conv_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class AuxiliaryFCNHead(nn.Module):
    """Weights of the training-only auxiliary FCN head (on stage 3). Never run: it exists so that the
    checkpoint loads strictly, i.e. a file with missing or foreign keys is rejected."""

    def __init__(self, in_ch: int = 320, ch: int = 256, num_classes: int = 150):
        super().__init__()
        self.convs = nn.Sequential(ConvModule(in_ch, ch, 3))
        self.conv_seg = nn.Conv2d(ch, num_classes, 1)
