"""NormalBAE, "Estimating and Exploiting the Aleatoric Uncertainty in Surface Normal Estimation" (Bae,
Budvytis & Cipolla, ICCV 2021; baegwangbin/surface_normal_uncertainty), inference path only, with the
ScanNet weights ControlNet 1.1 ships (`scannet.pt`, architecture 'BN').

An EfficientNet-B5 encoder, four upsampling blocks to 1/2 resolution, a 1/8-resolution prediction and
three per-pixel MLPs (1x1 Conv1d) that refine it at 1/4, 1/2 and full resolution, each output normalised
(unit normal + concentration kappa). Module names reproduce the file's keys once DataParallel's
`module.` is dropped (`encoder.original_model.blocks.3.2.conv_dw.weight`, `decoder.up1._net.0.weight`).
"""
import torch
import torch.nn.functional as F
from torch import nn

from annotator.normalbae.efficientnet import EfficientNetB5

SKIPS = (176, 64, 40, 24)  # channels of stages 5, 3, 2, 1, joined by up1..up4
MIN_KAPPA = 0.01


def normalise(out: torch.Tensor) -> torch.Tensor:
    """(b, 4, ...) -> unit (x, y, z) (norm + 1e-10) and kappa = ELU(k) + 1.01."""
    xyz, kappa = out[:, :3], out[:, 3:]
    norm = torch.sqrt((xyz ** 2).sum(dim=1, keepdim=True)) + 1e-10
    return torch.cat([xyz / norm, F.elu(kappa) + 1.0 + MIN_KAPPA], dim=1)


def _up2(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class UpSampleBN(nn.Module):
    """Bilinear (corner-aligned) upsampling to the skip's size, concatenation, 2 x (3x3 conv, BN, LeakyReLU)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self._net = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
                                  nn.LeakyReLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1),
                                  nn.BatchNorm2d(out_channels), nn.LeakyReLU())

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self._net(torch.cat([x, skip], dim=1))


def _pixel_mlp(in_channels: int) -> nn.Sequential:
    layers = [nn.Conv1d(in_channels, 128, 1), nn.ReLU(), nn.Conv1d(128, 128, 1), nn.ReLU(),
              nn.Conv1d(128, 128, 1), nn.ReLU(), nn.Conv1d(128, 4, 1)]
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(2048, 2048, 1)
        widths = (2048, 1024, 512, 256, 128)
        for i, skip in enumerate(SKIPS):
            self.add_module(f"up{i + 1}", UpSampleBN(widths[i] + skip, widths[i + 1]))
        self.out_conv_res8 = nn.Conv2d(512, 4, 3, padding=1)
        self.out_conv_res4 = _pixel_mlp(512 + 4)
        self.out_conv_res2 = _pixel_mlp(256 + 4)
        self.out_conv_res1 = _pixel_mlp(128 + 4)

    @staticmethod
    def _refine(mlp, features, previous):
        """Upsample features and the previous prediction x2, run the per-pixel MLP, normalise."""
        x = torch.cat([_up2(features), _up2(previous)], dim=1)
        b, c, h, w = x.shape
        return normalise(mlp(x.view(b, c, h * w))).view(b, 4, h, w)

    def forward(self, stages):
        """stages: the encoder's 7 stage outputs + conv_head. Returns the full-resolution (b, 4, H, W)."""
        d1 = self.up1(self.conv2(stages[7]), stages[4])
        d2 = self.up2(d1, stages[2])
        d3 = self.up3(d2, stages[1])
        d4 = self.up4(d3, stages[0])
        out = normalise(self.out_conv_res8(d2))
        out = self._refine(self.out_conv_res4, d2, out)
        out = self._refine(self.out_conv_res2, d3, out)
        return self._refine(self.out_conv_res1, d4, out)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.original_model = EfficientNetB5()

    def forward(self, x):
        return self.original_model(x)


class NormalBAE(nn.Module):
    """(b, 3, H, W) ImageNet-normalised RGB -> (b, 4, H, W): unit normal (x, y, z) and kappa; H, W multiples of 32."""

    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()

    def forward(self, x):
        return self.decoder(self.encoder(x))
