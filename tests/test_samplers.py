"""The samplers beside DDIM, against diffusers' schedulers of the same name, and img2img / inpainting."""
import numpy as np
import pytest
import torch

from ldm.models.diffusion.samplers import SAMPLERS, noise_levels, sample, steps_for_strength
from tests.conftest import build_tiny

diffusers = pytest.importorskip("diffusers")

# SD 1.5's schedule; "trailing" spacing is the one that gives integer timesteps in all three schedulers.
SD15 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            steps_offset=1, timestep_spacing="trailing")
SCHEDULERS = {
    "dpmpp_2m": (diffusers.DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_karras": (diffusers.DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "euler_a": (diffusers.EulerAncestralDiscreteScheduler, {}),
    "unipc": (diffusers.UniPCMultistepScheduler, {}),
}


class FixedEps:
    """A fixed random, smooth noise predictor of (x, t): tanh(A x + B[t]), channels mixed by A. Counts calls."""

    def __init__(self, seed: int = 0, channels: int = 4):
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(channels, channels, generator=g) * 0.5
        self.b = torch.randn(1000, channels, generator=g) * 0.5
        self.calls = []

    def __call__(self, x, t, progress=0.0):
        self.calls.append((x.clone(), t.clone(), progress))
        return torch.tanh(torch.einsum("oc,bchw->bohw", self.a, x) + self.b[t.long()][:, :, None, None])


def run_diffusers(scheduler, eps_fn, x, steps, generator=None):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        eps = eps_fn(scheduler.scale_model_input(x, t), t.reshape(1).expand(x.shape[0]))
        kwargs = {} if generator is None else {"generator": generator}
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("steps", [20, 7])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_matches_diffusers_scheduler(name, steps):
    cls, extra = SCHEDULERS[name]
    scheduler = cls(**SD15, **extra)
    abar = scheduler.alphas_cumprod.numpy().astype(np.float64)
    scheduler.set_timesteps(steps)
    levels = noise_levels(name, abar, steps)
    assert list(levels.timesteps) == scheduler.timesteps.long().tolist()
    np.testing.assert_allclose(levels.sigmas, scheduler.sigmas.numpy(), rtol=1e-6)

    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    eps_fn = FixedEps()
    ancestral = name == "euler_a"
    # Euler works on x / sqrt(abar); ours takes x_T on the q_sample scale, so x_T * sqrt(1 + sigma_max^2).
    # (diffusers' own init_noise_sigma is sigma_max for trailing spacing, an approximation of that.)
    start = x_T * float(np.sqrt(1 + levels.sigmas[0] ** 2)) if ancestral else x_T
    theirs = run_diffusers(scheduler, eps_fn, start, steps,
                           torch.Generator().manual_seed(5) if ancestral else None)
    ours = SAMPLERS[name](eps_fn, x_T, abar, steps, progress_bar=False, generator=torch.Generator().manual_seed(5))
    assert rel(ours, theirs) < 1e-5
    # The tolerance tells samplers apart: DPM++ 2M and UniPC (the same predictor, plus a corrector) differ by far more.
    if name == "unipc":
        assert rel(SAMPLERS["dpmpp_2m"](eps_fn, x_T, abar, steps, progress_bar=False), theirs) > 1e-3


def test_model_schedule_is_diffusers_sd15():
    model = build_tiny()
    ours = model.alphas_cumprod_np
    theirs = diffusers.DDIMScheduler(**SD15).alphas_cumprod.numpy()
    if model.linear_start != 0.00085 or model.linear_end != 0.012:
        pytest.skip("the tiny config does not use SD's schedule")
    np.testing.assert_allclose(ours, theirs, rtol=2e-6)


def test_registry_one_signature_callbacks_and_errors():
    abar = diffusers.DDIMScheduler(**SD15).alphas_cumprod.numpy().astype(np.float64)
    x_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    for name in SAMPLERS:
        seen, eps_fn = [], FixedEps()
        out = sample(name, eps_fn, x_T, abar, 5, callback=seen.append, progress_bar=False,
                     generator=torch.Generator().manual_seed(0))
        assert out.shape == x_T.shape and torch.isfinite(out).all()
        assert [s["i"] for s in seen] == list(range(5)) and {s["total"] for s in seen} == {5}
        assert [p for _, _, p in eps_fn.calls] == [i / 5 for i in range(5)]  # progress, for control start/end
        assert [s["t"] for s in seen] == [int(t[0]) for _, t, _ in eps_fn.calls]
    with pytest.raises(ValueError, match="unknown sampler 'heun'; choose one of ddim, dpmpp_2m"):
        sample("heun", FixedEps(), x_T, abar, 5)
    with pytest.raises(ValueError, match="deterministic"):
        sample("dpmpp_2m", FixedEps(), x_T, abar, 5, eta=0.5)
    with pytest.raises(ValueError, match="needs init latents"):
        sample("euler_a", FixedEps(), x_T, abar, 5, strength=0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        sample("ddim", FixedEps(), x_T, abar, 5, init=x_T, strength=1.5)
    with pytest.raises(ValueError, match="latent resolution"):
        sample("ddim", FixedEps(), x_T, abar, 5, init=x_T, mask=torch.ones(1, 1, 8, 8))
    # euler_a's eta: 0 makes it deterministic (no draws), the default 1 draws from the generator
    a, b = (sample("euler_a", FixedEps(), x_T, abar, 5, eta=0, progress_bar=False,
                   generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    c, d = (sample("euler_a", FixedEps(), x_T, abar, 5, progress_bar=False,
                   generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    assert torch.equal(a, b) and not torch.equal(c, d)


@pytest.fixture(scope="module")
def model():
    return build_tiny()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_img2img_strength(model, name):
    abar, steps = model.alphas_cumprod_np, 10
    g = torch.Generator().manual_seed(3)
    init, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)

    eps_fn = FixedEps()
    out = sample(name, eps_fn, noise, abar, steps, init=init, strength=0.0, progress_bar=False)
    assert torch.equal(out, init) and not eps_fn.calls  # strength 0: the init latents, no model call

    full = noise_levels(name, abar, steps)
    for strength in (0.3, 0.66, 1.0):
        eps_fn = FixedEps()
        sample(name, eps_fn, noise, abar, steps, init=init, strength=strength, progress_bar=False,
               generator=torch.Generator().manual_seed(0))
        k = round(strength * len(full))
        assert k == steps_for_strength(strength, len(full)) and len(eps_fn.calls) == k
        x_first, t_first, _ = eps_fn.calls[0]
        t0 = int(full.timesteps[len(full) - k])  # the step that the strength picks
        assert t_first.tolist() == [t0, t0]
        if name == "dpmpp_2m_karras":  # Karras levels lie between training timesteps: noised to that sigma
            expected = (init + full.sigmas[len(full) - k] * noise) / np.sqrt(1 + full.sigmas[len(full) - k] ** 2)
        else:
            expected = model.q_sample(init, torch.full((2,), t0), noise)
        torch.testing.assert_close(x_first, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_inpainting_keeps_unmasked_latents_at_every_step(model, name):
    abar, steps = model.alphas_cumprod_np, 6
    g = torch.Generator().manual_seed(4)
    init, noise = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 1:5] = 1.0  # repaint a square, keep the rest
    keep = (mask == 0).expand_as(init)
    levels = noise_levels(name, abar, steps)
    n = len(levels)  # DDIM takes one more step where 1000 is no multiple of the steps (upstream's spacing)
    seen = []
    out = sample(name, FixedEps(), noise, abar, steps, init=init, mask=mask, callback=seen.append,
                 progress_bar=False, generator=torch.Generator().manual_seed(0))
    assert len(seen) == n == (7 if name == "ddim" else steps)
    for info in seen:
        i = info["i"]
        if i == n - 1:
            expected = init
        elif name == "dpmpp_2m_karras":
            s = levels.sigmas[i + 1]
            expected = (init + s * noise) / np.sqrt(1 + s**2)
        else:
            expected = model.q_sample(init, torch.tensor([int(levels.timesteps[i + 1])]), noise)
        torch.testing.assert_close(info["x"][keep], expected[keep], rtol=0, atol=2e-6)
        assert (info["x"][~keep] - expected[~keep]).abs().max() > 1e-2  # the masked part is generated
    assert torch.equal(out[keep], init[keep])
