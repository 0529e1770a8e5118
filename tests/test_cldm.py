"""ControlNet behaviour on a tiny model of the real classes (paper section 3 and upstream semantics)."""

import pytest
import torch

from cldm.cldm import GUESS_MODE_DECAY, NUM_CONTROLS, ControlInput, control_scales
from ldm.modules.diffusionmodules.util import repeat_rows
from tests.conftest import build_tiny, randomize_zero_convs

B, H = 2, 64  # batch, image side (8x8 latents)


def inputs(model, seed=0, size=H):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, size // 8, size // 8, generator=g)
    t = torch.tensor([10, 700])
    hint = torch.rand(B, 3, size, size, generator=g)
    context = model.get_learned_conditioning(["a red circle", "a blue square"])
    return x, t, hint, context


def cond(hint, context):
    return {"c_crossattn": [context], "c_concat": None if hint is None else [hint]}


def test_fresh_controlnet_leaves_the_model_untouched(tiny_cldm):
    x, t, hint, ctx = inputs(tiny_cldm)
    with torch.no_grad():
        with_hint = tiny_cldm.apply_model(x, t, cond(hint, ctx))
        without = tiny_cldm.apply_model(x, t, cond(None, ctx))
        residuals = tiny_cldm.control_model(x, hint, t, ctx)
    assert torch.equal(with_hint, without)  # bit-identical
    assert len(residuals) == NUM_CONTROLS and all(torch.count_nonzero(r) == 0 for r in residuals)


def test_one_step_makes_zero_convs_nonzero_and_the_hint_matter():
    """The paper's FAQ argument: zero weights still get non-zero gradients, so one step moves them."""
    model = build_tiny().train()
    randomize_zero_convs(model.model)  # a "pretrained" UNet: its own zero-initialised layers are not zero
    x, t, hint, ctx = inputs(model)
    opt = model.configure_optimizers()
    loss, _ = model.p_losses(x, cond(hint, ctx), t)
    loss.backward()
    opt.step()
    assert all(zc[0].weight.abs().sum() > 0 for zc in model.control_model.zero_convs)
    assert model.control_model.middle_block_out[0].weight.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert not torch.equal(model.apply_model(x, t, cond(hint, ctx)), model.apply_model(x, t, cond(None, ctx)))


def test_sd_locked_trains_only_the_controlnet(tiny_cldm):
    trainable = {id(p) for p in tiny_cldm.trainable_parameters()}
    control = {id(p) for p in tiny_cldm.control_model.parameters()}
    assert trainable == control
    requires_grad = {n for n, p in tiny_cldm.named_parameters() if p.requires_grad}
    assert requires_grad == {f"control_model.{n}" for n, _ in tiny_cldm.control_model.named_parameters()}


def test_sd_unlocked_adds_decoder_and_out():
    model = build_tiny(sd_locked=False)
    unet = model.model.diffusion_model
    expected = {id(p) for m in (model.control_model, unet.output_blocks, unet.out) for p in m.parameters()}
    assert {id(p) for p in model.trainable_parameters()} == expected
    assert not any(p.requires_grad for p in unet.input_blocks.parameters())
    model.sd_locked = True  # upstream scripts assign the attribute; it must re-lock
    assert not any(p.requires_grad for p in unet.parameters())


def test_locked_encoder_keeps_no_graph(tiny_cldm):
    x, t, hint, ctx = inputs(tiny_cldm)
    randomize_zero_convs(tiny_cldm)
    unet = tiny_cldm.model.diffusion_model
    h, skips, _ = unet.encode(x, t, ctx)
    assert h.requires_grad is False  # no trainable params on the locked side at all
    tiny_cldm.model.diffusion_model.requires_grad_(True)  # even if someone unlocks it by hand ...
    out = tiny_cldm.apply_model(x, t, cond(hint, ctx)).sum()
    out.backward()
    # ... the encoder ran under no_grad: its weights get no gradient, the decoder's do.
    assert all(p.grad is None for p in unet.input_blocks.parameters())
    assert any(p.grad is not None for p in unet.output_blocks.parameters())


def test_only_mid_control_uses_the_middle_residual_only():
    model = randomize_zero_convs(build_tiny(only_mid_control=True))
    x, t, hint, ctx = inputs(model)
    unet = model.model.diffusion_model
    with torch.no_grad():
        residuals = model.control_model(x, hint, t, ctx)
        got = model.apply_model(x, t, cond(hint, ctx))
        mid_only = [torch.zeros_like(r) for r in residuals[:-1]] + [residuals[-1]]
        expected = unet(x, t, ctx, control=mid_only)
    assert torch.allclose(got, expected, atol=1e-6)


def test_control_scales_multiply_each_residual():
    model = randomize_zero_convs(build_tiny())
    x, t, hint, ctx = inputs(model)
    scales = [0.1 * i for i in range(NUM_CONTROLS)]
    unet = model.model.diffusion_model
    with torch.no_grad():
        residuals = model.control_model(x, hint, t, ctx)
        expected = unet(x, t, ctx, control=[r * s for r, s in zip(residuals, scales)])
        got = model.apply_model(x, t, cond(hint, ctx), control_scales=scales)
    assert torch.allclose(got, expected, atol=1e-6)


def test_guess_mode_scales_formula():
    scales = control_scales(1.5, guess_mode=True)
    assert scales == [1.5 * 0.825 ** (12 - i) for i in range(13)]
    assert GUESS_MODE_DECAY == 0.825 and scales[-1] == 1.5 and abs(scales[0] - 1.5 * 0.0992) < 1e-3
    assert control_scales(0.7) == [0.7] * 13


def test_latents_shared_by_several_contexts_equal_tiled_latents():
    """x (b rows) under 2b context rows is x tiled twice: the rows only part at the first cross-attention."""
    model = randomize_zero_convs(build_tiny()).double()
    x, t, hint, ctx = inputs(model)
    x, hint, ctx = x.double(), hint.double(), ctx.double()
    contexts = torch.cat([ctx, model.get_unconditional_conditioning(B).double()])
    unet, controlnet = model.model.diffusion_model, model.control_model
    with torch.no_grad():
        shared = controlnet(x, hint, t, contexts)
        tiled = controlnet(x.repeat(2, 1, 1, 1), hint.repeat(2, 1, 1, 1), t.repeat(2), contexts)
        assert shared[0].shape[0] == B and shared[-1].shape[0] == 2 * B  # conv_in + hint ran once per latent
        assert all(torch.allclose(repeat_rows(r, 2 * B), q, atol=1e-12) for r, q in zip(shared, tiled))
        got = unet(x, t, contexts, control=shared)
        expected = unet(x.repeat(2, 1, 1, 1), t.repeat(2), contexts, control=tiled)
    assert got.shape == (2 * B, 4, H // 8, H // 8) and torch.allclose(got, expected, atol=1e-12)
    with pytest.raises(ValueError, match="multiple"):
        unet(x, t, contexts[:3])


@pytest.mark.parametrize("parameterization", ["eps", "v"])
@pytest.mark.parametrize("guess_mode", [False, True])
def test_batched_cfg_equals_two_passes(guess_mode, parameterization):
    # float64: in float32 the CPU conv kernels differ with the batch size at the 1e-4 level.
    model = randomize_zero_convs(build_tiny()).double()
    model.parameterization = parameterization
    x, t, hint, ctx = inputs(model)
    uc = model.get_unconditional_conditioning(B)
    x, hint, ctx, uc = x.double(), hint.double(), ctx.double(), uc.double()
    c, u = cond(hint, ctx), cond(None if guess_mode else hint, uc)
    scales = control_scales(0.8, guess_mode)
    with torch.no_grad():
        batched = model.guided_eps_fn(c, u, 7.5, control_scales=scales)(x, t, 0.0)
        two_pass = model.guided_eps_fn(c, u, 7.5, control_scales=scales, batched_cfg=False)(x, t, 0.0)
        e_c = model.eps_from_output(x, t, model.apply_model(x, t, c, control_scales=scales))
        e_u = model.eps_from_output(x, t, model.apply_model(x, t, u, control_scales=scales))
    assert torch.allclose(batched, two_pass, atol=1e-10)
    assert torch.allclose(two_pass, e_u + 7.5 * (e_c - e_u), atol=1e-10)


def test_control_range_and_two_controlnets_sum():
    model = randomize_zero_convs(build_tiny())
    x, t, hint, ctx = inputs(model)
    other = randomize_zero_convs(build_tiny(seed=5), seed=7).control_model
    hint2 = torch.rand_like(hint)
    unet = model.model.diffusion_model
    c = cond(None, ctx)
    controls = [ControlInput(hint, control_scales(1.0), start=0.0, end=0.5),
                ControlInput(hint2, control_scales(0.5), model=other)]
    fn = model.guided_eps_fn(c, controls=controls)
    with torch.no_grad():
        r1 = model.control_model(x, hint, t, ctx)
        r2 = [0.5 * r for r in other(x, hint2, t, ctx)]
        both = unet(x, t, ctx, control=[a + b for a, b in zip(r1, r2)])
        second_only = unet(x, t, ctx, control=r2)
        assert torch.allclose(fn(x, t, 0.2), both, atol=1e-5)
        assert torch.allclose(fn(x, t, 0.7), second_only, atol=1e-5)


def test_sampling_encodes_each_hint_once():
    """The hint encoder depends on the image alone: one sampling run encodes each hint at its first step
    only, with the same eps as encoding it every step; with a graph recorded it encodes at every call."""
    model = randomize_zero_convs(build_tiny()).double()
    x, t, hint, ctx = inputs(model)
    uc = model.get_unconditional_conditioning(B)
    x, hint, ctx, uc = x.double(), hint.double(), ctx.double(), uc.double()
    encoder_calls = []
    model.control_model.input_hint_block.register_forward_hook(lambda *args: encoder_calls.append(1))
    eps_fn = model.guided_eps_fn(cond(hint, ctx), cond(hint, uc), 7.5)
    with torch.no_grad():
        steps = [eps_fn(x, t, 0.0), eps_fn(x + 0.5, t // 2, 0.5), eps_fn(x - 0.5, t // 3, 0.9)]
        assert len(encoder_calls) == 1
        for got, (x_i, t_i) in zip(steps, [(x, t), (x + 0.5, t // 2), (x - 0.5, t // 3)]):
            e_c = model.apply_model(x_i, t_i, cond(hint, ctx))
            e_u = model.apply_model(x_i, t_i, cond(hint, uc))
            assert torch.allclose(got, e_u + 7.5 * (e_c - e_u), atol=1e-10)
    encoder_calls.clear()
    eps_fn(x, t, 0.0), eps_fn(x, t, 0.5)
    assert len(encoder_calls) == 2


def test_bad_control_settings_are_refused():
    with pytest.raises(ValueError, match="13 control scales"):
        ControlInput(torch.zeros(1, 3, 8, 8), scales=[1.0] * 12)
    with pytest.raises(ValueError, match="start <= end"):
        ControlInput(torch.zeros(1, 3, 8, 8), start=0.8, end=0.2)


def _guided_by_hand(model, x, t, hint, ctx, uc, scale, cond_scales, uncond_scales, pool=False):
    """Classifier-free guidance computed layer by layer: residuals scaled per side (None: no control)."""
    unet, net = model.model.diffusion_model, model.control_model

    def residuals(context, scales):
        if scales is None:
            return None
        outs = [r * s for r, s in zip(net(x, hint, t, context), scales)]
        return [r.mean(dim=(2, 3), keepdim=True) for r in outs] if pool else outs

    e_c = model.eps_from_output(x, t, unet(x, t, ctx, control=residuals(ctx, cond_scales)))
    e_u = model.eps_from_output(x, t, unet(x, t, uc, control=residuals(uc, uncond_scales)))
    return e_u + scale * (e_c - e_u)


@pytest.mark.parametrize("mode, uncond_side", [("balanced", True), ("prompt", True), ("control", False),
                                               ("ControlNet is more important", False)])
def test_control_modes_scale_each_side_as_the_webui_does(mode, uncond_side):
    """Balanced: 1.0 behaviour. My prompt is more important: 0.825 ** (12 - i) on both sides. ControlNet is more
    important: the same scales on the conditional side only (upstream's guess mode)."""
    model = randomize_zero_convs(build_tiny()).double()
    x, t, hint, ctx = inputs(model)
    uc = model.get_unconditional_conditioning(B).double()
    x, hint, ctx = x.double(), hint.double(), ctx.double()
    scales = control_scales(0.9, mode=mode)
    assert scales == ([0.9] * 13 if mode == "balanced" else [0.9 * 0.825 ** (12 - i) for i in range(13)])
    control = ControlInput.for_mode(hint, 0.9, mode)
    with torch.no_grad():
        got = model.guided_eps_fn(cond(hint, ctx), cond(hint, uc), 7.5, controls=[control])(x, t, 0.0)
        expected = _guided_by_hand(model, x, t, hint, ctx, uc, 7.5, scales, scales if uncond_side else None)
        other = _guided_by_hand(model, x, t, hint, ctx, uc, 7.5, scales, None if uncond_side else scales)
    assert torch.allclose(got, expected, atol=1e-10) and not torch.allclose(got, other, atol=1e-6)
    with pytest.raises(ValueError, match="unknown control mode 'guess'"):
        control_scales(1.0, mode="guess")


def test_global_average_pooling_averages_residuals_on_the_conditional_side_only():
    """ControlNet 1.1 shuffle (global_average_pooling: True in its yaml)."""
    model = randomize_zero_convs(build_tiny(global_average_pooling=True)).double()
    assert model.global_average_pooling and model.control_model.global_average_pooling
    x, t, hint, ctx = inputs(model)
    uc = model.get_unconditional_conditioning(B).double()
    x, hint, ctx = x.double(), hint.double(), ctx.double()
    with torch.no_grad():
        for batched in (True, False):
            got = model.guided_eps_fn(cond(hint, ctx), cond(hint, uc), 7.5, batched_cfg=batched)(x, t, 0.0)
            expected = _guided_by_hand(model, x, t, hint, ctx, uc, 7.5, [1.0] * 13, None, pool=True)
            assert torch.allclose(got, expected, atol=1e-10)
        unpooled = _guided_by_hand(model, x, t, hint, ctx, uc, 7.5, [1.0] * 13, None)
    assert not torch.allclose(got, unpooled, atol=1e-6)
