"""The opt-in CPU inference backend (ldm/accel): same function, same parameters, undoable, compiled only where
it runs, and the precision choice of the apps."""
import copy
import io
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from tests.conftest import build_tiny, randomize_zero_convs
from tests.test_cldm import cond, inputs

from ldm import accel
from ldm.accel import conv_matmul, cpu, kernels
from ldm.accel.cpu import KernelAttention, WinogradConv2d
from ldm.modules.diffusionmodules.util import GroupNorm32
from ldm.util import count_params


def _eps(model, x, t, hint, ctx):
    with torch.no_grad():
        return model.apply_model(x, t, cond(hint, ctx))


def _swapped(model) -> int:
    return sum(isinstance(m, (KernelAttention, WinogradConv2d)) for m in model.modules())


@pytest.fixture
def model():
    return randomize_zero_convs(build_tiny()).eval()


def test_accelerated_model_is_the_same_model(model):
    """Same eps (as close to float64 as the plain model), the same Parameter objects, state dict and count."""
    x, t, hint, ctx = inputs(model, size=256)  # 32x32 latents: the kernels' routes are taken where they run
    exact = _eps(copy.deepcopy(model).double(), x.double(), t, hint.double(), ctx.double())
    plain = _eps(model, x, t, hint, ctx)
    params = {name: p for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert accel.accelerate_for_inference(model) is model
    assert (_swapped(model) > 0) == kernels.available()
    fast = _eps(model, x, t, hint, ctx)
    plain_error = (plain.double() - exact).abs().max()
    assert (fast.double() - exact).abs().max() <= max(4 * plain_error, 1e-5 * exact.abs().max())
    assert all(p is params[name] for name, p in model.named_parameters())
    assert count_params(model) == sum(p.numel() for p in params.values())
    saved = model.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], v) for k, v in state.items())


def test_weight_edits_reach_the_accelerated_model(model):
    x, t, hint, ctx = inputs(model, size=256)
    accel.accelerate_for_inference(model)
    before = _eps(model, x, t, hint, ctx)
    with torch.no_grad():
        model.model.diffusion_model.out[2].weight.mul_(0)  # the UNet's last convolution
        model.model.diffusion_model.out[2].bias.zero_()
    assert _eps(model, x, t, hint, ctx).abs().max() == 0 and before.abs().max() > 0
    model.load_state_dict(build_tiny().state_dict())  # a later load_state_dict is seen too
    assert not torch.equal(_eps(model, x, t, hint, ctx), before)


def test_accelerated_model_deep_copies_saves_and_restores(model):
    x, t, hint, ctx = inputs(model, size=256)
    plain_types = [type(m) for m in model.modules()]
    accel.accelerate_for_inference(model)
    expected = _eps(model, x, t, hint, ctx)
    twin = copy.deepcopy(model)
    torch.testing.assert_close(_eps(twin, x, t, hint, ctx), expected, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert accel.restore(model) is model
    assert [type(m) for m in model.modules()] == plain_types
    assert not hasattr(model, "acceleration_plan")
    torch.testing.assert_close(_eps(model, x, t, hint, ctx), expected, rtol=1e-5, atol=1e-5)


def test_kernels_are_not_built_where_they_cannot_run(model, monkeypatch):
    """A bf16 model, a float64 model or CONTROLNET_CPU_KERNELS=0: nothing swapped, no compiler run."""
    builds = []
    monkeypatch.setattr(kernels, "_library", lambda: builds.append(1))
    for dtype in (torch.bfloat16, torch.float64):
        accel.accelerate_for_inference(copy.deepcopy(model).to(dtype))
    monkeypatch.setenv("CONTROLNET_CPU_KERNELS", "0")
    accel.accelerate_for_inference(model)
    assert builds == [] and _swapped(model) == 0
    assert "CONTROLNET_CPU_KERNELS=0" in model.acceleration_plan.summary()


def test_the_plan_is_logged_once(model, caplog):
    with caplog.at_level(logging.INFO, logger="ldm.accel.cpu"):
        accel.accelerate_for_inference(model)
    lines = [r.getMessage() for r in caplog.records if r.name == "ldm.accel.cpu"]
    assert len(lines) == 1 and lines[0].startswith("CPU inference backend on cpu/float32")


def test_cuda_gets_nothing_from_the_cpu_backend():
    plan = cpu.plan_for(torch.device("cuda"), torch.float16)
    assert plan.routes == {} and "cuda" in plan.summary()


@pytest.mark.parametrize("name, expected", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                            ("float16", torch.float16)])
def test_dtype_names(name, expected):
    assert accel.resolve_dtype(name, "cpu") == expected


def test_auto_dtype_is_bf16_exactly_where_the_cpu_has_amx():
    assert accel.resolve_dtype("auto", "cpu") == (torch.bfloat16 if cpu.cpu_has_amx() else torch.float32)
    with pytest.raises(ValueError, match="unknown dtype 'half'"):
        accel.resolve_dtype("half", "cpu")


def test_reduced_precision_stores_convolution_weights_channels_last(model):
    """bf16 on CPU: convolution weights channels-last (same values, same Parameters), undone by restore."""
    x, t, hint, ctx = inputs(model)
    exact = _eps(model, x, t, hint, ctx)  # float32
    model = model.to(torch.bfloat16)
    plain_error = (_eps(model, x, t, hint, ctx).float() - exact).abs().max()
    params = dict(model.named_parameters())
    conv = model.model.diffusion_model.input_blocks[1][0].in_layers[2]
    accel.accelerate_for_inference(model)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert all(p is params[name] for name, p in model.named_parameters()) and _swapped(model) == 0
    got = _eps(model, x, t, hint, ctx).float()
    assert (got - exact).abs().max() <= 2 * plain_error  # bf16 rounding in another order, no worse
    accel.restore(model)
    assert conv.weight.is_contiguous()


def _conv_case(dtype, channels_last, stride, in_channels=conv_matmul.MIN_CHANNELS, side=8, batch=2):
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(in_channels, 16, 3, stride=stride, padding=1).to(dtype)
    with torch.no_grad():
        conv.weight.normal_(generator=g)
    x = torch.randn(batch, in_channels, side, side + 2, generator=g).to(dtype)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    return conv, x


@pytest.mark.parametrize("dtype, channels_last", [(torch.float32, False), (torch.float32, True),
                                                  (torch.bfloat16, True)])
@pytest.mark.parametrize("stride", [1, 2])
def test_convolution_as_one_matrix_product_is_the_convolution(dtype, channels_last, stride):
    """Shape, layout and value of F.conv2d's, no further from the float64 result than torch's own."""
    conv, x = _conv_case(dtype, channels_last, stride)
    with torch.no_grad():
        assert conv_matmul.supported(x, conv.weight, stride)
        got = conv_matmul.conv3x3(x, conv.weight, conv.bias, stride)
        expected = conv(x)
        exact = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), stride, 1)
    assert got.shape == expected.shape and got.dtype == dtype
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch_error = (expected.double() - exact).abs().max()
    assert (got.double() - exact).abs().max() <= max(2 * torch_error, 1e-6 * exact.abs().max())


def test_matrix_product_route_only_where_it_wins_and_no_graph_is_recorded():
    conv, x = _conv_case(torch.float32, False, 1)
    assert conv_matmul.shaped(conv)
    assert not conv_matmul.shaped(nn.Conv2d(conv_matmul.MIN_CHANNELS // 2, 16, 3, padding=1))
    assert not conv_matmul.shaped(nn.Conv2d(conv_matmul.MIN_CHANNELS, 16, 1))
    assert not conv_matmul.supported(x, conv.weight, 1)  # the weight's gradient: a graph to record
    with torch.no_grad():
        big = torch.zeros(1, conv_matmul.MIN_CHANNELS, 32, 32)  # 1024 output pixels: the gather loses
        assert conv_matmul.supported(x, conv.weight, 1) and not conv_matmul.supported(big, conv.weight, 1)
        assert not conv_matmul.supported(x.to(memory_format=torch.channels_last), conv.weight, 1)
        assert not conv_matmul.supported(x.bfloat16(), conv.weight.bfloat16(), 1)  # bf16 wants NHWC
        assert not conv_matmul.supported(torch.zeros(2, 16, 8, 8), torch.zeros(16, 16, 3, 3), 1)  # light weight
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not conv_matmul.supported(x, conv.weight, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_heavy_convolutions_take_the_matrix_product_route(dtype):
    conv, x = _conv_case(dtype, False, 1)
    net = nn.Sequential(conv)
    with torch.no_grad():
        expected = net(x)
        accel.accelerate_for_inference(net)
        if dtype == torch.bfloat16:  # the backend laid the weight out channels-last; the UNet's activations follow
            x = x.to(memory_format=torch.channels_last)
        assert isinstance(net[0], cpu.MatmulConv2d) and net[0].weight is conv.weight
        assert conv_matmul.supported(x, conv.weight, 1)
        assert f"1 {cpu.MATMUL_CONV}" in net.acceleration_plan.summary()
        got = net(x)
        torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.05 * expected.abs().max().item())
        conv.weight.zero_()  # nothing cached: the edit is seen at once
        assert torch.equal(net(x), conv.bias[:, None, None].expand_as(got))
    accel.restore(net)
    assert type(net[0]) is nn.Conv2d and net[0] is conv


def test_reduced_precision_group_norms_skip_the_float32_copy(model):
    """bf16 on CPU: GroupNorm32 runs in bf16 (float32 statistics), within bf16 rounding of the float32 round
    trip; float32 models keep the plain GroupNorm32."""
    norm = model.model.diffusion_model.out[0]
    assert type(norm) is GroupNorm32
    accel.accelerate_for_inference(copy.deepcopy(model))
    model = model.to(torch.bfloat16)
    x = torch.randn(2, norm.num_channels, 8, 8).bfloat16() * 3
    with torch.no_grad():
        expected = norm(x)
        accel.accelerate_for_inference(model)
        fast = model.model.diffusion_model.out[0]
        assert isinstance(fast, cpu.ReducedPrecisionGroupNorm) and fast.weight is norm.weight
        got = fast(x)
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected.float()).abs().max() <= 2 * 2 ** -8 * expected.float().abs().max()
    accel.restore(model)
    assert type(model.model.diffusion_model.out[0]) is GroupNorm32


def test_float32_model_keeps_its_group_norms(model):
    accel.accelerate_for_inference(model)
    assert not any(isinstance(m, cpu.ReducedPrecisionGroupNorm) for m in model.modules())
