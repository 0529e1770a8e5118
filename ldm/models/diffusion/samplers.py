"""The samplers, by name: DDIM, DPM-Solver++(2M) (plain or with Karras sigmas), Euler ancestral and UniPC.

Every sampler is a plain function over the noise predictor of ``ldm.models.diffusion.ddim``,
``eps_fn(x, t, progress) -> eps``, with one signature (``SAMPLERS[name]`` or ``sample(name, ...)``)::

    x_0 = fn(eps_fn, noise, alphas_cumprod, steps, *, init=None, strength=1.0, mask=None, eta=None,
             generator=None, callback=None, progress_bar=True)

Latents in and out are on the DDIM / ``q_sample`` scale, x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps:
``noise`` is unit Gaussian and is where text-to-image starts. Two options make the other generation modes:

- img2img: ``init`` latents and a denoising ``strength`` s in [0, 1]. The sampler runs the last
  ``round(s * n)`` of its n steps, starting from ``init`` noised (with ``noise``) to the first of them;
  s = 0 returns ``init`` unchanged.
- inpainting: ``init`` plus a ``mask`` at latent resolution (1 = repaint, 0 = keep, soft values blend).
  After every step the latents outside the mask are replaced by ``init`` noised (with the same ``noise``)
  to the level the step reached, and by ``init`` itself after the last step.

DDIM keeps upstream's timesteps (``ddim_timesteps``). The others step on x / sqrt(abar) at noise level
sigma = sqrt((1 - abar) / abar), as k-diffusion does (Karras et al. 2022), from the "trailing" timesteps
(999, 949, ..., 49 at 20 steps; Lin et al. 2023, table 2) down to sigma = 0. ``dpmpp_2m_karras`` takes
Karras' rho = 7 noise levels between the schedule's smallest and largest sigma instead, and calls the model
at the nearest training timestep. Each is cross-checked against the diffusers scheduler of the same name
(tests/test_samplers.py).
"""
import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ldm.models.diffusion.ddim import DDIMSchedule, EpsFn, ddim_sample, ddim_timesteps

Callback = Callable[[dict], None]
Blend = Callable[[int, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------- noise levels
def trailing_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """``num_steps`` timesteps from the last training one down, evenly spaced (noisiest first)."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {num_train_timesteps}, got {num_steps}")
    ratio = num_train_timesteps / num_steps
    return np.round(np.arange(num_train_timesteps, 0, -ratio)).astype(np.int64) - 1


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022), eq. 5: ``num_steps`` levels from sigma_max to sigma_min, uniform in sigma^(1/rho)."""
    ramp = np.linspace(0.0, 1.0, num_steps)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


@dataclass(frozen=True)
class NoiseLevels:
    """Where a sampler goes: the model's timestep at each step, and the noise level before each step and
    after the last one (``sigmas[n]``: 0 for the clean image, DDIM stops at abar_0)."""
    timesteps: np.ndarray  # (n,) int, noisiest first
    sigmas: np.ndarray  # (n + 1,) sqrt((1 - abar) / abar), decreasing

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def abar(self) -> np.ndarray:
        return 1.0 / (1.0 + self.sigmas**2)

    def tail(self, k: int) -> "NoiseLevels":
        """The last ``k`` steps (img2img)."""
        n = len(self)
        return NoiseLevels(self.timesteps[n - k:], self.sigmas[n - k:])

    @classmethod
    def from_abar(cls, timesteps: np.ndarray, abar: np.ndarray) -> "NoiseLevels":
        return cls(np.asarray(timesteps, dtype=np.int64), np.sqrt((1.0 - abar) / abar))


def noise_levels(sampler: str, alphas_cumprod: np.ndarray, steps: int) -> NoiseLevels:
    """The timesteps and noise levels that ``sampler`` visits in ``steps`` steps."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    _check_name(sampler)
    if sampler == "ddim":
        ts = ddim_timesteps(steps, len(ac))[::-1]
        return NoiseLevels.from_abar(ts, np.append(ac[ts], ac[0]))
    all_sigmas = np.sqrt((1.0 - ac) / ac)
    if sampler.endswith("_karras"):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        sigmas = karras_sigmas(steps, all_sigmas[0], all_sigmas[-1])
        ts = np.round(np.interp(np.log(sigmas), np.log(all_sigmas), np.arange(len(ac)))).astype(np.int64)
        return NoiseLevels(ts, np.append(sigmas, 0.0))
    ts = trailing_timesteps(steps, len(ac))
    return NoiseLevels(ts, np.append(all_sigmas[ts], 0.0))


def steps_for_strength(strength: float, total: int) -> int:
    """How many of ``total`` steps img2img runs at denoising ``strength``: round(strength * total)."""
    if not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise ValueError(f"denoising strength must be between 0 and 1, got {strength}")
    return round(strength * total)


def noised(init: torch.Tensor, noise: torch.Tensor, abar: float) -> torch.Tensor:
    """``init`` at noise level abar, as ``q_sample``: sqrt(abar) init + sqrt(1 - abar) noise."""
    return math.sqrt(abar) * init + math.sqrt(1.0 - abar) * noise


# ------------------------------------------------------------------------------------ the sampler loops
def _denoise(eps_fn: EpsFn, x: torch.Tensor, sigma: float, t: int, progress: float) -> torch.Tensor:
    """x_0 predicted from x (on the sigma scale, x = x_0 + sigma eps): the model sees x / sqrt(1 + sigma^2)."""
    tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
    eps = eps_fn(x / math.sqrt(1.0 + sigma**2), tt, progress).float()
    return x - sigma * eps


def _after_step(i: int, x: torch.Tensor, denoised: torch.Tensor, levels: NoiseLevels, blend: Optional[Blend],
                callback: Optional[Callback]) -> torch.Tensor:
    """Inpainting blend and callback after step ``i``; both see the q_sample scale, the loop keeps sigma's."""
    if blend is None and callback is None:
        return x
    scale = math.sqrt(levels.abar[i + 1])
    x_q = x * scale
    if blend is not None:
        x_q = blend(i, x_q)
        x = x_q / scale
    if callback is not None:
        callback({"i": i, "total": len(levels), "t": int(levels.timesteps[i]), "x": x_q, "pred_x0": denoised})
    return x


def _steps(levels: NoiseLevels, name: str, progress_bar: bool):
    return tqdm(range(len(levels)), desc=f"{name} sampler", disable=not progress_bar, leave=False)


def _euler_ancestral_loop(eps_fn, x, levels, *, eta, generator, blend, callback, progress_bar):
    """Euler steps with ancestral noise (k-diffusion's ``sample_euler_ancestral``); eta = 0 is plain Euler."""
    s, n = levels.sigmas, len(levels)
    x = x * math.sqrt(1.0 + s[0] ** 2)
    for i in _steps(levels, "Euler a", progress_bar):
        denoised = _denoise(eps_fn, x, s[i], levels.timesteps[i], i / n)
        # split the way down to s[i + 1] into a deterministic part (to sigma_down) and fresh noise (sigma_up)
        sigma_up = min(s[i + 1], eta * math.sqrt(s[i + 1] ** 2 * (s[i] ** 2 - s[i + 1] ** 2) / s[i] ** 2))
        sigma_down = math.sqrt(s[i + 1] ** 2 - sigma_up**2)
        x = x + (x - denoised) / s[i] * (sigma_down - s[i])
        if sigma_up > 0:
            x = x + sigma_up * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = _after_step(i, x, denoised, levels, blend, callback)
    return x


def _dpmpp_2m_loop(eps_fn, x, levels, *, generator, blend, callback, progress_bar):
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2, midpoint form); the first and the last step (to sigma
    0) are first order, as in k-diffusion and diffusers."""
    s, n = levels.sigmas, len(levels)
    x = x * math.sqrt(1.0 + s[0] ** 2)
    previous, h_previous = None, None
    for i in _steps(levels, "DPM++ 2M", progress_bar):
        denoised = _denoise(eps_fn, x, s[i], levels.timesteps[i], i / n)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i] / s[i + 1])  # step in lambda = -log(sigma)
            d = denoised
            if previous is not None:
                r = h_previous / h
                d = (1.0 + 1.0 / (2.0 * r)) * denoised - (1.0 / (2.0 * r)) * previous
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * d
            h_previous = h
        previous = denoised
        x = _after_step(i, x, denoised, levels, blend, callback)
    return x


def _unipc_coefficients(rks, h: float, order: int) -> np.ndarray:
    """UniPC's B(h) = e^h - 1 ("bh2") coefficients (Zhao et al. 2023, algorithm 2): solve R rho = b, with R's
    rows the powers of the step ratios and b_k = k! phi_{k+1}(h) h / B(h), phi by its recursion."""
    hh = -h  # the data-prediction form runs backwards in lambda
    b_h = math.expm1(hh)
    phi = b_h / hh - 1.0
    factorial, rows, b = 1, [], []
    for k in range(1, order + 1):
        rows.append(np.power(rks, k - 1))
        b.append(phi * factorial / b_h)
        factorial *= k + 1
        phi = phi / hh - 1.0 / factorial
    return np.linalg.solve(np.array(rows), np.array(b))


def _unipc_loop(eps_fn, x, levels, *, generator, blend, callback, progress_bar, order: int = 2):
    """UniPC (Zhao et al. 2023), variant bh2, data prediction, ``order``-step predictor UniP with the corrector
    UniC after every model call but the first; warm-up and final steps at lower order (as diffusers)."""
    s, n = levels.sigmas, len(levels)
    lam = -np.log(np.maximum(s, 1e-300))  # lambda = log(alpha / sigma); +inf-like at sigma 0, never used there
    x = x * math.sqrt(1.0 + s[0] ** 2)
    history = []  # (level index, x_0 prediction), newest last
    x_before, last_order = None, 0
    for i in _steps(levels, "UniPC", progress_bar):
        denoised = _denoise(eps_fn, x, s[i], levels.timesteps[i], i / n)
        if x_before is not None:  # UniC: redo the last step with the model output at its end
            j, m0 = history[-1]
            h = lam[i] - lam[j]
            rks = [(lam[k] - lam[j]) / h for k, _ in history[-last_order:-1][::-1]] + [1.0]
            rho = np.array([0.5]) if last_order == 1 else _unipc_coefficients(np.array(rks), h, last_order)
            correction = rho[-1] * (denoised - m0)
            for (k, m), rk, r in zip(history[-last_order:-1][::-1], rks, rho):
                correction = correction + r * (m - m0) / rk
            x = (s[i] / s[j]) * x_before - math.expm1(-h) * m0 - math.expm1(-h) * correction
        history = (history + [(i, denoised)])[-order:]
        this_order = min(order, n - i, len(history))
        x_before, last_order = x, this_order
        if s[i + 1] == 0:  # the last step, always first order: the clean prediction
            x = denoised
        else:  # UniP
            h = lam[i + 1] - lam[i]
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * denoised
            if this_order > 1:
                past = history[-this_order:-1][::-1]
                rks = np.array([(lam[k] - lam[i]) / h for k, _ in past] + [1.0])
                rho = [0.5] if this_order == 2 else _unipc_coefficients(rks[:-1], h, this_order - 1)
                for (k, m), rk, r in zip(past, rks, rho):
                    x = x - math.expm1(-h) * r * (m - denoised) / rk
        x = _after_step(i, x, denoised, levels, blend, callback)
    return x


# ------------------------------------------------------------------------------------- the entry points
def _prepare(noise, levels, init, strength, mask):
    """The img2img / inpainting set-up shared by every sampler -> (start latents, levels to run, blend) or
    (init, None, None) when no step is left to run."""
    if init is None:
        if mask is not None:
            raise ValueError("inpainting needs init latents (init=...) to keep outside the mask")
        if strength != 1.0:
            raise ValueError(f"a denoising strength ({strength}) needs init latents (init=...) to start from")
    elif tuple(init.shape) != tuple(noise.shape):
        raise ValueError(f"init latents have shape {tuple(init.shape)}, the noise {tuple(noise.shape)}")
    noise = noise.float()
    k = steps_for_strength(strength, len(levels))
    if k == 0:
        return init.float().clone(), None, None
    levels = levels.tail(k)
    if init is None:
        return noise, levels, None
    init = init.float().to(noise.device)
    x = noised(init, noise, levels.abar[0])
    if mask is None:
        return x, levels, None
    mask = _check_mask(mask, noise).to(noise.device)

    def blend(i: int, x: torch.Tensor) -> torch.Tensor:
        keep = init if i == len(levels) - 1 else noised(init, noise, levels.abar[i + 1])
        return mask * x + (1.0 - mask) * keep

    return x, levels, blend


def _check_mask(mask: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    mask = mask.float()
    while mask.ndim < 4:
        mask = mask[None]
    b, _, h, w = latents.shape
    if mask.shape[1] != 1 or mask.shape[2:] != (h, w) or mask.shape[0] not in (1, b):
        raise ValueError(f"the mask must be (b or 1, 1, {h}, {w}) at latent resolution, got {tuple(mask.shape)}")
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError("mask values must lie in [0, 1] (1 = repaint, 0 = keep)")
    return mask


def ddim(eps_fn: EpsFn, noise: torch.Tensor, alphas_cumprod: np.ndarray, steps: int, *, init=None,
         strength: float = 1.0, mask=None, eta: Optional[float] = None, generator=None,
         callback: Optional[Callback] = None, progress_bar: bool = True) -> torch.Tensor:
    """Upstream's DDIM (``ddim.ddim_sample``), ``eta`` 0 by default."""
    schedule = DDIMSchedule.make(np.asarray(alphas_cumprod, dtype=np.float64), steps, 0.0 if eta is None else eta)
    x, levels, blend = _prepare(noise, noise_levels("ddim", alphas_cumprod, steps), init, strength, mask)
    if levels is None:
        return x
    k = len(levels)  # DDIM's arrays run from the least noisy step up: the last k steps are the first k entries
    schedule = replace(schedule, timesteps=schedule.timesteps[:k], alphas=schedule.alphas[:k],
                       alphas_prev=schedule.alphas_prev[:k], sigmas=schedule.sigmas[:k])
    return ddim_sample(eps_fn, x, schedule, callback, progress_bar, generator, blend)


def _k_sampler(name: str, loop, levels_name: str, eta_default: Optional[float]):
    def sample_fn(eps_fn: EpsFn, noise: torch.Tensor, alphas_cumprod: np.ndarray, steps: int, *, init=None,
                  strength: float = 1.0, mask=None, eta: Optional[float] = None, generator=None,
                  callback: Optional[Callback] = None, progress_bar: bool = True) -> torch.Tensor:
        options = {}
        if eta_default is not None:
            options["eta"] = eta_default if eta is None else eta
            if not (math.isfinite(options["eta"]) and options["eta"] >= 0):
                raise ValueError(f"eta must be >= 0, got {eta}")
        elif eta not in (None, 0, 0.0):
            raise ValueError(f"the {name} sampler is deterministic: it takes no eta (got {eta})")
        x, levels, blend = _prepare(noise, noise_levels(levels_name, alphas_cumprod, steps), init, strength, mask)
        if levels is None:
            return x
        return loop(eps_fn, x, levels, generator=generator, blend=blend, callback=callback,
                    progress_bar=progress_bar, **options)

    sample_fn.__name__ = name
    return sample_fn


dpmpp_2m = _k_sampler("dpmpp_2m", _dpmpp_2m_loop, "dpmpp_2m", None)
dpmpp_2m.__doc__ = "DPM-Solver++(2M) on the trailing timesteps (diffusers' DPMSolverMultistepScheduler)."
dpmpp_2m_karras = _k_sampler("dpmpp_2m_karras", _dpmpp_2m_loop, "dpmpp_2m_karras", None)
dpmpp_2m_karras.__doc__ = "DPM-Solver++(2M) on Karras sigmas (diffusers' ... use_karras_sigmas=True)."
euler_a = _k_sampler("euler_a", _euler_ancestral_loop, "euler_a", 1.0)
euler_a.__doc__ = ("Euler ancestral, eta 1 by default (diffusers' EulerAncestralDiscreteScheduler); draws one "
                   "Gaussian of the latents' shape per step from ``generator``.")
unipc = _k_sampler("unipc", _unipc_loop, "unipc", None)
unipc.__doc__ = "UniPC bh2, order 2, with corrector (diffusers' UniPCMultistepScheduler defaults)."

SAMPLERS: Dict[str, Callable[..., torch.Tensor]] = {
    "ddim": ddim, "dpmpp_2m": dpmpp_2m, "dpmpp_2m_karras": dpmpp_2m_karras, "euler_a": euler_a, "unipc": unipc,
}


def _check_name(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def sample(sampler: str, eps_fn: EpsFn, noise: torch.Tensor, alphas_cumprod: np.ndarray, steps: int,
           **options) -> torch.Tensor:
    """``SAMPLERS[sampler](eps_fn, noise, alphas_cumprod, steps, **options)`` with a clear error for a wrong name."""
    _check_name(sampler)
    return SAMPLERS[sampler](eps_fn, noise, alphas_cumprod, steps, **options)
