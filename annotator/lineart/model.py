"""The line-drawing generator of "Learning to generate line drawings that convey geometry and semantics"
(Chan, Durand & Isola, CVPR 2022; carolineec/informative-drawings), as ControlNet 1.1 uses it: a ResNet
image-to-image generator with 3 residual blocks, instance norms without parameters, reflection padding.

Module names and Sequential indices reproduce the keys of `sk_model.pth` / `sk_model2.pth` (plain state
dicts: `model0.1.weight`, `model2.0.conv_block.5.bias`, ...), so the files load strictly as they are.
"""
import torch
from torch import nn

N_RESIDUAL_BLOCKS = 3  # upstream builds `Generator(3, 1, 3)`
BASE_CHANNELS = 64


def _norm_relu(channels):
    return [nn.InstanceNorm2d(channels), nn.ReLU(inplace=True)]


class ResidualBlock(nn.Module):
    """x + (pad, 3x3 conv, norm, ReLU, pad, 3x3 conv, norm)(x); the convs sit at indices 1 and 5."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), *_norm_relu(channels),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x):
        return x + self.conv_block(x)


class LineartGenerator(nn.Module):
    """(b, 3, H, W) RGB in 0..1 -> (b, 1, H', W') line drawing in 0..1 (dark lines on white), where H', W'
    are H, W rounded up to a multiple of 4 (two stride-2 convolutions, then two 2x transposed ones)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, n_blocks: int = N_RESIDUAL_BLOCKS):
        super().__init__()
        c = BASE_CHANNELS
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_channels, c, 7), *_norm_relu(c))
        self.model1 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), *_norm_relu(2 * c),
                                    nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), *_norm_relu(4 * c))
        self.model2 = nn.Sequential(*(ResidualBlock(4 * c) for _ in range(n_blocks)))
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(4 * c, 2 * c, 3, stride=2, padding=1, output_padding=1), *_norm_relu(2 * c),
            nn.ConvTranspose2d(2 * c, c, 3, stride=2, padding=1, output_padding=1), *_norm_relu(c))
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(c, out_channels, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))
