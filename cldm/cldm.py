"""ControlNet 1.0 (Zhang & Agrawala 2023, arXiv 2302.05543; upstream ``cldm/cldm.py``).

* ``ControlNet``: a trainable copy of the UNet encoder (same builder, same key names) fed the noisy
  latents plus the condition image through ``input_hint_block``; each of its 12 skip outputs and its
  middle output leave through a zero-initialised 1x1 conv. At initialisation they are all zero, so the
  locked model is untouched (section 3.1 of the paper).
* ``ControlledUnetModel``: the locked Stable Diffusion UNet, adding those 13 residuals to its middle
  block and to the skips its decoder consumes.
* ``ControlLDM``: LatentDiffusion with a ControlNet, what the yaml configs and checkpoints describe.
"""
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from einops import rearrange
from torch import nn

from ldm.models.diffusion.ddpm import LatentDiffusion, batched_guidance, guidance
from ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, UNetModel, UNetSpec
from ldm.modules.diffusionmodules.util import repeat_rows, timestep_embedding, zero_module
from ldm.modules.layers import Conv2d
from ldm.util import instantiate_from_config, log_txt_as_img, release_free_memory

NUM_CONTROLS = 13  # 12 encoder skips + the middle block
# Guess mode weights control i (0 = shallowest skip, 12 = middle) by strength * 0.825 ** (12 - i).
# 0.825 ~ 10 ** (-1/12): the 13 scales rise geometrically from ~0.1 to 1.0 (0.825 ** 12 = 0.099).
# The value is upstream's, kept for identical outputs.
GUESS_MODE_DECAY = 0.825


def control_scales(strength: float = 1.0, guess_mode: bool = False) -> List[float]:
    """Per-residual multipliers for a ControlNet of the given strength."""
    if guess_mode:
        return [strength * GUESS_MODE_DECAY ** (NUM_CONTROLS - 1 - i) for i in range(NUM_CONTROLS)]
    return [strength] * NUM_CONTROLS


class ControlNet(nn.Module):
    """(x (b, 4, h, w), hint (b, 3, 8h, 8w) in [0, 1], t (b,), context) -> 13 residuals, shallow to deep.

    As in UNetModel, the context may have k * b rows; residuals from before the first cross-attention then
    keep b rows (the UNet tiles them)."""

    def __init__(self, hint_channels: int, **spec):
        super().__init__()
        self.spec = UNetSpec(**spec)
        self.model_channels = self.spec.model_channels
        self.time_embed, self.input_blocks, self.middle_block, skip_channels = self.spec.build_encoder()
        # Condition image -> latent resolution: eight 3x3 convs (three with stride 2), SiLU in between,
        # the last one zero-initialised so the hint starts with no effect.
        chans = [hint_channels, 16, 16, 32, 32, 96, 96, 256]
        strides = [1, 1, 2, 1, 2, 1, 2]
        layers = []
        for c_in, c_out, stride in zip(chans, chans[1:], strides):
            layers += [Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.SiLU()]
        layers.append(zero_module(Conv2d(256, self.model_channels, 3, padding=1)))
        self.input_hint_block = TimestepEmbedSequential(*layers)
        self.zero_convs = nn.ModuleList(self._zero_conv(ch) for ch in skip_channels)
        self.middle_block_out = self._zero_conv(skip_channels[-1])

    @staticmethod
    def _zero_conv(channels: int) -> TimestepEmbedSequential:
        return TimestepEmbedSequential(zero_module(Conv2d(channels, channels, 1)))

    def encode_hint(self, hint: torch.Tensor) -> torch.Tensor:
        """The condition image at latent resolution with ``model_channels`` channels, as it joins the latents.
        It depends on the image alone, so a sampler may compute it once for all its steps."""
        return self.input_hint_block(hint.to(self.time_embed[0].weight.dtype), None)

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                encoded_hint: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """``encoded_hint``: ``encode_hint(hint)`` computed earlier, which then replaces ``hint``."""
        t_emb = timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(t_emb)
        guided_hint = self.encode_hint(hint) if encoded_hint is None else encoded_hint
        h = x.to(emb.dtype)
        outs = []
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if i == 0:  # the hint joins after the first conv, at model_channels
                h = h + guided_hint
            outs.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h, emb, context))
        return outs


class ControlledUnetModel(UNetModel):
    """The locked UNet. Its encoder always runs without recording a graph: no ControlNet setting trains it
    (sd_locked=False unlocks only the decoder), so storing its activations would only cost memory."""

    def forward(self, x, timesteps, context, control=None, only_mid_control=False):
        with torch.no_grad():
            h, skips, emb = self.encode(x, timesteps, context)
        return self.decode(h, skips, emb, context, control, only_mid_control).to(x.dtype)


@dataclass
class ControlInput:
    """One ControlNet applied while sampling: its condition image, residual scales and active range.

    ``start``/``end`` are fractions of the sampling steps (0 = first, noisiest step) during which the
    control is applied; ``model=None`` means the LDM's own ``control_model``.
    """
    hint: torch.Tensor  # (b, 3, 8h, 8w) in [0, 1]
    scales: Sequence[float] = (1.0,) * NUM_CONTROLS
    model: Optional[ControlNet] = None
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self):
        if len(self.scales) != NUM_CONTROLS:
            raise ValueError(f"expected {NUM_CONTROLS} control scales, got {len(self.scales)}")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"control range must satisfy 0 <= start <= end <= 1, got {self.start}, {self.end}")

    def active(self, progress: float) -> bool:
        return self.start <= progress < self.end


class ControlLDM(LatentDiffusion):
    """LatentDiffusion + ControlNet. Batches add ``control_key`` (b, H, W, 3) condition images in [0, 1]."""

    def __init__(self, control_stage_config: Mapping, control_key: str, only_mid_control: bool = False,
                 sd_locked: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.control_model = instantiate_from_config(control_stage_config)
        self.control_key = control_key
        self.only_mid_control = only_mid_control
        self.control_scales = [1.0] * NUM_CONTROLS  # training default; sampling takes scales per call
        self.sd_locked = sd_locked

    @property
    def sd_locked(self) -> bool:
        return self._sd_locked

    @sd_locked.setter
    def sd_locked(self, locked: bool) -> None:
        """Locked: only the ControlNet trains. Unlocked: the UNet decoder and output layer train too.
        The UNet encoder never trains (it runs under no_grad, see ControlledUnetModel)."""
        self._sd_locked = bool(locked)
        unet = self.model.diffusion_model
        unet.requires_grad_(False)
        if not locked:
            unet.output_blocks.requires_grad_(True)
            unet.out.requires_grad_(True)

    def trainable_parameters(self) -> List[nn.Parameter]:
        params = list(self.control_model.parameters())
        if not self.sd_locked:
            unet = self.model.diffusion_model
            params += list(unet.output_blocks.parameters()) + list(unet.out.parameters())
        return params

    @torch.no_grad()
    def get_input(self, batch: Mapping, k: str, bs: Optional[int] = None):
        z, c = super().get_input(batch, k, bs=bs)
        hint = batch[self.control_key]
        if bs is not None:
            hint = hint[:bs]
        hint = rearrange(hint.to(self.device), "b h w c -> b c h w").to(memory_format=torch.contiguous_format).float()
        return z, {"c_crossattn": [c], "c_concat": [hint]}

    def controlled_eps(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                       controls: Sequence[ControlInput], control_rows: Optional[int] = None,
                       encoded_hints: Optional[Dict[int, torch.Tensor]] = None) -> torch.Tensor:
        """UNet output with the residuals of every ControlNet in ``controls`` added (the paper composes
        several ControlNets by summing them). ``context`` may have a multiple of x's rows (see UNetModel).
        ``control_rows=n`` runs the ControlNets on the first n context rows only and gives the other rows
        zero residuals (guess mode's unconditional half). ``encoded_hints``, a dict kept across the calls
        of one sampling run, holds each control's encoded hint (``ControlNet.encode_hint``) after its first
        use."""
        rows = context.shape[0]
        n = rows if control_rows is None else control_rows
        residuals = None
        for control in controls:
            net = control.model if control.model is not None else self.control_model
            hint = repeat_rows(control.hint.to(x.device), x.shape[0])  # cond and uncond rows share one hint
            encoded = None
            if encoded_hints is not None:
                encoded = encoded_hints.get(id(control))
                if encoded is None:
                    encoded = encoded_hints[id(control)] = net.encode_hint(hint)
            outs = [o if s == 1 else o * s for o, s in zip(net(x, hint, t, context[:n], encoded), control.scales)]
            if n < rows:
                outs = [torch.cat([repeat_rows(o, n), o.new_zeros((rows - n, *o.shape[1:]))]) for o in outs]
            residuals = outs if residuals is None else [r + o for r, o in zip(residuals, outs)]
        if controls and x.device.type == "cpu":
            release_free_memory()  # the ControlNets' freed activations, before the UNet's pile onto them
        return self.model.diffusion_model(x, t, context=context, control=residuals,
                                          only_mid_control=self.only_mid_control)

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Mapping,
                    control_scales: Optional[Sequence[float]] = None) -> torch.Tensor:
        """Upstream's interface: ``cond = {'c_crossattn': [ctx], 'c_concat': [hint] or None}``."""
        context = torch.cat(cond["c_crossattn"], 1)
        hints = cond.get("c_concat")
        controls = [] if hints is None else [
            ControlInput(torch.cat(hints, 1), control_scales or self.control_scales)]
        return self.controlled_eps(x_noisy, t, context, controls)

    def guided_eps_fn(self, cond: Mapping, uncond: Optional[Mapping] = None, guidance_scale: float = 1.0,
                      control_scales: Optional[Sequence[float]] = None, guess_mode: bool = False,
                      control_start: float = 0.0, control_end: float = 1.0,
                      controls: Optional[Sequence[ControlInput]] = None, batched_cfg: bool = True):
        """Noise predictor for the sampler.

        Classifier-free guidance ``e_u + s (e_c - e_u)`` with cond and uncond as ONE batch
        (``batched_cfg=False``: two passes, less memory). The unconditional side sees the same control,
        except in guess mode (also implied by an ``uncond`` whose ``c_concat`` is None, as upstream apps
        pass it), where it gets zero residuals. ``controls`` overrides the control built from
        ``cond['c_concat']``, ``control_scales`` and ``control_start``/``control_end`` (e.g. two ControlNets).
        """
        context = torch.cat(cond["c_crossattn"], 1)
        if controls is None:
            hints = cond.get("c_concat")
            controls = [] if hints is None else [ControlInput(torch.cat(hints, 1), control_scales or self.control_scales,
                                                              start=control_start, end=control_end)]
        use_cfg = uncond is not None and guidance_scale != 1.0
        if use_cfg:
            u_context = torch.cat(uncond["c_crossattn"], 1)
            guess_mode = guess_mode or ("c_concat" in uncond and uncond["c_concat"] is None)

        encoded_hints = {}  # the hints' encodings, computed at the first step (see controlled_eps)

        def eps_fn(x: torch.Tensor, t: torch.Tensor, progress: float) -> torch.Tensor:
            active = [c for c in controls if c.active(progress)]
            cache = None if torch.is_grad_enabled() else encoded_hints  # a graph must reach the hint encoder
            if not use_cfg:
                return self.eps_from_output(x, t, self.controlled_eps(x, t, context, active, encoded_hints=cache))
            if batched_cfg:
                both, rows = torch.cat([context, u_context]), context.shape[0] if guess_mode else None
                return batched_guidance(lambda x, t: self.eps_from_output(
                    x, t, self.controlled_eps(x, t, both, active, rows, cache)), x, t, guidance_scale)
            e_c = self.eps_from_output(x, t, self.controlled_eps(x, t, context, active, encoded_hints=cache))
            e_u = self.eps_from_output(x, t, self.controlled_eps(x, t, u_context, [] if guess_mode else active,
                                                                 encoded_hints=cache))
            return guidance(e_c, e_u, guidance_scale)

        return eps_fn

    @torch.no_grad()
    def log_images(self, batch: Mapping, N: int = 4, n_row: int = 2, sample: bool = False, ddim_steps: int = 50,
                   ddim_eta: float = 0.0, unconditional_guidance_scale: float = 9.0, **unused) -> Dict[str, torch.Tensor]:
        """Images for the logger, all (N, 3, H, W) in [-1, 1]: reconstruction, control, caption, samples."""
        z, c = self.get_input(batch, self.first_stage_key, bs=N)
        hint, context = c["c_concat"][0], c["c_crossattn"][0]
        N = z.shape[0]
        logs = {"reconstruction": self.decode_first_stage(z), "control": hint * 2.0 - 1.0,
                "conditioning": log_txt_as_img(tuple(hint.shape[2:][::-1]), batch[self.cond_stage_key][:N],
                                               font_size=16)}
        cond = {"c_concat": [hint], "c_crossattn": [context]}
        if sample:
            logs["samples"] = self._sample_log(cond, None, z.shape, ddim_steps, ddim_eta, 1.0)
        if unconditional_guidance_scale > 1.0:
            uncond = {"c_concat": [hint], "c_crossattn": [self.get_unconditional_conditioning(N)]}
            logs[f"samples_cfg_scale_{unconditional_guidance_scale:.2f}"] = self._sample_log(
                cond, uncond, z.shape, ddim_steps, ddim_eta, unconditional_guidance_scale)
        return logs

    def low_vram_shift(self, is_diffusing: bool, device="cuda") -> None:
        """Keep only what the current phase needs on ``device`` (upstream's ``--save-memory``): the UNet and
        ControlNet while diffusing, the VAE and text encoder otherwise; the rest waits on the CPU."""
        active = (self.model, self.control_model) if is_diffusing else (self.first_stage_model, self.cond_stage_model)
        idle = (self.first_stage_model, self.cond_stage_model) if is_diffusing else (self.model, self.control_model)
        for module in idle:
            module.cpu()
        for module in active:
            module.to(device)
