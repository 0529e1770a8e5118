"""Latent diffusion (upstream ``ldm/models/diffusion/ddpm.py``), reduced to the text-conditioned
model that Stable Diffusion and ControlNet 1.0 use: a frozen VAE, a text encoder, a UNet noise
predictor trained with the epsilon (or v) MSE of DDPM, and the 13 schedule buffers its checkpoints hold.
"""
from contextlib import nullcontext
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ldm.modules.diffusionmodules.util import linear_beta_schedule, repeat_rows
from ldm.modules.ema import LitEma
from ldm.util import instantiate_from_config, log_txt_as_img

# Buffer names and order as in the checkpoints (all persistent, shape [timesteps]).
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


def _extract(buffer: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """buffer[t] shaped (b, 1, 1, ...) to broadcast against a tensor with ``ndim`` dims."""
    return buffer.gather(0, t).reshape(-1, *([1] * (ndim - 1)))


def guidance(e_c: torch.Tensor, e_u: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``e_u + s (e_c - e_u)``."""
    return e_u + scale * (e_c - e_u)


# eps_of(x, t, context, progress, cond_rows): the model's noise prediction for latents x under the context rows;
# cond_rows says how many leading rows are the conditional side of guidance (None: all of them).
ConditionedEps = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, Optional[int]], torch.Tensor]


def fused_adamw_runs(params: Sequence[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW takes these parameters: floating-point tensors (FSDP2's DTensor shards too) on
    the CPU or a GPU."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def guided_eps(eps_of: ConditionedEps, context: torch.Tensor, u_context: Optional[torch.Tensor] = None,
               scale: float = 1.0, batched: bool = True) -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """The sampler's ``eps_fn(x, t, progress)`` with classifier-free guidance (the one CFG helper).

    Batched (default), the b latents are evaluated ONCE under the 2b context rows ``[cond; uncond]``: same
    maths as two passes, half the calls, and the UNet shares the rows' work up to its first cross-attention
    (``repeat_rows``). ``batched=False``: two passes, less memory. Without ``u_context`` or at scale 1: no
    guidance, the conditional prediction."""
    def eps_fn(x: torch.Tensor, t: torch.Tensor, progress: float) -> torch.Tensor:
        if u_context is None or scale == 1.0:
            return eps_of(x, t, context, progress, None)
        if batched:
            e_c, e_u = eps_of(x, t, torch.cat([context, u_context]), progress, context.shape[0]).chunk(2)
        else:
            e_c, e_u = eps_of(x, t, context, progress, None), eps_of(x, t, u_context, progress, 0)
        return guidance(e_c, e_u, scale)

    return eps_fn


class DiffusionWrapper(nn.Module):
    """Holds the UNet as ``diffusion_model`` so checkpoint keys read ``model.diffusion_model.*``."""

    def __init__(self, unet_config: Mapping):
        super().__init__()
        self.diffusion_model = instantiate_from_config(unet_config)


class LatentDiffusion(pl.LightningModule):
    """Text-to-image latent diffusion. Batches are dicts: ``first_stage_key`` (b, H, W, 3) images in
    [-1, 1], ``cond_stage_key`` a list of b prompts."""

    def __init__(self, unet_config: Mapping, first_stage_config: Mapping, cond_stage_config: Mapping,
                 timesteps: int = 1000, linear_start: float = 1e-4, linear_end: float = 2e-2,
                 beta_schedule: str = "linear", first_stage_key: str = "image", cond_stage_key: str = "image",
                 image_size: int = 256, channels: int = 3, cond_stage_trainable: bool = False,
                 conditioning_key: str = "crossattn", scale_factor: float = 1.0, scale_by_std: bool = False,
                 parameterization: str = "eps", use_ema: bool = False, ema_decay: float = 0.9999,
                 learn_logvar: bool = False, logvar_init: float = 0.0, l_simple_weight: float = 1.0,
                 original_elbo_weight: float = 0.0, loss_type: str = "l2", learning_rate: float = 1e-4,
                 monitor: Optional[str] = None, num_timesteps_cond: int = 1, log_every_t: int = 100):
        super().__init__()
        # monitor / num_timesteps_cond / log_every_t are upstream bookkeeping: accepted so upstream yamls load.
        if beta_schedule != "linear":
            raise ValueError(f"only Stable Diffusion's 'linear' beta schedule is supported, got {beta_schedule!r}")
        if conditioning_key != "crossattn":
            raise ValueError(f"only conditioning_key='crossattn' (text) is supported, got {conditioning_key!r}")
        if parameterization not in ("eps", "v"):
            raise ValueError(f"parameterization must be 'eps' or 'v', got {parameterization!r}")
        if scale_by_std:
            raise ValueError("scale_by_std is not supported: set scale_factor (0.18215 for SD)")
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type must be 'l1' or 'l2', got {loss_type!r}")
        self.parameterization = parameterization
        self.first_stage_key = first_stage_key
        self.cond_stage_key = cond_stage_key
        self.image_size = image_size
        self.channels = channels
        self.cond_stage_trainable = cond_stage_trainable
        self.scale_factor = scale_factor
        self.learn_logvar = learn_logvar
        self.l_simple_weight = l_simple_weight
        self.original_elbo_weight = original_elbo_weight
        self.loss_type = loss_type
        self.learning_rate = learning_rate
        self.monitor = monitor

        self.model = DiffusionWrapper(unet_config)
        self.use_ema = use_ema
        if use_ema:
            self.model_ema = LitEma(self.model, decay=ema_decay)

        self.first_stage_model = instantiate_from_config(first_stage_config)
        self.first_stage_model.requires_grad_(False)
        self.cond_stage_model = instantiate_from_config(cond_stage_config)
        if not cond_stage_trainable:
            self.cond_stage_model.requires_grad_(False)

        self.num_timesteps = timesteps
        self.linear_start, self.linear_end = linear_start, linear_end
        self.register_schedule()
        logvar = torch.full((timesteps,), logvar_init)
        if learn_logvar:
            self.logvar = nn.Parameter(logvar)
        else:
            self.register_buffer("logvar", logvar)

    # ------------------------------------------------------------------ schedule
    def register_schedule(self) -> None:
        """(Re)compute the schedule buffers from the betas, in float64, stored as float32 like upstream."""
        betas = linear_beta_schedule(self.num_timesteps, self.linear_start, self.linear_end)
        alphas = 1.0 - betas
        ac = np.cumprod(alphas)
        ac_prev = np.append(1.0, ac[:-1])
        posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        values = {
            "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": np.sqrt(ac), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "log_one_minus_alphas_cumprod": np.log(1.0 - ac), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0), "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        }
        device = self.betas.device if hasattr(self, "betas") else None  # None: the default (maybe meta) device
        for name in SCHEDULE_BUFFERS:
            self.register_buffer(name, torch.tensor(values[name], dtype=torch.float32, device=device))
        # Variational-bound weights (never in a checkpoint), eps parameterisation as upstream.
        lvlb = betas**2 / (2 * np.maximum(posterior_variance, 1e-20) * alphas * (1 - ac))
        lvlb[0] = lvlb[1]
        self.register_buffer("lvlb_weights", torch.tensor(lvlb, dtype=torch.float32, device=device), persistent=False)
        # Sampler's copy: float64 of the float32 values, so DDIM sees upstream's numbers whatever the
        # dtype the module is later cast to.
        self.alphas_cumprod_np = ac.astype(np.float32).astype(np.float64)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        return (_extract(self.sqrt_alphas_cumprod, t, x_start.ndim).to(x_start.dtype) * x_start
                + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim).to(x_start.dtype) * noise)

    def get_v(self, x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (_extract(self.sqrt_alphas_cumprod, t, x_start.ndim) * noise
                - _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * x_start)

    def eps_from_output(self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The model's output as a noise prediction (identity for eps models, converts v)."""
        if self.parameterization == "eps":
            return output
        rows = output.shape[0]  # x_t and t may be shared by several context rows (batched guidance)
        t, x_t = repeat_rows(t, rows), repeat_rows(x_t, rows)
        return (_extract(self.sqrt_alphas_cumprod, t, x_t.ndim) * output
                + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * x_t)

    # ------------------------------------------------------------------ first stage / text
    def train(self, mode: bool = True):
        """Keep the frozen VAE (and a frozen text encoder) in eval mode whatever Lightning asks."""
        super().train(mode)
        self.first_stage_model.eval()
        if not self.cond_stage_trainable:
            self.cond_stage_model.eval()
        return self

    @torch.no_grad()
    def _first_stage_dtype(self) -> torch.dtype:
        return next(self.first_stage_model.parameters()).dtype

    def encode_first_stage(self, x: torch.Tensor):
        """Images (b, 3, H, W) in [-1, 1], of any float dtype -> the VAE's posterior (in the VAE's dtype)."""
        return self.first_stage_model.encode(x.to(self._first_stage_dtype()))

    def get_first_stage_encoding(self, posterior) -> torch.Tensor:
        z = posterior.sample() if hasattr(posterior, "sample") else posterior
        return self.scale_factor * z

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """Latents of any float dtype -> images (b, 3, H, W) in [-1, 1], in the VAE's dtype."""
        return self.first_stage_model.decode((z / self.scale_factor).to(self._first_stage_dtype()))

    def get_learned_conditioning(self, text: Sequence[str]) -> torch.Tensor:
        """Prompts -> context (b, n_tokens, context_dim)."""
        return self.cond_stage_model.encode(list(text))

    def get_unconditional_conditioning(self, n: int) -> torch.Tensor:
        return self.get_learned_conditioning([""] * n)

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def get_input(self, batch: Mapping, k: str, bs: Optional[int] = None):
        """Return ``[z, c]``: latents of ``batch[k]`` and the text conditioning (raw prompts when the text
        encoder is trainable, so that it is encoded with gradients in ``forward``)."""
        x = batch[k]
        if x.ndim == 3:
            x = x[..., None]
        x = rearrange(x, "b h w c -> b c h w").to(memory_format=torch.contiguous_format).float()
        text = list(batch[self.cond_stage_key])
        if bs is not None:
            x, text = x[:bs], text[:bs]
        x = x.to(self.device)
        z = self.get_first_stage_encoding(self.encode_first_stage(x)).detach()
        c = text if self.cond_stage_trainable else self.get_learned_conditioning(text)
        return [z, c]

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """UNet output for latents (b, 4, h, w); ``cond`` is a context tensor or ``{'c_crossattn': [ctx]}``."""
        context = torch.cat(cond["c_crossattn"], 1) if isinstance(cond, Mapping) else cond
        return self.model.diffusion_model(x_noisy, t, context=context)

    def forward(self, x: torch.Tensor, c) -> tuple:
        t = torch.randint(0, self.num_timesteps, (x.shape[0],), device=self.device).long()
        if self.cond_stage_trainable:
            c = self.get_learned_conditioning(c)
        return self.p_losses(x, c, t)

    def _elementwise_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss_type == "l1":
            return (pred - target).abs()
        return F.mse_loss(pred, target, reduction="none")

    def p_losses(self, x_start: torch.Tensor, cond, t: torch.Tensor, noise: Optional[torch.Tensor] = None):
        """Simple DDPM loss: MSE of the predicted noise (or v), per-sample mean, weighted by ``logvar``."""
        noise = torch.randn_like(x_start) if noise is None else noise
        x_noisy = self.q_sample(x_start, t, noise)
        output = self.apply_model(x_noisy, t, cond)
        target = noise if self.parameterization == "eps" else self.get_v(x_start, noise, t)
        prefix = "train" if self.training else "val"
        per_sample = self._elementwise_loss(output.float(), target.float()).mean(dim=[1, 2, 3])
        logvar_t = self.logvar.to(self.device)[t]
        loss = (per_sample / torch.exp(logvar_t) + logvar_t).mean() * self.l_simple_weight
        loss_dict = {f"{prefix}/loss_simple": per_sample.mean()}
        if self.learn_logvar:
            loss_dict[f"{prefix}/loss_gamma"] = loss
            loss_dict["logvar"] = self.logvar.data.mean()
        loss_vlb = (self.lvlb_weights[t] * per_sample).mean()
        loss_dict[f"{prefix}/loss_vlb"] = loss_vlb
        loss = loss + self.original_elbo_weight * loss_vlb
        loss_dict[f"{prefix}/loss"] = loss
        return loss, loss_dict

    def shared_step(self, batch: Mapping):
        x, c = self.get_input(batch, self.first_stage_key)
        return self(x, c)

    def training_step(self, batch: Mapping, batch_idx: int):
        loss, loss_dict = self.shared_step(batch)
        self.log_dict(loss_dict, prog_bar=True, logger=True, on_step=True, on_epoch=True, sync_dist=True,
                      batch_size=len(batch[self.cond_stage_key]))
        return loss

    def on_train_batch_end(self, *args, **kwargs) -> None:
        if self.use_ema:
            self.model_ema(self.model)

    def trainable_parameters(self) -> List[nn.Parameter]:
        params = list(self.model.parameters())
        if self.cond_stage_trainable:
            params += list(self.cond_stage_model.parameters())
        if self.learn_logvar:
            params.append(self.logvar)
        return params

    def configure_optimizers(self):
        """AdamW, as upstream; torch's fused implementation where it runs (the same update, 4-5x faster on a
        CPU for a ControlNet's 361 M parameters: 0.22 s against 1.05 s a step)."""
        params = self.trainable_parameters()
        return torch.optim.AdamW(params, lr=self.learning_rate, fused=fused_adamw_runs(params) or None)

    def ema_scope(self):
        """Context in which the UNet carries its EMA weights (no-op without EMA)."""
        return self.model_ema.average_parameters(self.model) if self.use_ema else nullcontext()

    # ------------------------------------------------------------------ sampling / logging
    def guided_eps_fn(self, cond, uncond=None, guidance_scale: float = 1.0, batched_cfg: bool = True,
                      **unsupported):
        """Noise predictor for the sampler with classifier-free guidance (``guided_eps``). ControlLDM adds the
        control options."""
        if unsupported:
            raise TypeError(f"{type(self).__name__} has no control; unexpected options {sorted(unsupported)}")
        context = torch.cat(cond["c_crossattn"], 1) if isinstance(cond, Mapping) else cond
        u_context = None if uncond is None else (
            torch.cat(uncond["c_crossattn"], 1) if isinstance(uncond, Mapping) else uncond)
        return guided_eps(lambda x, t, ctx, progress, cond_rows: self.eps_from_output(x, t, self.apply_model(x, t, ctx)),
                          context, u_context, guidance_scale, batched_cfg)

    def _sample_log(self, cond, uncond, latent_shape, ddim_steps: int, eta: float, guidance_scale: float):
        from ldm.models.diffusion.ddim import DDIMSampler
        b, *chw = latent_shape
        samples, _ = DDIMSampler(self).sample(ddim_steps, b, chw, cond, eta=eta,
                                              unconditional_guidance_scale=guidance_scale,
                                              unconditional_conditioning=uncond, verbose=False)
        return self.decode_first_stage(samples)

    @torch.no_grad()
    def log_images(self, batch: Mapping, N: int = 4, n_row: int = 2, sample: bool = False, ddim_steps: int = 50,
                   ddim_eta: float = 0.0, unconditional_guidance_scale: float = 9.0, **unused) -> Dict[str, torch.Tensor]:
        """Images for the logger, all (N, 3, H, W) in [-1, 1]: reconstruction, caption, CFG samples."""
        z, c = self.get_input(batch, self.first_stage_key, bs=N)
        if self.cond_stage_trainable:
            c = self.get_learned_conditioning(c)
        N = z.shape[0]
        logs = {"reconstruction": self.decode_first_stage(z),
                "conditioning": log_txt_as_img(batch[self.first_stage_key].shape[1:3][::-1],
                                               batch[self.cond_stage_key][:N], font_size=16)}
        with self.ema_scope():
            if sample:
                logs["samples"] = self._sample_log(c, None, z.shape, ddim_steps, ddim_eta, 1.0)
            if unconditional_guidance_scale > 1.0:
                uc = self.get_unconditional_conditioning(N)
                logs[f"samples_cfg_scale_{unconditional_guidance_scale:.2f}"] = self._sample_log(
                    c, uc, z.shape, ddim_steps, ddim_eta, unconditional_guidance_scale)
        return logs
