"""The Anime2Sketch generator (Xiang et al., Mukosame/Anime2Sketch), as ControlNet 1.1's lineart anime
detector builds it: a pix2pix U-Net with 8 down/up levels, 64 base channels, parameter-free instance norms
(so every convolution has a bias), no dropout.

Each level is a Sequential named `model` whose indices reproduce the keys of `netG.pth`
(`model.model.0.weight`, `model.model.1.model.3.model.1.bias`, ...) once the DataParallel prefix
`module.` is removed, as upstream's loader does.
"""
import torch
from torch import nn

N_LEVELS = 8  # an input side must be a multiple of 2**8 = 256
BASE_CHANNELS = 64
# (outer, inner) channels from the outermost level inwards
LEVEL_CHANNELS = ((None, 64), (64, 128), (128, 256), (256, 512), (512, 512), (512, 512), (512, 512), (512, 512))


class UNetLevel(nn.Module):
    """One level: down (4x4/2 conv), the inner levels, up (4x4/2 transposed conv); inner levels return
    their input concatenated with their output.

    Layouts (`model` indices): outermost [conv, inner, ReLU, tconv, Tanh]; innermost [LeakyReLU, conv,
    ReLU, tconv, norm]; others [LeakyReLU, conv, norm, inner, ReLU, tconv, norm].
    """

    def __init__(self, outer: int, inner: int, in_channels: int = None, submodule: nn.Module = None):
        super().__init__()
        self.outermost = in_channels is not None
        down = nn.Conv2d(in_channels or outer, inner, 4, stride=2, padding=1)
        up = nn.ConvTranspose2d(inner if submodule is None else 2 * inner, outer, 4, stride=2, padding=1)
        if self.outermost:
            layers = [down, submodule, nn.ReLU(True), up, nn.Tanh()]
        elif submodule is None:
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, nn.InstanceNorm2d(outer)]
        else:
            layers = [nn.LeakyReLU(0.2, True), down, nn.InstanceNorm2d(inner), submodule, nn.ReLU(True), up,
                      nn.InstanceNorm2d(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)


class AnimeLineartUNet(nn.Module):
    """(b, 3, H, W) RGB in -1..1, H and W multiples of 256 -> (b, 1, H, W) sketch in -1..1 (dark on white)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1):
        super().__init__()
        level = None
        for i in reversed(range(1, N_LEVELS)):
            level = UNetLevel(*LEVEL_CHANNELS[i], submodule=level)
        self.model = UNetLevel(out_channels, LEVEL_CHANNELS[0][1], in_channels=in_channels, submodule=level)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
