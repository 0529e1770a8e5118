"""The shared DDIM sampler: upstream's spacing, determinism, callback, the upstream-style front end."""
import numpy as np
import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler, DDIMSchedule, ddim_sample, ddim_timesteps
from tests.conftest import build_tiny, randomize_zero_convs


def test_upstream_spacing():
    assert list(ddim_timesteps(20)) == list(range(1, 1000, 50))
    assert len(ddim_timesteps(7)) == 8  # range(0, 1000, 142) + 1: upstream also takes one extra step
    with pytest.raises(ValueError, match="DDIM steps"):
        ddim_timesteps(0)
    assert list(ddim_timesteps(3)) == [1, 334, 667]  # 999 + 1 is out of range (upstream crashes)
    assert ddim_timesteps(1000)[-1] == 999


def test_schedule_final_alpha_is_abar0_and_eta_zero_is_deterministic():
    abar = np.linspace(0.999, 0.01, 1000)
    s = DDIMSchedule.make(abar, 10, 0.0)
    assert s.alphas_prev[0] == abar[0] and np.all(s.sigmas == 0)
    assert np.all(DDIMSchedule.make(abar, 10, 1.0).sigmas > 0)


def test_callback_sees_every_step_and_x0_from_last_step():
    seen = []
    eps_fn = lambda x, t, p: torch.zeros_like(x)  # noqa: E731  (zero noise: x_0 = x_T / sqrt(abar))
    abar = np.linspace(0.999, 0.01, 1000)
    x_T = torch.ones(1, 4, 2, 2)
    out = ddim_sample(eps_fn, x_T, DDIMSchedule.make(abar, 5), callback=seen.append, progress_bar=False)
    assert [info["i"] for info in seen] == list(range(5)) and seen[-1]["total"] == 5
    assert torch.allclose(out, x_T / np.sqrt(abar[ddim_timesteps(5)[-1]]) * np.sqrt(abar[0]), atol=1e-5)


def test_sampler_front_end_is_seeded_and_checks_batch():
    model = randomize_zero_convs(build_tiny())
    ctx = model.get_learned_conditioning(["a circle"] * 2)
    uc = model.get_unconditional_conditioning(2)
    hint = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cond = {"c_concat": [hint], "c_crossattn": [ctx]}
    uncond = {"c_concat": [hint], "c_crossattn": [uc]}
    sampler = DDIMSampler(model)

    def run(seed):
        samples, inter = sampler.sample(3, 2, (4, 8, 8), cond, unconditional_guidance_scale=9.0,
                                        unconditional_conditioning=uncond, verbose=False,
                                        generator=torch.Generator().manual_seed(seed))
        return samples, inter

    a, inter = run(1)
    assert a.shape == (2, 4, 8, 8) and torch.equal(a, run(1)[0]) and not torch.equal(a, run(2)[0])
    assert len(inter["pred_x0"]) == 3  # x_T, step 0, last step
    with pytest.raises(ValueError, match="batch size 2, expected 3"):
        sampler.sample(3, 3, (4, 8, 8), cond, verbose=False)
