"""Building blocks of the UNet: chunked feed-forward, shared rows, GroupNorm precision, GEGLU, upsampling."""
import pytest
import torch
import torch.nn.functional as F

from ldm.modules.attention import FEED_FORWARD_ROWS, GEGLU, FeedForward
from ldm.modules.diffusionmodules.openaimodel import Upsample
from ldm.modules.diffusionmodules.util import GroupNorm32, repeat_rows


def test_geglu_is_value_times_gelu_of_gate():
    torch.manual_seed(0)
    geglu = GEGLU(6, 5)
    x = torch.randn(3, 6)
    projected = x @ geglu.proj.weight.t() + geglu.proj.bias
    assert torch.allclose(geglu(x), projected[:, :5] * F.gelu(projected[:, 5:]), atol=1e-6)


def test_upsample_doubles_or_meets_the_skip_size():
    torch.manual_seed(0)
    up = Upsample(4)
    x = torch.randn(1, 4, 3, 5)
    assert torch.equal(up(x), up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))
    assert up(x, size=(5, 9)).shape == (1, 4, 5, 9)  # an odd skip: a latent side not a multiple of 8


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
