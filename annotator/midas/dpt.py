"""DPT-Hybrid depth network (MiDaS v3 ``DPTDepthModel``, backbone ``vitb_rn50_384``, readout "project").

Encoder taps: ResNet stages 1-2 (256 ch at /4, 512 ch at /8) and ViT blocks 8 and 11 reassembled into maps
(768 ch at /16 and, via a 3x3 stride-2 conv, at /32). The "scratch" decoder maps them to 256 channels and
fuses them coarse to fine (x2 each), and the head upsamples to the input size and outputs non-negative
inverse depth. Module names follow ``dpt_hybrid-midas-501f0c75.pt``; the checkpoint also holds weights the
forward pass never uses (``pretrained.model.norm``/``head`` and ``scratch.refinenet4.resConfUnit1``).
"""

import torch
import torch.nn.functional as F
from torch import nn

from annotator.midas.vit import HybridViT

VIT_TAPS = (8, 11)


class ProjectReadout(nn.Module):
    """Folds the class token into every patch token: Linear(cat(patch, cls)) + GELU."""

    def __init__(self, dim: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1:]
        readout = tokens[:, :1].expand_as(patches)
        return self.project(torch.cat([patches, readout], dim=-1))


class Reassemble(nn.Module):
    """Tokens (B, 1 + N, C) -> feature map (B, C_out, H/16, W/16), or /32 when ``downsample``.

    Children are named "0", "3" and "4" because the checkpoint keeps the indices of upstream's
    ``nn.Sequential`` (readout, transpose, unflatten, 1x1 conv, 3x3 stride-2 conv); slots 1-2 hold no weights.
    """

    def __init__(self, dim: int, out_dim: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.add_module("0", ProjectReadout(dim))
        self.add_module("3", nn.Conv2d(dim, out_dim, 1))
        if downsample:
            self.add_module("4", nn.Conv2d(out_dim, out_dim, 3, stride=2, padding=1))

    def forward(self, tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        x = self.get_submodule("0")(tokens).transpose(1, 2).unflatten(2, grid_hw)  # (B, C, H/16, W/16)
        x = self.get_submodule("3")(x)
        return self.get_submodule("4")(x) if self.downsample else x


class Encoder(nn.Module):
    """Hybrid ViT plus the reassembly of its two tapped blocks; returns 4 maps at strides 4, 8, 16, 32."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.model = HybridViT(dim)
        self.act_postprocess3 = Reassemble(dim, 768, downsample=False)
        self.act_postprocess4 = Reassemble(dim, 768, downsample=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features, (tokens3, tokens4) = self.model(x, VIT_TAPS)
        grid_hw = features[-1].shape[-2:]
        return [features[0], features[1],
                self.act_postprocess3(tokens3, grid_hw), self.act_postprocess4(tokens4, grid_hw)]


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))), 3x3 convs with bias."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x)), inplace=True))


class FusionBlock(nn.Module):
    """Adds the refined skip (if any) to the coarser path, refines, upsamples x2 (align_corners=True), 1x1 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(ch)  # refines the skip; idle in the deepest block, which has none
        self.resConfUnit2 = ResidualConvUnit(ch)
        self.out_conv = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    """Decoder: 3x3 convs to ``ch`` channels (no bias), 4 fusion blocks, depth head."""

    def __init__(self, ch: int = 256):
        super().__init__()
        self.layer1_rn = nn.Conv2d(256, ch, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(512, ch, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(768, ch, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(768, ch, 3, padding=1, bias=False)
        self.refinenet1 = FusionBlock(ch)
        self.refinenet2 = FusionBlock(ch)
        self.refinenet3 = FusionBlock(ch)
        self.refinenet4 = FusionBlock(ch)
        self.output_conv = nn.Sequential(
            nn.Conv2d(ch, ch // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(ch // 2, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 1, 1),
            nn.ReLU(inplace=True),  # "non_negative": inverse depth >= 0
        )

    def forward(self, layers: list[torch.Tensor]) -> torch.Tensor:
        l1, l2, l3, l4 = layers
        path = self.refinenet4(self.layer4_rn(l4))
        path = self.refinenet3(path, self.layer3_rn(l3))
        path = self.refinenet2(path, self.layer2_rn(l2))
        path = self.refinenet1(path, self.layer1_rn(l1))
        return self.output_conv(path)


class DPTDepth(nn.Module):
    """(B, 3, H, W) image in [-1, 1], H and W multiples of 32 -> (B, H, W) relative inverse depth."""

    def __init__(self):
        super().__init__()
        self.pretrained = Encoder()
        self.scratch = Scratch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scratch(self.pretrained(x)).squeeze(1)
