"""Independent cross-check: our modules against diffusers (code nobody here wrote), with our weights
converted by diffusers' own single-file converters. Tiny configs of the real classes."""
import warnings

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import TINY_CLDM, build_tiny, randomize_zero_convs

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders import single_file_utils as sfu  # noqa: E402

from bench.diffusers_twin import diffusers_twin  # noqa: E402
from ldm.accel import accelerate_for_inference, restore  # noqa: E402



def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def converted():
    """Our tiny ControlLDM (all zero-initialised layers randomised) and its diffusers twins."""
    model = randomize_zero_convs(build_tiny())
    sd = model.state_dict()
    original = yaml.safe_load(open(TINY_CLDM))
    unet, controlnet = diffusers_twin(TINY_CLDM, sd, latent_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, sd, image_size=64)
    vae = diffusers.AutoencoderKL(**vae_cfg)
    vae.load_state_dict(sfu.convert_ldm_vae_checkpoint(sd, vae_cfg), strict=True)
    return model, unet.eval(), controlnet.eval(), vae.eval()


def _eps_pairs(converted, latent, dtype, backend=False):
    """(ours, theirs) with and without control, for one set of inputs (drawn in float64) in ``dtype``."""
    model, unet, controlnet, _ = converted
    model, unet, controlnet = model.to(dtype), unet.to(dtype), controlnet.to(dtype)
    if backend:
        accelerate_for_inference(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g, dtype=torch.float64).to(dtype)
    t = torch.tensor([3, 801])
    hint = torch.rand(2, 3, 8 * latent, 8 * latent, generator=g, dtype=torch.float64).to(dtype)
    ctx = torch.randn(2, 77, 32, generator=g, dtype=torch.float64).to(dtype)
    try:
        with torch.no_grad():
            ours = model.apply_model(x, t, {"c_crossattn": [ctx], "c_concat": [hint]}, control_scales=[0.7] * 13)
            down, mid = controlnet(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, conditioning_scale=0.7,
                                   return_dict=False)
            theirs = unet(x, t, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample
            plain_ours = model.apply_model(x, t, {"c_crossattn": [ctx], "c_concat": None})
            plain_theirs = unet(x, t, encoder_hidden_states=ctx).sample
    finally:  # the fixture is shared by the other tests
        restore(model)
        model.float(), unet.float(), controlnet.float()
    return [(o.double(), d.double()) for o, d in ((ours, theirs), (plain_ours, plain_theirs))]


# 16: 512 tokens per attention layer at the first level; 32: the backend's kernels take the 32x32 level
@pytest.mark.parametrize("latent", [8, 16, 32])
def test_controlled_eps_matches_diffusers(converted, latent):
    """float64: the same maths (<= 1e-10). float32, the plain core and with the CPU inference backend (whose
    Winograd convolution rounds at about twice a direct convolution's error): as close to float64 as diffusers'
    float32 is (both ~1e-6 at 16 and 32 latents; at 8 both ~1e-4, where t=3's output is ill-conditioned)."""
    exact = _eps_pairs(converted, latent, torch.float64)
    for ours, theirs in exact:
        assert rel_err(ours, theirs) <= 1e-10
    assert rel_err(exact[0][0], exact[1][0]) > 1e-3  # the control really acts
    for backend in (False, True):
        for (ours, theirs), (reference, _) in zip(_eps_pairs(converted, latent, torch.float32, backend), exact):
            assert rel_err(ours, reference) <= 4 * rel_err(theirs, reference) + 1e-6


def test_vae_matches_diffusers(converted):
    model, _, _, vae = converted
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 4, 8, 8, generator=g)
    image = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        assert rel_err(model.decode_first_stage(z), vae.decode(z / vae.config.scaling_factor).sample) <= 1e-5
        ours = model.first_stage_model.encode(image)
        theirs = vae.encode(image).latent_dist
        assert rel_err(ours.mean, theirs.mean) <= 1e-5 and rel_err(ours.std, theirs.std) <= 1e-5


@pytest.mark.parametrize("steps,eta", [(20, 0.0), (50, 0.0), (10, 0.5)])
def test_ddim_loop_matches_diffusers_scheduler(steps, eta):
    """Same noise predictor (a fixed smooth function), our DDIM loop vs diffusers' DDIMScheduler set to
    upstream's spacing (leading + offset 1, final alpha = abar_0)."""
    from ldm.models.diffusion.ddim import DDIMSchedule, ddim_sample
    from ldm.modules.diffusionmodules.util import linear_beta_schedule

    betas = linear_beta_schedule(1000, 0.00085, 0.012)
    abar = np.cumprod(1 - betas).astype(np.float32).astype(np.float64)
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                        timestep_spacing="leading")
    scheduler.set_timesteps(steps)
    schedule = DDIMSchedule.make(abar, steps, eta)
    assert list(scheduler.timesteps.numpy()) == list(schedule.timesteps[::-1])

    def eps_fn(x, t, progress=0.0):
        return torch.tanh(0.3 * x + t.float()[:, None, None, None] / 1000.0)

    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    ours = ddim_sample(eps_fn, x_T, schedule, progress_bar=False, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    x = x_T.clone()
    for t in scheduler.timesteps:
        eps = eps_fn(x, t.repeat(2))
        if eta > 0:  # draw our noise exactly as our loop does
            noise = torch.randn(x.shape, generator=g)
            x = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        else:
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    assert rel_err(ours, x) <= 1e-4
