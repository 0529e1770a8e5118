"""HED networks: a VGG16 trunk with one 1x1 side output per stage (Xie & Tu, "Holistically-Nested Edge
Detection", 2015).

Two weight files share this trunk: `ControlNetHED.pth` (upstream HEAD's Apache-2.0 model, keys used as is)
and `network-bsds500.pth` (sniklaus/pytorch-hed, shipped with ControlNet 1.0; keys renamed by
`legacy_hed_keys`).
"""
import re

import torch
import torch.nn.functional as F
from torch import nn

VGG_STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))  # (in, out, n_convs)
BSDS_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)  # Caffe HED training mean, 0..255 BGR


class VGGStage(nn.Module):
    """[2x2 max-pool] -> n x (3x3 conv, ReLU), plus a 1x1 `projection` to one side-output channel."""

    def __init__(self, in_channels: int, out_channels: int, n_convs: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1) for i in range(n_convs))
        self.projection = nn.Conv2d(out_channels, 1, 1)

    def forward(self, x):
        if self.downsample:
            x = F.max_pool2d(x, 2, 2)
        for conv in self.convs:
            x = F.relu(conv(x), inplace=True)
        return x, self.projection(x)


class HEDTrunk(nn.Module):
    """Five VGG stages; returns the five side outputs (b, 1, h / 2**i, w / 2**i), i = 0..4."""

    def __init__(self):
        super().__init__()
        for i, (cin, cout, n) in enumerate(VGG_STAGES):
            self.add_module(f"block{i + 1}", VGGStage(cin, cout, n, downsample=i > 0))

    def side_outputs(self, x):
        sides = []
        for block in (self.block1, self.block2, self.block3, self.block4, self.block5):
            x, side = block(x)
            sides.append(side)
        return sides


class ControlNetHED(HEDTrunk):
    """Upstream HEAD model: input RGB 0..255 minus a learned per-channel `norm`; side outputs are logits."""

    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, rgb255):
        return self.side_outputs(rgb255 - self.norm)


class LegacyHED(HEDTrunk):
    """ControlNet 1.0 model: input BGR in 0..1; side outputs upsampled, fused by a 1x1 conv, sigmoid."""

    def __init__(self):
        super().__init__()
        self.combine = nn.Conv2d(5, 1, 1)

    def forward(self, bgr01):
        h, w = bgr01.shape[-2:]
        mean = torch.tensor(BSDS_BGR_MEAN, dtype=bgr01.dtype, device=bgr01.device).view(1, 3, 1, 1)
        sides = self.side_outputs(bgr01 * 255.0 - mean)
        sides = [F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False) for s in sides]
        return torch.sigmoid(self.combine(torch.cat(sides, dim=1)))


_LEGACY_STAGES = {"One": 1, "Two": 2, "Thr": 3, "Fou": 4, "Fiv": 5}
_LEGACY_VGG = re.compile(r"^moduleVgg(One|Two|Thr|Fou|Fiv)\.(\d+)\.(weight|bias)$")
_LEGACY_SCORE = re.compile(r"^moduleScore(One|Two|Thr|Fou|Fiv)\.(weight|bias)$")


def is_legacy_hed(state_dict: dict) -> bool:
    """True for sniklaus-style keys (`moduleVggOne.0.weight`, ...)."""
    return any(k.startswith("moduleVgg") for k in state_dict)


def legacy_hed_keys(state_dict: dict) -> dict:
    """Rename `network-bsds500.pth` keys to `LegacyHED` names; unknown keys pass through unchanged.

    Its Sequentials index convs as 0, 2 in stage 1 and 1, 3, 5 after a leading max-pool in stages 2-5.
    """
    renamed = {}
    for key, value in state_dict.items():
        if m := _LEGACY_VGG.match(key):
            stage, index, param = _LEGACY_STAGES[m[1]], int(m[2]), m[3]
            conv = index // 2 if stage == 1 else (index - 1) // 2
            key = f"block{stage}.convs.{conv}.{param}"
        elif m := _LEGACY_SCORE.match(key):
            key = f"block{_LEGACY_STAGES[m[1]]}.projection.{m[2]}"
        elif key.startswith("moduleCombine.0."):
            key = "combine." + key[len("moduleCombine.0."):]
        renamed[key] = value
    return renamed
