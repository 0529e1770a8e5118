"""UniFormer-S + UPerNet segmentor (mmseg ``EncoderDecoder`` in "whole" test mode) for ADE20K."""

import torch
from torch import nn

from annotator.uniformer.backbone import UniFormer
from annotator.uniformer.heads import AuxiliaryFCNHead, UPerHead, resize_to


class UperNetUniFormer(nn.Module):
    """(B, 3, H, W) normalised BGR image -> class logits (B, 150, H, W)."""

    def __init__(self):
        super().__init__()
        self.backbone = UniFormer()
        self.decode_head = UPerHead()
        self.auxiliary_head = AuxiliaryFCNHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(self.decode_head(self.backbone(x)), x.shape[-2:])
