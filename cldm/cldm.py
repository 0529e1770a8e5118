"""ControlNet 1.0 (Zhang & Agrawala 2023, arXiv 2302.05543; upstream ``cldm/cldm.py``).

* ``ControlNet``: a trainable copy of the UNet encoder (same builder, same key names) fed the noisy
  latents plus the condition image through ``input_hint_block``; each of its 12 skip outputs and its
  middle output leave through a zero-initialised 1x1 conv. At initialisation they are all zero, so the
  locked model is untouched (section 3.1 of the paper).
* ``ControlledUnetModel``: the locked Stable Diffusion UNet, adding those 13 residuals to its middle
  block and to the skips its decoder consumes.
* ``ControlLDM``: LatentDiffusion with a ControlNet, what the yaml configs and checkpoints describe.

ControlNet 1.1's behaviour flags live here too: ``global_average_pooling`` (the shuffle model: each residual
averaged over space, applied on the conditional side of guidance only) and the three control modes of the
webui extension (``CONTROL_MODES``).
"""
from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from einops import rearrange
from torch import nn

from ldm.models.diffusion.ddpm import LatentDiffusion, guided_eps
from ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, UNetModel, UNetSpec, check_inputs
from ldm.modules.diffusionmodules.util import repeat_rows, timestep_embedding, zero_module
from ldm.util import instantiate_from_config, log_txt_as_img

NUM_CONTROLS = 13  # 12 encoder skips + the middle block
# Guess mode weights control i (0 = shallowest skip, 12 = middle) by strength * 0.825 ** (12 - i).
# 0.825 ~ 10 ** (-1/12): the 13 scales rise geometrically from ~0.1 to 1.0 (0.825 ** 12 = 0.099).
# The value is upstream's, kept for identical outputs.
GUESS_MODE_DECAY = 0.825


# The control modes of the webui extension (its labels): "balanced" is ControlNet 1.0's behaviour; "prompt"
# ("My prompt is more important") applies the guess-mode scales on both sides of guidance; "control"
# ("ControlNet is more important") applies them on the conditional side only, which is upstream's guess mode.
CONTROL_MODES = {"balanced": "Balanced", "prompt": "My prompt is more important",
                 "control": "ControlNet is more important"}


def control_scales(strength: float = 1.0, guess_mode: bool = False, mode: Optional[str] = None) -> List[float]:
    """Per-residual multipliers for a ControlNet of the given strength (guess mode = control mode "control")."""
    mode = control_mode(mode, guess_mode)
    if mode != "balanced":
        return [strength * GUESS_MODE_DECAY ** (NUM_CONTROLS - 1 - i) for i in range(NUM_CONTROLS)]
    return [strength] * NUM_CONTROLS


def control_mode(mode: Optional[str] = None, guess_mode: bool = False) -> str:
    """The control mode's key in ``CONTROL_MODES`` from a key, a label or upstream's ``guess_mode`` flag."""
    if mode is None:
        return "control" if guess_mode else "balanced"
    for key, label in CONTROL_MODES.items():
        if mode in (key, label):
            return key
    raise ValueError(f"unknown control mode {mode!r}; expected one of {sorted(CONTROL_MODES)} or their labels "
                     f"{list(CONTROL_MODES.values())}")


class ControlNet(nn.Module):
    """(x (b, 4, h, w), hint (b, 3, 8h, 8w) in [0, 1], t (b,), context) -> 13 residuals, shallow to deep.

    As in UNetModel, the context may have k * b rows; residuals from before the first cross-attention then
    keep b rows (the UNet tiles them). ``global_average_pooling`` (ControlNet 1.1's shuffle) marks a network
    whose residuals are meant to be averaged over space; ``ControlLDM`` applies it."""

    def __init__(self, hint_channels: int, global_average_pooling: bool = False, **spec):
        super().__init__()
        self.spec = UNetSpec(**spec)
        self.hint_channels = hint_channels
        self.global_average_pooling = global_average_pooling
        self.model_channels = self.spec.model_channels
        self.time_embed, self.input_blocks, self.middle_block, skip_channels = self.spec.build_encoder()
        # Condition image -> latent resolution: eight 3x3 convs (three with stride 2), SiLU in between,
        # the last one zero-initialised so the hint starts with no effect.
        chans = [hint_channels, 16, 16, 32, 32, 96, 96, 256]
        strides = [1, 1, 2, 1, 2, 1, 2]
        layers = []
        for c_in, c_out, stride in zip(chans, chans[1:], strides):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.SiLU()]
        layers.append(zero_module(nn.Conv2d(256, self.model_channels, 3, padding=1)))
        self.input_hint_block = TimestepEmbedSequential(*layers)
        self.zero_convs = nn.ModuleList(self._zero_conv(ch) for ch in skip_channels)
        self.middle_block_out = self._zero_conv(skip_channels[-1])

    @staticmethod
    def _zero_conv(channels: int) -> TimestepEmbedSequential:
        return TimestepEmbedSequential(zero_module(nn.Conv2d(channels, channels, 1)))

    def encode_hint(self, hint: torch.Tensor) -> torch.Tensor:
        """The condition image at latent resolution with ``model_channels`` channels, as it joins the latents.
        It depends on the image alone, so a sampler may compute it once for all its steps."""
        return self.input_hint_block(hint.to(self.time_embed[0].weight.dtype), None)

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                encoded_hint: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """``encoded_hint``: ``encode_hint(hint)`` computed earlier, which then replaces ``hint``."""
        check_inputs(type(self).__name__, x, timesteps, context, self.spec)
        if encoded_hint is None:
            expected = (self.hint_channels, 8 * x.shape[2], 8 * x.shape[3])
            if hint.dim() != 4 or tuple(hint.shape[1:]) != expected or hint.shape[0] not in (1, x.shape[0]):
                raise ValueError(f"ControlNet: the condition image must be (batch, {expected[0]}, {expected[1]}, "
                                 f"{expected[2]}) for latents {tuple(x.shape)} (8 pixels per latent), got "
                                 f"{tuple(hint.shape)}")
        t_emb = timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(t_emb)
        guided_hint = self.encode_hint(hint) if encoded_hint is None else encoded_hint
        h, context = x.to(emb.dtype), context.to(emb.dtype)
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
    control is applied; ``model=None`` means the LDM's own ``control_model``. ``cond_only`` applies it to
    the conditional side of classifier-free guidance only (the unconditional side gets no residuals).
    """
    hint: torch.Tensor  # (b, 3, 8h, 8w) in [0, 1]
    scales: Sequence[float] = (1.0,) * NUM_CONTROLS
    model: Optional[ControlNet] = None
    start: float = 0.0
    end: float = 1.0
    cond_only: bool = False

    def __post_init__(self):
        if len(self.scales) != NUM_CONTROLS:
            raise ValueError(f"expected {NUM_CONTROLS} control scales, got {len(self.scales)}")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"control range must satisfy 0 <= start <= end <= 1, got {self.start}, {self.end}")

    @classmethod
    def for_mode(cls, hint: torch.Tensor, strength: float = 1.0, mode: Optional[str] = None, **kwargs) -> "ControlInput":
        """The control of a given strength and control mode (a key or a label of ``CONTROL_MODES``)."""
        mode = control_mode(mode)
        return cls(hint, control_scales(strength, mode=mode), cond_only=mode == "control", **kwargs)

    def active(self, progress: float) -> bool:
        return self.start <= progress < self.end


class ControlLDM(LatentDiffusion):
    """LatentDiffusion + ControlNet. Batches add ``control_key`` (b, H, W, 3) condition images in [0, 1].

    ``global_average_pooling`` (the ControlNet 1.1 shuffle model's yaml flag) is a property of its ControlNet:
    its residuals are averaged over space and applied on the conditional side of guidance only."""

    def __init__(self, control_stage_config: Mapping, control_key: str, only_mid_control: bool = False,
                 sd_locked: bool = True, global_average_pooling: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.control_model = instantiate_from_config(control_stage_config)
        self.control_model.global_average_pooling = bool(global_average_pooling or
                                                         self.control_model.global_average_pooling)
        self.control_key = control_key
        self.only_mid_control = only_mid_control
        self.control_scales = [1.0] * NUM_CONTROLS  # training default; sampling takes scales per call
        self.sd_locked = sd_locked

    @property
    def global_average_pooling(self) -> bool:
        return self.control_model.global_average_pooling

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
                       controls: Sequence[ControlInput], cond_rows: Optional[int] = None,
                       encoded_hints: Optional[Dict[int, torch.Tensor]] = None) -> torch.Tensor:
        """UNet output with the residuals of every ControlNet in ``controls`` added (the paper composes
        several ControlNets by summing them). ``context`` may have a multiple of x's rows (see UNetModel).
        ``cond_rows=n``: the first n context rows are the conditional side of guidance (None: all of them);
        conditional-only controls (``cond_only``, pooled networks) run on those rows and give the others
        zero residuals. ``encoded_hints``, a dict kept across the calls of one sampling run, holds each
        control's encoded hint (``ControlNet.encode_hint``) after its first use."""
        rows = context.shape[0]
        residuals = None
        for control in controls:
            net = control.model if control.model is not None else self.control_model
            n = cond_rows if cond_rows is not None and (control.cond_only or net.global_average_pooling) else rows
            if n == 0:
                continue
            hint = repeat_rows(control.hint.to(x.device), x.shape[0])  # cond and uncond rows share one hint
            encoded = None
            if encoded_hints is not None:
                encoded = encoded_hints.get(id(control))
                if encoded is None:
                    encoded = encoded_hints[id(control)] = net.encode_hint(hint)
            outs = [o if s == 1 else o * s for o, s in zip(net(x, hint, t, context[:n], encoded), control.scales)]
            if net.global_average_pooling:
                outs = [o.mean(dim=(2, 3), keepdim=True) for o in outs]
            if n < rows:
                outs = [torch.cat([repeat_rows(o, n), o.new_zeros((rows - n, *o.shape[1:]))]) for o in outs]
            residuals = outs if residuals is None else [r + o for r, o in zip(residuals, outs)]
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
                      controls: Optional[Sequence[ControlInput]] = None, batched_cfg: bool = True,
                      mode: Optional[str] = None):
        """Noise predictor for the sampler, with classifier-free guidance (``ldm.models.diffusion.ddpm.guided_eps``).

        The control is built from ``cond['c_concat']``, ``control_scales`` (default: those of
        ``mode``, a key or label of ``CONTROL_MODES``) and ``control_start``/``control_end``; ``controls`` replaces it (several ControlNets,
        each with its own mode). The unconditional side sees the same control, except for conditional-only
        controls: control mode "control", upstream's ``guess_mode`` (also implied by an ``uncond`` whose
        ``c_concat`` is None, as upstream apps pass it) and pooled (shuffle) networks.
        """
        context = torch.cat(cond["c_crossattn"], 1)
        u_context = None if uncond is None else torch.cat(uncond["c_crossattn"], 1)
        if uncond is not None and "c_concat" in uncond and uncond["c_concat"] is None:
            guess_mode = True
        if controls is None:
            hints = cond.get("c_concat")
            controls = [] if hints is None else [ControlInput.for_mode(
                torch.cat(hints, 1), 1.0, control_mode(mode, guess_mode), start=control_start, end=control_end)]
            if control_scales is not None:
                controls = [replace(c, scales=control_scales) for c in controls]
        elif guess_mode:
            controls = [replace(c, cond_only=True) for c in controls]
        encoded_hints = {}  # the hints' encodings, computed at the first step (see controlled_eps)

        def eps_of(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, progress: float,
                   cond_rows: Optional[int]) -> torch.Tensor:
            active = [c for c in controls if c.active(progress)]
            cache = None if torch.is_grad_enabled() else encoded_hints  # a graph must reach the hint encoder
            return self.eps_from_output(x, t, self.controlled_eps(x, t, ctx, active, cond_rows, cache))

        return guided_eps(eps_of, context, u_context, guidance_scale, batched_cfg)

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
        with self.ema_scope():
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
