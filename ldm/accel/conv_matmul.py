"""A 3x3 convolution as one matrix product (im2col), for weight-heavy convolutions on small images.

oneDNN re-lays a plain convolution weight into its blocked format on every call. Where the weight is large and
the image small (the 1280-channel levels of the SD UNet: 16x16 and 8x8 latents at 512 px), that reorder costs
more than the arithmetic: a 2560 -> 1280 3x3 convolution on two 8x8 images took 23 ms in bf16, of which 17 ms
were the reorder. Gathering the 3x3 neighbourhoods into rows and multiplying once by the weight, read where it
lies, takes 5.6 ms. On larger images the gather costs more than the reorder saves, hence the limits below
(measured on an Intel Xeon with AVX-512 and AMX, 2 threads: 0.2-0.9x torch's time within them, up to 1.4x
outside; bench/bench_routes.py prints the comparison for the machine it runs on).

Nothing is cached: the weight is read through a view of its own storage (OIHW rows for contiguous weights,
OHWI rows for channels-last ones), so weight edits are seen at once.
"""
import torch
import torch.nn.functional as F

MIN_CHANNELS = 1280  # input channels: below, the reorder is cheap next to the gather
MAX_ROWS = 576  # output pixels of the whole batch (one 24x24 image, two 16x16 ...): above, the gather loses
DTYPES = (torch.float32, torch.bfloat16)  # measured; float16 matrix products on CPUs were not


def shaped(conv: torch.nn.Module) -> bool:
    """Whether ``conv`` is a convolution this route can compute: 3x3, padding 1, stride 1 or 2, one group."""
    return isinstance(conv, torch.nn.Conv2d) and (
        conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride in ((1, 1), (2, 2))
        and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
        and conv.in_channels >= MIN_CHANNELS)


def _layout(x: torch.Tensor, weight: torch.Tensor):
    """"nchw" or "nhwc" when input and weight share that memory layout, else None. (NCHW only in float32: the
    batched bfloat16 product it takes rounds twice as far from the exact result as oneDNN's convolution.)"""
    if x.is_contiguous() and weight.is_contiguous():
        return "nchw" if x.dtype == torch.float32 else None
    channels_last = torch.channels_last
    if x.is_contiguous(memory_format=channels_last) and weight.is_contiguous(memory_format=channels_last):
        return "nhwc"
    return None


def supported(x: torch.Tensor, weight: torch.Tensor, stride: int) -> bool:
    """Whether ``conv3x3(x, weight, bias, stride)`` runs and wins here: a CPU float32/bfloat16 batch of at least
    ``MIN_CHANNELS`` channels whose output has at most ``MAX_ROWS`` pixels, no autograd graph to record, input
    and weight in one memory layout (channels-last in bfloat16)."""
    if x.dim() != 4 or x.shape[1] < MIN_CHANNELS or x.device.type != "cpu" or x.dtype not in DTYPES \
            or weight.dtype != x.dtype:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad) or torch.is_autocast_enabled("cpu"):
        return False
    rows = x.shape[0] * (-(-x.shape[2] // stride)) * (-(-x.shape[3] // stride))
    return rows <= MAX_ROWS and _layout(x, weight) is not None


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias, stride: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding=1)`` for a 3x3 ``weight``, as one matrix product, in ``x``'s
    memory layout. Check ``supported`` first."""
    n, c, h, w = x.shape
    out_channels = weight.shape[0]
    out_h, out_w = (h - 1) // stride + 1, (w - 1) // stride + 1
    if _layout(x, weight) == "nchw":
        cols = F.unfold(x, 3, padding=1, stride=stride)  # (n, c*9, pixels), rows ordered as the OIHW weight
        # bmm, not matmul: inside the UNet's step, matmul folded some of these into one product over a transposed
        # copy of the columns (1.3-4 % of a 512 px float32 step, interleaved A/B on the Intel Xeon)
        out = torch.bmm(weight.view(out_channels, c * 9).expand(n, -1, -1), cols)
        if bias is not None:
            out += bias[:, None]
        return out.view(n, out_channels, out_h, out_w)
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # (n, h+2, w+2, c), a channels-last view
    cols = padded.unfold(1, 3, stride).unfold(2, 3, stride)  # (n, out_h, out_w, c, 3, 3)
    cols = cols.permute(0, 1, 2, 4, 5, 3).reshape(n * out_h * out_w, 9 * c)  # rows ordered as the OHWI weight
    out = F.linear(cols, weight.permute(0, 2, 3, 1).reshape(out_channels, 9 * c), bias)
    return out.view(n, out_h, out_w, out_channels).permute(0, 3, 1, 2)  # channels-last, as the input
