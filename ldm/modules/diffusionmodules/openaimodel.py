"""The Stable Diffusion UNet (upstream ``ldm/modules/diffusionmodules/openaimodel.py``), trimmed to what
the SD 1.x / 2.x and ControlNet configs use.

The encoder half (``time_embed``, ``input_blocks``, ``middle_block``) is built by one function,
``build_encoder``, which the ControlNet reuses for its trainable copy: one definition, so the two stay
key-compatible (``tool_add_control.py`` copies UNet encoder weights into the ControlNet by name).
"""
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.util import (InPlaceSiLU, maybe_checkpoint, normalization, repeat_rows,
                                              timestep_embedding, zero_module)


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the time embedding to ResBlocks and the text context to transformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: Optional[torch.Tensor] = None,
                upsample_size: Optional[Sequence[int]] = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv. ``size`` upsamples to that size instead: the size of the skip the result
    meets, which differs from 2x where a latent side is not a multiple of 8 (diffusers does the same)."""

    def __init__(self, channels: int, out_channels: Optional[int] = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(size), mode="nearest")
        return self.conv(x)


class Downsample(nn.Module):
    """3x3 conv with stride 2."""

    def __init__(self, channels: int, out_channels: Optional[int] = None):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding added in between and a skip connection."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: Optional[int] = None,
                 use_checkpoint: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(normalization(channels), InPlaceSiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(normalization(out_channels), InPlaceSiLU(), nn.Dropout(p=dropout),
                                        zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self._forward, x, emb, enabled=self.use_checkpoint)

    def _forward(self, x, emb):
        # the sums go into the convolutions' fresh outputs (their backward does not need them)
        h = self.in_layers(x)
        h += repeat_rows(self.emb_layers(emb), h.shape[0]).to(h.dtype)[..., None, None]
        out = self.out_layers(h)
        out += self.skip_connection(x)
        return out


def _heads(ch: int, num_heads: int, num_head_channels: int, legacy: bool) -> tuple:
    """(n_heads, d_head) at a level with ``ch`` channels: SD1 fixes the head count, SD2 the head width."""
    if num_head_channels == -1:
        n_heads, d_head = num_heads, ch // num_heads
    else:
        n_heads, d_head = ch // num_head_channels, num_head_channels
    if legacy:  # upstream's legacy mode ties the width to the head count for spatial transformers
        d_head = ch // num_heads
    return n_heads, d_head


class UNetSpec:
    """The architecture numbers shared by the UNet and its ControlNet copy, with upstream's defaults."""

    def __init__(self, in_channels: int, model_channels: int, num_res_blocks: int, attention_resolutions: Sequence[int],
                 dropout: float = 0.0, channel_mult: Sequence[int] = (1, 2, 4, 8), conv_resample: bool = True,
                 dims: int = 2, use_checkpoint: bool = False, use_fp16: bool = False, num_heads: int = -1,
                 num_head_channels: int = -1, use_spatial_transformer: bool = True, transformer_depth: int = 1,
                 context_dim: Optional[int] = None, legacy: bool = True, use_linear_in_transformer: bool = False,
                 image_size: Optional[int] = None):
        # image_size is in every upstream config but unused ("# unused"); use_fp16 is superseded by the
        # dtype of the weights (model.half()/.to(bfloat16)); dims and conv_resample only take SD's values.
        if not use_spatial_transformer or context_dim is None:
            raise ValueError("Stable Diffusion UNets need use_spatial_transformer=True and a context_dim")
        if dims != 2 or not conv_resample:
            raise ValueError(f"unsupported UNet option dims={dims}, conv_resample={conv_resample}")
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("set num_heads (SD1) or num_head_channels (SD2)")
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.dropout = dropout
        self.channel_mult = tuple(channel_mult)
        self.use_checkpoint = use_checkpoint
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.transformer_depth = transformer_depth
        self.context_dim = context_dim
        self.legacy = legacy
        self.use_linear = use_linear_in_transformer

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    def resblock(self, ch: int, out_ch: int) -> ResBlock:
        return ResBlock(ch, self.time_embed_dim, self.dropout, out_ch, self.use_checkpoint)

    def transformer(self, ch: int) -> SpatialTransformer:
        n_heads, d_head = _heads(ch, self.num_heads, self.num_head_channels, self.legacy)
        return SpatialTransformer(ch, n_heads, d_head, depth=self.transformer_depth, context_dim=self.context_dim,
                                  use_linear=self.use_linear, use_checkpoint=self.use_checkpoint)

    def build_encoder(self):
        """Return ``(time_embed, input_blocks, middle_block, skip_channels)``.

        ``skip_channels[i]`` is the channel count of ``input_blocks[i]``'s output: the skips the decoder
        consumes and the ControlNet's zero convs act on (12 for SD).
        """
        mc = self.model_channels
        time_embed = nn.Sequential(nn.Linear(mc, self.time_embed_dim), nn.SiLU(),
                                   nn.Linear(self.time_embed_dim, self.time_embed_dim))
        blocks = [TimestepEmbedSequential(nn.Conv2d(self.in_channels, mc, 3, padding=1))]
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                layers = [self.resblock(ch, mult * mc)]
                ch = mult * mc
                if ds in self.attention_resolutions:
                    layers.append(self.transformer(ch))
                blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(self.channel_mult) - 1:
                blocks.append(TimestepEmbedSequential(Downsample(ch, ch)))
                skip_channels.append(ch)
                ds *= 2
        middle = TimestepEmbedSequential(self.resblock(ch, ch), self.transformer(ch), self.resblock(ch, ch))
        return time_embed, nn.ModuleList(blocks), middle, skip_channels

    def build_decoder(self, skip_channels: List[int], out_channels: int):
        """Return ``(output_blocks, out)``, consuming ``skip_channels`` in reverse."""
        mc = self.model_channels
        skips = list(skip_channels)
        ch = self.channel_mult[-1] * mc
        ds = 2 ** (len(self.channel_mult) - 1)
        blocks = []
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                layers = [self.resblock(ch + skips.pop(), mc * mult)]
                ch = mc * mult
                if ds in self.attention_resolutions:
                    layers.append(self.transformer(ch))
                if level and i == self.num_res_blocks:
                    layers.append(Upsample(ch, ch))
                    ds //= 2
                blocks.append(TimestepEmbedSequential(*layers))
        out = nn.Sequential(normalization(ch), InPlaceSiLU(), zero_module(nn.Conv2d(mc, out_channels, 3, padding=1)))
        return nn.ModuleList(blocks), out


def check_inputs(owner: str, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, spec: UNetSpec) -> None:
    """Refuse inputs that do not fit the network, naming the input, the expected and the received shape."""
    if x.dim() != 4 or x.shape[1] != spec.in_channels:
        raise ValueError(f"{owner}: latents must be (batch, {spec.in_channels}, height, width), "
                         f"got {tuple(x.shape)}")
    if timesteps.dim() != 1 or timesteps.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"{owner}: timesteps must be (batch,) = ({x.shape[0]},), got {tuple(timesteps.shape)}")
    if context.dim() != 3 or context.shape[2] != spec.context_dim:
        raise ValueError(f"{owner}: text context must be (batch, tokens, {spec.context_dim}), got "
                         f"{tuple(context.shape)}; a context of another width comes from another text encoder "
                         f"(SD 1.x: 768, SD 2.x: 1024)")
    if context.shape[0] % x.shape[0]:
        raise ValueError(f"{owner}: the context's batch ({context.shape[0]}) must be a multiple of the latents' "
                         f"({x.shape[0]})")


class UNetModel(nn.Module):
    """Noise predictor eps(x_t, t, context): latents (b, c, h, w), timesteps (b,), text (b, n, context_dim).

    The context may also have k * b rows (classifier-free guidance: the same latents under k prompts): the
    output then has k * b rows, row j for latent j % b, as if ``x`` and ``t`` had been tiled k times, but the
    layers before the first cross-attention run on the b latent rows only (``repeat_rows``).

    ``control`` (optional) is the ControlNet output: 12 skip residuals then the middle one, added to the
    middle block output and to the skips as the decoder consumes them.
    """

    def __init__(self, out_channels: int, **spec):
        super().__init__()
        self.spec = UNetSpec(**spec)
        self.model_channels = self.spec.model_channels
        self.time_embed, self.input_blocks, self.middle_block, skips = self.spec.build_encoder()
        self.output_blocks, self.out = self.spec.build_decoder(skips, out_channels)

    def encode(self, x, timesteps, context):
        """Run the encoder half; return (middle output, skips, time embedding). Inputs are cast to the
        weights' dtype."""
        check_inputs("UNetModel", x, timesteps, context, self.spec)
        t_emb = timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(t_emb)
        h, context = x.to(emb.dtype), context.to(emb.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        return self.middle_block(h, emb, context), skips, emb

    def decode(self, h, skips, emb, context, control=None, only_mid_control=False):
        context = context.to(emb.dtype)
        rows = context.shape[0]  # the encoder may have left some activations shared (repeat_rows)
        h = repeat_rows(h, rows)
        if control is not None:
            control = list(control)
            h = h + repeat_rows(control.pop(), rows)
        for block in self.output_blocks:
            skip = repeat_rows(skips.pop(), rows)
            if control is not None and not only_mid_control:
                skip = skip + repeat_rows(control.pop(), rows)
            upsample_size = skips[-1].shape[2:] if skips else None  # where the next skip joins
            h = block(torch.cat([h, skip], dim=1), emb, context, upsample_size)
        return self.out(h)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                control: Optional[Sequence[torch.Tensor]] = None, only_mid_control: bool = False) -> torch.Tensor:
        h, skips, emb = self.encode(x, timesteps, context)
        return self.decode(h, skips, emb, context, control, only_mid_control).to(x.dtype)
