"""The one DDIM sampler (Song et al. 2020) shared by every app and by ``log_images``.

The sampler only does DDIM arithmetic over a noise predictor ``eps_fn(x, t, progress) -> eps``
(``progress`` = fraction of the steps already taken, for control start/end). How conditioning is
applied (classifier-free guidance, ControlNet strength, guess mode, several ControlNets) is the
model's business: ``model.guided_eps_fn(cond, uncond, guidance_scale, **options)`` builds it.
Timestep spacing and the final ``alphas_prev`` follow upstream ``ldm/models/diffusion/ddim.py``.
"""
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

EpsFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """Upstream's "uniform" spacing ``range(0, T, T // S) + 1`` (so S=20 gives 1, 51, ..., 951).

    Like upstream, an S that does not divide T yields a few more steps (S=30 gives 31). Where the +1
    pushes the last one to T (S=3: 999 + 1), upstream crashes; we drop that step.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"DDIM steps must be between 1 and {num_train_timesteps}, got {num_steps}")
    steps = np.arange(0, num_train_timesteps, num_train_timesteps // num_steps) + 1
    return steps[steps < num_train_timesteps]


@dataclass(frozen=True)
class DDIMSchedule:
    timesteps: np.ndarray  # ascending training timesteps visited (in reverse) by the sampler
    alphas: np.ndarray  # abar at each of them
    alphas_prev: np.ndarray  # abar of the next, less noisy, step (abar_0 after the last)
    sigmas: np.ndarray  # noise scale, eta * sqrt((1 - a_prev)/(1 - a) * (1 - a/a_prev))

    @classmethod
    def make(cls, alphas_cumprod: np.ndarray, num_steps: int, eta: float = 0.0) -> "DDIMSchedule":
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        ts = ddim_timesteps(num_steps, len(alphas_cumprod))
        alphas = alphas_cumprod[ts]
        alphas_prev = np.concatenate([alphas_cumprod[:1], alphas_cumprod[ts[:-1]]])
        sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
        return cls(ts, alphas, alphas_prev, sigmas)


def ddim_sample(eps_fn: EpsFn, x_T: torch.Tensor, schedule: DDIMSchedule, callback: Optional[Callable] = None,
                progress_bar: bool = True, generator: Optional[torch.Generator] = None,
                blend: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Denoise ``x_T`` (b, c, h, w) along ``schedule``; returns x_0 in latent space.

    ``callback(info)`` gets ``{'i', 'total', 't', 'x', 'pred_x0'}`` after every step. ``blend(i, x) -> x``
    replaces the latents after step ``i``, before the callback sees them (inpainting, see
    ``ldm.models.diffusion.samplers``). The update runs in float32 whatever the model's dtype.
    """
    x = x_T.float()
    total = len(schedule.timesteps)
    for i in tqdm(range(total), desc="DDIM sampler", disable=not progress_bar, leave=False):
        index = total - 1 - i
        t = torch.full((x.shape[0],), int(schedule.timesteps[index]), device=x.device, dtype=torch.long)
        eps = eps_fn(x, t, i / total).float()
        a_t, a_prev, sigma = schedule.alphas[index], schedule.alphas_prev[index], schedule.sigmas[index]
        pred_x0 = (x - np.sqrt(1.0 - a_t) * eps) / np.sqrt(a_t)
        x = np.sqrt(a_prev) * pred_x0 + np.sqrt(1.0 - a_prev - sigma**2) * eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if blend is not None:
            x = blend(i, x)
        if callback is not None:
            callback({"i": i, "total": total, "t": int(schedule.timesteps[index]), "x": x, "pred_x0": pred_x0})
    return x


class DDIMSampler:
    """Upstream-style front end: ``samples, intermediates = DDIMSampler(model).sample(S, b, (c, h, w), cond, ...)``.

    Extra keyword options (``control_scales``, ``guess_mode``, ``controls``, ...) go to
    ``model.guided_eps_fn``, so per-request settings travel with the call, never on the shared model.
    """

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: Sequence[int], conditioning=None, callback: Optional[Callable] = None,
               eta: float = 0.0, x_T: Optional[torch.Tensor] = None, verbose: bool = True,
               unconditional_guidance_scale: float = 1.0, unconditional_conditioning=None,
               generator: Optional[torch.Generator] = None, log_every_t: int = 100, **model_options):
        _check_batch(conditioning, batch_size, "conditioning")
        _check_batch(unconditional_conditioning, batch_size, "unconditional_conditioning")
        device = self.model.device
        if x_T is None:
            x_T = torch.randn((batch_size, *shape), generator=generator, device=device)
        elif tuple(x_T.shape) != (batch_size, *shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {(batch_size, *shape)}")
        schedule = DDIMSchedule.make(self.model.alphas_cumprod_np, S, eta)
        eps_fn = self.model.guided_eps_fn(conditioning, unconditional_conditioning, unconditional_guidance_scale,
                                          **model_options)
        intermediates = {"x_inter": [x_T], "pred_x0": [x_T]}

        def on_step(info):
            if info["i"] % log_every_t == 0 or info["i"] == info["total"] - 1:
                intermediates["x_inter"].append(info["x"])
                intermediates["pred_x0"].append(info["pred_x0"])
            if callback is not None:
                callback(info)

        samples = ddim_sample(eps_fn, x_T.to(device), schedule, on_step, progress_bar=verbose, generator=generator)
        return samples, intermediates


def _check_batch(cond, batch_size: int, what: str) -> None:
    if cond is None:
        return
    tensors = [c for v in cond.values() if v is not None for c in v] if isinstance(cond, dict) else [cond]
    for c in tensors:
        if c.shape[0] != batch_size:
            raise ValueError(f"{what} has batch size {c.shape[0]}, expected {batch_size}")
