"""KL-regularised autoencoder of Stable Diffusion (upstream ``ldm/models/autoencoder.py``, inference part).

Training of the full-size VAE (LPIPS + GAN loss) is out of scope; the tiny-model recipe trains a small
one with its own plain loss (``training/tiny_recipe.py``).
"""
from typing import Mapping, Optional

import torch
from torch import nn

from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution


class AutoencoderKL(nn.Module):
    def __init__(self, ddconfig: Mapping, embed_dim: int, lossconfig: Optional[Mapping] = None,
                 monitor: Optional[str] = None, ckpt_path: Optional[str] = None, image_key: str = "image",
                 ignore_keys=()):
        super().__init__()
        # lossconfig (torch.nn.Identity in the ControlNet configs) and monitor are training-time settings
        # of upstream's VAE trainer; ckpt_path/ignore_keys are not supported: load the full model instead.
        if ckpt_path:
            raise ValueError("AutoencoderKL(ckpt_path=...) is not supported; load weights with cldm.model.load_checkpoint")
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs double_z=True (mean and log-variance)")
        self.image_key = image_key
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        z = ddconfig["z_channels"]
        self.quant_conv = nn.Conv2d(2 * z, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z, 1)
        self.embed_dim = embed_dim

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Image in [-1, 1] (b, 3, H, W) -> posterior over latents (b, embed_dim, H/8, W/8)."""
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, sample_posterior: bool = True):
        posterior = self.encode(x)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior
