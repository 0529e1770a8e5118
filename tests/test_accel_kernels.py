"""The AVX-512 kernels of the CPU backend (ldm/accel/kernels.py) and the layers that call them
(ldm/accel/cpu.py): values against float64, where they run, how they are built. Skipped on machines that cannot
run them (no AVX-512 or no compiler); those use torch's operators."""
import pytest
import torch
import torch.nn.functional as F

from torch import nn

from ldm.accel import kernels as cpu_kernels
from ldm.accel.cpu import KernelAttention, WinogradConv2d, _view_of
from ldm.modules.attention import CrossAttention, ScaledDotProductAttention

needs_kernel = pytest.mark.skipif(not cpu_kernels.available(), reason="no AVX-512 CPU or no C++ compiler")


def _projections(batch, heads, queries, keys, dim, seed=0, spread=1.0):
    """q, k, v as the model has them: strided (b, tokens, heads * dim) slices of wider projections."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, queries, 3 * heads * dim, generator=g)[..., :heads * dim] * spread
    kv = torch.randn(batch, keys, 2 * heads * dim, generator=g)
    return q, kv[..., :heads * dim], kv[..., heads * dim:]


def _reference(q, k, v, heads):
    split = lambda t: t.double().unflatten(-1, (heads, -1)).transpose(1, 2)
    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)


def _relative_error(x, reference):
    return ((x.double() - reference).abs().max() / reference.abs().max()).item()


@needs_kernel
@pytest.mark.parametrize("batch,heads,queries,keys,dim", [
    (2, 8, 300, 300, 40),   # queries not a multiple of the 64-query block, keys not of the 128-key block
    (1, 2, 128, 77, 64),    # cross-attention over a prompt
    (2, 1, 200, 1, 7),      # a single key; an odd head width
    (1, 4, 130, 260, 80),
    (1, 2, 192, 129, 160),
    (1, 1, 4096, 4096, 40),  # the 64x64 level's length
])
def test_kernel_matches_float64_attention(batch, heads, queries, keys, dim):
    q, k, v = _projections(batch, heads, queries, keys, dim)
    assert cpu_kernels.attention_supported(q, k, v)
    with torch.no_grad():
        out = cpu_kernels.attention(q, k, v, heads)
        torch_fp32 = ScaledDotProductAttention()(q, k, v, heads)  # torch's kernel
    reference = _reference(q, k, v, heads)
    assert out.shape == (batch, queries, heads * dim) and out.is_contiguous()
    # as close to float64 as torch's own float32 kernel (both ~1e-6 here)
    assert _relative_error(out, reference) <= max(4 * _relative_error(torch_fp32, reference), 2e-6)


@needs_kernel
def test_kernel_is_stable_for_large_scores():
    q, k, v = _projections(1, 2, 256, 300, 40, spread=40.0)  # scores in the hundreds: exp overflows unless shifted
    with torch.no_grad():
        out = cpu_kernels.attention(q, k, v, 2)
    assert torch.isfinite(out).all()
    assert _relative_error(out, _reference(q, k, v, 2)) < 1e-5


@needs_kernel
def test_kernel_follows_torch_threads():
    q, k, v = _projections(2, 4, 256, 256, 40)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 3):
            torch.set_num_threads(n)
            results.append(cpu_kernels.attention(q, k, v, 4))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)  # each query block's sums are fixed


@needs_kernel
def test_custom_op_registration():
    q, k, v = _projections(1, 2, 128, 64, 16)
    torch.library.opcheck(cpu_kernels.attention, (q, k, v, 2), test_utils=("test_schema", "test_faketensor"))


def test_supports_only_inference_on_cpu_float32():
    q, k, v = _projections(1, 2, 128, 64, 16)
    expected = cpu_kernels.available()
    with torch.no_grad():
        assert cpu_kernels.attention_supported(q, k, v) == expected
        assert not cpu_kernels.attention_supported(q.double(), k.double(), v.double())
        assert not cpu_kernels.attention_supported(q[:, :64], k, v)  # too few queries to gain
        assert not cpu_kernels.attention_supported(q.transpose(1, 2), k, v)  # tokens not rows
        assert not cpu_kernels.attention_supported(q, k[..., :16], v[..., :16])  # widths disagree
    assert cpu_kernels.attention_supported(q, k, v) == expected  # grad mode on, nothing requires grad
    assert not cpu_kernels.attention_supported(q.requires_grad_(), k, v)  # a graph to record: torch's kernel


def test_cross_attention_same_with_and_without_the_kernel():
    """Inference takes the kernel (where it runs), training torch's kernel: same function, same gradients path."""
    torch.manual_seed(0)
    self_attention = CrossAttention(64, heads=4, dim_head=16)
    cross_attention = CrossAttention(64, context_dim=48, heads=4, dim_head=16)
    for layer in (self_attention, cross_attention):
        layer.attention = _view_of(layer.attention, KernelAttention)
    x, context = torch.randn(2, 256, 64), torch.randn(2, 77, 48)
    with torch.no_grad():
        inference = [self_attention(x), cross_attention(x, context)]
    training = [self_attention(x.requires_grad_()), cross_attention(x, context)]  # a graph: torch's kernel
    for a, b in zip(inference, training):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    sum(t.sum() for t in training).backward()
    assert x.grad is not None and cross_attention.to_q.weight.grad is not None


def test_build_reports_a_missing_compiler(tmp_path):
    with pytest.raises(RuntimeError, match="no C.. compiler 'no-such-compiler-xyz'"):
        cpu_kernels.build(directory=tmp_path, compiler="no-such-compiler-xyz")


@pytest.mark.skipif(cpu_kernels.shutil.which("c++") is None, reason="no C++ compiler")
def test_build_reports_compile_errors_and_leaves_nothing(tmp_path):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="could not compile .*broken.cpp"):
        cpu_kernels.build([broken], directory=out)
    assert list(out.iterdir()) == []


@pytest.mark.skipif(cpu_kernels.shutil.which("c++") is None, reason="no C++ compiler")
def test_build_compiles_once(tmp_path):
    source = tmp_path / "tiny.cpp"
    source.write_text('extern "C" int answer() { return 42; }\n')
    first = cpu_kernels.build([source], directory=tmp_path / "out")
    mtime = first.stat().st_mtime_ns
    assert cpu_kernels.build([source], directory=tmp_path / "out") == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "out").iterdir()] == [first.name]
    source.write_text('extern "C" int answer() { return 43; }\n')
    assert cpu_kernels.build([source], directory=tmp_path / "out") != first  # a new source builds anew


@needs_kernel
@pytest.mark.parametrize("batch,channels,height,width,out_channels,bias", [
    (2, 5, 10, 40, 7, True),    # 20 tiles per row: a full and a partial vector of tiles
    (1, 4, 2, 2, 3, True),      # a single tile
    (2, 5, 12, 66, 13, True),   # 33 tiles per row; output channels not a multiple of the 6-channel tile
    (3, 7, 34, 18, 11, False),  # an odd batch; 9 tiles per row
    (2, 32, 64, 64, 12, True),
    (1, 1024, 32, 32, 520, True),  # transformed weights above the slice size: output channels in slices
])
def test_winograd_matches_float64_convolution(batch, channels, height, width, out_channels, bias):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, height, width, generator=g)
    weight = torch.randn(out_channels, channels, 3, 3, generator=g)
    b = torch.randn(out_channels, generator=g) if bias else None
    out = cpu_kernels.winograd_conv3x3(x, weight, b)
    reference = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=1)
    direct = F.conv2d(x, weight, b, padding=1)
    assert out.shape == reference.shape
    # Winograd's transforms add rounding: about twice a direct float32 convolution's error
    assert _relative_error(out, reference) <= 4 * _relative_error(direct, reference) + 1e-7


@needs_kernel
def test_winograd_custom_op_registration():
    x, weight, bias = torch.randn(1, 4, 32, 32), torch.randn(6, 4, 3, 3), torch.randn(6)
    torch.library.opcheck(cpu_kernels.winograd_conv3x3, (x, weight, bias), test_utils=("test_schema", "test_faketensor"))


def test_winograd_supported_only_where_it_pays():
    x, weight = torch.randn(2, 8, 32, 32), torch.randn(8, 8, 3, 3)
    expected = cpu_kernels.available()
    with torch.no_grad():
        assert cpu_kernels.winograd_supported(x, weight) == expected
        assert not cpu_kernels.winograd_supported(x[:, :, :16, :16], weight)  # too small to gain
        assert not cpu_kernels.winograd_supported(x[:, :, :31], weight)  # odd side
        assert not cpu_kernels.winograd_supported(x.double(), weight.double())
        assert not cpu_kernels.winograd_supported(x, weight[:, :, :1, :1])  # not 3x3
    assert not cpu_kernels.winograd_supported(x, weight.requires_grad_())


@needs_kernel
def test_winograd_layer_takes_the_kernel_for_inference_only():
    torch.manual_seed(0)
    conv = _view_of(nn.Conv2d(8, 12, 3, padding=1), WinogradConv2d)
    x = torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        reference = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        fast = conv(x)
    trained = conv(x)  # records a graph: torch's convolution
    assert _relative_error(fast, reference) < 1e-6 and _relative_error(trained, reference) < 1e-6
    trained.sum().backward()
    assert conv.weight.grad is not None
