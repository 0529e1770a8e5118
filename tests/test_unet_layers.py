"""The UNet's CPU fast paths compute the same function as the plain layers they replace."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.attention import FEED_FORWARD_ROWS, FeedForward
from ldm.modules.diffusionmodules.util import GroupNorm32, repeat_rows
from ldm.modules import layers
from ldm.modules.layers import (ONEDNN_MIN_ROWS, SGEMM_MAX_PIXELS, UPSAMPLE_PHASES_MIN_PIXELS, Conv2d, GatedLinear,
                                TokenLinear, UpsampleConv2d, onednn_conv2d, upsample_conv3x3)


@pytest.mark.parametrize("rows", [ONEDNN_MIN_ROWS - 1, ONEDNN_MIN_ROWS + 100])  # MKL path, oneDNN path
@pytest.mark.parametrize("bias", [True, False])
def test_token_linear_is_linear_values_and_grads(rows, bias):
    torch.manual_seed(0)
    layer = TokenLinear(48, 80, bias=bias)
    x = torch.randn(2, rows // 2 + 1, 48, requires_grad=True)
    out = layer(x)
    expected = F.linear(x, layer.weight, layer.bias)
    assert out.shape == expected.shape and torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), [x, layer.weight])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, layer.weight])
    assert all(torch.allclose(g, e, rtol=1e-4, atol=1e-4) for g, e in zip(grads, expected_grads))
    assert set(layer.state_dict()) == ({"weight", "bias"} if bias else {"weight"})


@pytest.mark.parametrize("rows", [1, 77, layers.ONEDNN_LINEAR_MAX_ROWS])
@pytest.mark.parametrize("bias", [True, False])
def test_token_linear_without_graph_is_linear(rows, bias):
    """Inference with few rows takes oneDNN's linear (no backward), training the paths above."""
    torch.manual_seed(0)
    layer = TokenLinear(48, 80, bias=bias)
    x = torch.randn(rows, 1, 48)
    with torch.no_grad():
        out = layer(x)
    assert out.shape == (rows, 1, 80) and not out.requires_grad
    assert torch.allclose(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_token_linear_keeps_other_dtypes_on_plain_linear():
    layer = TokenLinear(16, 8).to(torch.bfloat16)
    x = torch.randn(ONEDNN_MIN_ROWS * 2, 16, dtype=torch.bfloat16)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("kernel, stride, side", [(3, 1, 8), (3, 2, 16), (1, 1, 8), (3, 1, 7), (3, 1, 32)])
def test_conv2d_is_conv2d_values_and_grads(kernel, stride, side):
    """Small outputs (the UNet's 8x8 level) take the unfold + sgemm path; 32x32 stays on oneDNN."""
    torch.manual_seed(0)
    conv = Conv2d(24, 40, kernel, stride=stride, padding=kernel // 2)
    x = torch.randn(2, 24, side, side, requires_grad=True)
    out = conv(x)
    expected = F.conv2d(x, conv.weight, conv.bias, stride, kernel // 2)
    assert (2 * out.shape[2] * out.shape[3] <= SGEMM_MAX_PIXELS) == (side != 32)
    assert out.shape == expected.shape and torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), [x, conv.weight, conv.bias])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, conv.weight, conv.bias])
    assert all(torch.allclose(g, e, rtol=1e-4, atol=1e-4) for g, e in zip(grads, expected_grads))


def test_weight_slices_keep_16_channel_blocks():
    mib = 2**20
    assert layers._weight_slices(torch.empty(1280, 1280, 3, 3)) == 4  # 59 MB -> 4 x 14.7 MB
    assert layers._weight_slices(torch.empty(1280, 2560, 3, 3)) == 8
    assert layers._weight_slices(torch.empty(320, 320, 3, 3)) == 1
    assert layers._weight_slices(torch.empty(48, 4 * mib // 48)) == 1  # 48 channels split into 16-blocks: no
    assert layers._weight_slices(torch.empty(10240, 1280)) == 4


@pytest.mark.parametrize("bias", [True, False])
def test_onednn_conv2d_in_slices_is_conv2d_values_and_grads(monkeypatch, bias):
    monkeypatch.setattr(layers, "ONEDNN_WEIGHT_SLICE_BYTES", 64 * 24 * 9 * 4 // 4)  # 4 slices of 16 channels
    torch.manual_seed(0)
    x = torch.randn(2, 24, 10, 10, requires_grad=True)
    weight = torch.randn(64, 24, 3, 3, requires_grad=True)
    b = torch.randn(64, requires_grad=True) if bias else None
    assert layers._weight_slices(weight) == 4
    out = onednn_conv2d(x, weight, b, stride=2, padding=1)
    expected = F.conv2d(x, weight, b, stride=2, padding=1)
    assert out.shape == expected.shape and torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
    wrt = [x, weight] + ([b] if bias else [])
    grads = torch.autograd.grad(out.square().sum(), wrt)
    expected_grads = torch.autograd.grad(expected.square().sum(), wrt)
    assert all((g - e).abs().max() <= 1e-5 * e.abs().max() for g, e in zip(grads, expected_grads))


@pytest.mark.parametrize("kernel, stride, side", [(3, 1, 8), (3, 2, 16), (1, 1, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_without_graph_is_conv2d(kernel, stride, side, bias):
    """Small outputs with no graph to record take oneDNN's linear over the unfolded patches."""
    torch.manual_seed(0)
    conv = Conv2d(24, 40, kernel, stride=stride, padding=kernel // 2, bias=bias)
    x = torch.randn(2, 24, side, side)
    with torch.no_grad():
        out = conv(x)
    expected = F.conv2d(x, conv.weight, conv.bias, stride, kernel // 2)
    assert out.shape == expected.shape and torch.allclose(out, expected, rtol=1e-5, atol=1e-5)


requires_onednn = pytest.mark.skipif(layers._onednn_conv is None, reason="torch built without oneDNN")


@requires_onednn
@pytest.mark.parametrize("kernel, stride, channels", [(3, 1, (24, 40)), (3, 2, (5, 17)), (1, 1, (24, 40))])
def test_packed_conv2d_is_conv2d_and_keeps_its_weight(kernel, stride, channels):
    """Packed, a layer computes the same, holds no plain copy, and gives back its weight bit for bit."""
    torch.manual_seed(0)
    conv = Conv2d(*channels, kernel, stride=stride, padding=kernel // 2)
    weight = conv.weight.detach().clone()
    x = torch.randn(2, channels[0], 9, 7)
    expected = F.conv2d(x, weight, conv.bias, stride, kernel // 2)
    assert layers.pack_weights(conv) == 1
    with torch.no_grad():
        out = conv(x)
        assert conv._packed is not None and conv.weight.numel() == 0
        assert torch.allclose(conv(x[:1]), expected[:1], rtol=1e-5, atol=1e-5)  # another input shape
    assert out.shape == expected.shape and torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(conv.state_dict()["weight"], weight)
    layers.unpack_weights(conv)
    assert conv._packed is None and not conv.packing and torch.equal(conv.weight, weight)


@requires_onednn
@pytest.mark.parametrize("options", [dict(padding_mode="reflect", padding=1), dict(padding="same")])
def test_conv2d_that_packing_cannot_compute_stays_plain(options):
    conv = Conv2d(4, 6, 3, **options)
    x = torch.randn(1, 4, 5, 5)
    layers.pack_weights(conv)
    assert conv._packed is None and conv.weight.shape == (6, 4, 3, 3)
    with torch.no_grad():
        assert torch.equal(conv(x), nn.Conv2d.forward(conv, x))
    assert conv._packed is None


@requires_onednn
def test_packed_token_linear_is_linear():
    torch.manual_seed(0)
    layer = TokenLinear(48, 80)
    x = torch.randn(3, 100, 48)
    expected = F.linear(x, layer.weight, layer.bias).detach()
    layers.pack_weights(layer)
    with torch.no_grad():
        out = layer(x)
        assert layer._packed is not None and layer.weight.numel() == 0
        assert torch.allclose(layer(x[:1, :7]), expected[:1, :7], rtol=1e-5, atol=1e-5)
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)


@requires_onednn
def test_gated_linear_is_geglu_packed_or_not():
    """GEGLU's projection: value * gelu(gate) of the output halves; packed, the same values (GELU and product
    inside oneDNN's linear) and the same weight back, and gradients as the plain layer."""
    torch.manual_seed(0)
    layer = GatedLinear(24, 2 * 40)
    weight = layer.weight.detach().clone()
    x = torch.randn(2, 50, 24, requires_grad=True)
    value, gate = F.linear(x, weight, layer.bias).chunk(2, dim=-1)
    expected = value * F.gelu(gate)
    out = layer(x)
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(out.sum(), [x])
    assert torch.allclose(grad, torch.autograd.grad(expected.sum(), [x])[0], rtol=1e-5, atol=1e-6)
    layers.pack_weights(layer)
    with torch.no_grad():
        packed = layer(x)
        assert layer._packed is not None and layer.weight.numel() == 0
    assert torch.allclose(packed, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(layer.state_dict()["weight"], weight)
    layers.unpack_weights(layer)
    assert torch.equal(layer.weight, weight)


@requires_onednn
def test_packed_layer_unpacks_for_gradients_devices_dtypes_and_loading():
    torch.manual_seed(0)
    conv = Conv2d(8, 16, 3, padding=1)
    weight = conv.weight.detach().clone()
    x = torch.randn(1, 8, 6, 6)
    layers.pack_weights(conv)
    with torch.no_grad():
        conv(x)
    (grad,) = torch.autograd.grad(conv(x).sum(), [conv.weight])  # a graph to record: plain weight again
    assert conv._packed is None and torch.equal(conv.weight, weight) and grad.shape == weight.shape
    with torch.no_grad():
        conv(x)  # packs again
        assert conv._packed is not None
        conv.double()
        assert conv._packed is None and torch.equal(conv.weight, weight.double())
        assert torch.allclose(conv(x.double()), F.conv2d(x.double(), conv.weight, conv.bias, padding=1))
        conv.float()
        conv(x)
        new_weight = torch.randn_like(weight)
        conv.load_state_dict({"weight": new_weight, "bias": conv.bias.detach().clone()})
        assert conv._packed is None and torch.equal(conv.weight, new_weight)
        assert torch.allclose(conv(x), F.conv2d(x, new_weight, conv.bias, padding=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h, w", [(16, 16), (16, 20), (8, 8)])
def test_upsample_conv3x3_is_upsample_then_conv_values_and_grads(h, w):
    torch.manual_seed(0)
    x = torch.randn(2, 12, h, w, requires_grad=True)
    weight = torch.randn(20, 12, 3, 3, requires_grad=True)
    bias = torch.randn(20, requires_grad=True)
    assert (h * w >= UPSAMPLE_PHASES_MIN_PIXELS) == (h == 16)
    out = upsample_conv3x3(x, weight, bias)
    expected = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)
    assert out.shape == (2, 20, 2 * h, 2 * w) and torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), [x, weight, bias])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, weight, bias])
    assert all((g - e).abs().max() <= 1e-5 * e.abs().max() for g, e in zip(grads, expected_grads))


@pytest.mark.parametrize("packed", [False, True])
def test_upsample_conv2d_takes_the_input_before_upsampling(packed):
    """Plain: phase convolutions from 256 input pixels. With packing enabled: phase convolutions of the plain
    weight from 1024 pixels (the layer then never packs), the packed convolution below (packed at that call).
    Where the Winograd kernel runs, it takes the large input's upsampled image instead (no packing either)."""
    torch.manual_seed(0)
    conv = UpsampleConv2d(12, 20, 3, padding=1)
    weight, bias = conv.weight.detach().clone(), conv.bias.detach().clone()
    if packed and layers.pack_weights(conv) == 0:
        pytest.skip("torch built without oneDNN")
    assert conv._packed is None  # nothing packed before the first call
    with torch.no_grad():
        big, small = torch.randn(2, 12, 32, 32), torch.randn(2, 12, 8, 8)
        expected = [F.conv2d(F.interpolate(x, scale_factor=2), weight, bias, padding=1) for x in (big, small)]
        assert torch.allclose(conv(big), expected[0], rtol=1e-5, atol=1e-5)
        assert conv._packed is None
        assert torch.allclose(conv(small), expected[1], rtol=1e-5, atol=1e-5)
        assert (conv._packed is not None) == packed
        assert torch.allclose(conv(big), expected[0], rtol=1e-5, atol=1e-5)  # packed: the convolution route
    assert torch.equal(conv.state_dict()["weight"], weight)


def test_feed_forward_in_row_chunks_equals_whole():
    torch.manual_seed(0)
    ff = FeedForward(32)
    x = torch.randn(3, FEED_FORWARD_ROWS, 32, requires_grad=True)  # 3 chunks
    out = ff(x)
    whole = ff.net(x)
    assert out.shape == x.shape and torch.allclose(out, whole, rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), [x])
    (g_whole,) = torch.autograd.grad(whole.sum(), [x])
    assert torch.allclose(g, g_whole, rtol=1e-4, atol=1e-5)


def test_repeat_rows():
    x = torch.arange(6.0).view(2, 3)
    assert repeat_rows(x, 2) is x
    assert torch.equal(repeat_rows(x, 4), torch.cat([x, x]))
    with pytest.raises(ValueError, match="multiple"):
        repeat_rows(x, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_group_norm_runs_in_at_least_float32(dtype):
    norm = GroupNorm32(4, 8)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64) * 100
    compute = torch.promote_types(dtype, torch.float32)
    expected = F.group_norm(x.to(dtype).to(compute), 4, norm.weight.to(compute), norm.bias.to(compute), norm.eps)
    out = norm(x.to(dtype))
    assert out.dtype == dtype and torch.equal(out, expected.to(dtype))
