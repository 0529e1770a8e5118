"""Drop-in subclasses of ``nn.Linear`` / ``nn.Conv2d`` (same parameters, same checkpoint keys) that pick the
faster of torch's CPU kernels for the UNet's float32 shapes, large weights run through oneDNN in slices, and
the upsampler's convolution computed without upsampling. Elsewhere (GPU, half precision, other shapes)
they are the plain operations. Measurements: ``bench/roofline.py`` and the README's speed section.
"""
import torch
import torch.nn.functional as F
from torch import nn


def _cpu_float32(x: torch.Tensor) -> bool:
    """Where the measurements behind this module's choices were made; elsewhere the plain ops run."""
    return x.device.type == "cpu" and x.dtype == torch.float32


def _records_graph(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether autograd records this product (oneDNN's linear operator has no backward)."""
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


# oneDNN re-lays out a plain float32 weight into its blocked format on every call, into a new buffer. glibc
# serves blocks above 32 MiB (its highest dynamic mmap threshold) as fresh mappings that the kernel faults in
# and zeroes page by page, on every call: at the UNet's 16x16 level (59-118 MB weights, 2 x 256 pixels) that
# took a fifth of each convolution. Larger weights run in output-channel slices, whose buffers glibc recycles.
ONEDNN_WEIGHT_SLICE_BYTES = 16 * 2**20


def _weight_slices(weight: torch.Tensor) -> int:
    """The fewest output-channel slices (a power of two) that bring each slice of ``weight`` within
    ``ONEDNN_WEIGHT_SLICE_BYTES``, keeping slices whole multiples of oneDNN's 16-channel blocks."""
    slices = 1
    while (weight.numel() * weight.element_size() > slices * ONEDNN_WEIGHT_SLICE_BYTES
           and weight.shape[0] % (32 * slices) == 0):
        slices *= 2
    return slices


def onednn_conv2d(x: torch.Tensor, weight: torch.Tensor, bias=None, stride=1, padding=0) -> torch.Tensor:
    """``F.conv2d``; on CPU in float32 with a large weight, in output-channel slices (see above)."""
    slices = _weight_slices(weight) if _cpu_float32(x) else 1
    if slices == 1:
        return F.conv2d(x, weight, bias, stride, padding)
    biases = [None] * slices if bias is None else bias.chunk(slices)
    return torch.cat([F.conv2d(x, w, b, stride, padding) for w, b in zip(weight.chunk(slices), biases)], dim=1)


# Below this many rows oneDNN's convolution costs more in its per-call weight re-layout than its faster kernel
# saves (measured with the weights out of cache, as in a UNet step: at the 16x16 level's 512 rows it is still
# up to 1.3x faster than sgemm, at the 8x8 level's 128 rows up to 1.25x slower).
ONEDNN_MIN_ROWS = 512
# Up to this many rows, a product that records no graph runs as oneDNN's linear (the operator torch.compile
# emits for CPU linears; it has no backward): 1.1-1.2x the convolution at 512 rows, 1.2-2.7x sgemm at 128.
ONEDNN_LINEAR_MAX_ROWS = 512
_onednn_linear = (getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available()
                  else None)


class TokenLinear(nn.Linear):
    """``nn.Linear`` over token rows (same parameters and keys). On CPU in float32 the product runs on
    oneDNN, which is up to 1.4x faster than MKL's sgemm for the UNet's shapes here (bench/roofline.py):
    with few rows and no graph to record, as oneDNN's linear; with many rows, as its 1x1 convolution of the
    rows viewed as a one-pixel-high channels-last image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if not _cpu_float32(x):
            return F.linear(x, self.weight, self.bias)
        if rows <= ONEDNN_LINEAR_MAX_ROWS and _onednn_linear is not None and not _records_graph(x, self.weight):
            out = _onednn_linear(x.reshape(rows, -1), self.weight, self.bias, "none", [], "")
            return out.view(*x.shape[:-1], self.out_features)
        if rows < ONEDNN_MIN_ROWS:
            return F.linear(x, self.weight, self.bias)
        image = x.reshape(1, 1, rows, x.shape[-1]).permute(0, 3, 1, 2)  # (1, in, 1, rows), channels-last
        out = onednn_conv2d(image, self.weight[:, :, None, None], self.bias)
        return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], self.out_features)


# At most this many output pixels (batch x height x width) a convolution runs as a matrix product over
# unfolded patches: at the UNet's 8x8 level (2 x 64 pixels, 1280-2560 channels) oneDNN's convolution spends
# about as long re-laying out the 59-118 MB weight as computing with it; sgemm reads it as stored (1.4-1.5x
# faster there, no faster at 2 x 16 x 16), and oneDNN's linear, where no graph is recorded, 1.35x sgemm.
SGEMM_MAX_PIXELS = 128


class Conv2d(nn.Conv2d):
    """``nn.Conv2d``; on CPU in float32 with few output pixels, an unfold + matrix product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not _cpu_float32(x) or self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str)
                or self.dilation != (1, 1)):
            return super().forward(x)
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        out_h = (h + 2 * ph - kh) // sh + 1
        out_w = (w + 2 * pw - kw) // sw + 1
        if n * out_h * out_w > SGEMM_MAX_PIXELS:
            return onednn_conv2d(x, self.weight, self.bias, self.stride, self.padding)
        patches = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (n, c*kh*kw, pixels)
        weight = self.weight.view(1, self.out_channels, -1)
        if _onednn_linear is not None and not _records_graph(x, self.weight):
            # the weight's rows against each image's patches on oneDNN's linear: 1.35x sgemm for the 8x8 level
            out = torch.stack([_onednn_linear(weight[0], p.t(), None, "none", [], "") for p in patches])
            if self.bias is not None:
                out += self.bias.view(1, -1, 1)
        elif self.bias is None:
            out = torch.bmm(weight.expand(n, -1, -1), patches)
        else:
            out = torch.baddbmm(self.bias.view(1, -1, 1).expand(n, -1, patches.shape[-1]), weight.expand(n, -1, -1),
                                patches)
        return out.view(n, self.out_channels, out_h, out_w)


# From this many input pixels (h x w) up, a 2x nearest upsampling followed by a 3x3 convolution runs as
# four 2x2 convolutions of the input (upsample_conv3x3): at the UNet's 32x32 -> 64x64 upsampler 1.9x
# faster, 1.25x at 16x16 -> 32x32; at 8x8 -> 16x16 building the four kernels costs more than they save.
UPSAMPLE_PHASES_MIN_PIXELS = 256


def _tap_pairs(weight: torch.Tensor, dim: int):
    """The 3 taps of ``weight`` along ``dim`` folded onto the 2 input pixels each output parity reads:
    even outputs read (previous, own) pixel with taps (0, 1 + 2); odd ones (own, next) with (0 + 1, 2)."""
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` without the
    upsampling: each of the four output phases (row and column parity) is a 2x2 convolution of ``x``
    whose taps are the 3x3 taps summed over the input pixel they land on: 16 multiply-adds per output
    pixel and channel pair instead of 36."""
    if not _cpu_float32(x) or x.shape[2] * x.shape[3] < UPSAMPLE_PHASES_MIN_PIXELS:
        return onednn_conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    out = x.new_empty(n, weight.shape[0], h, 2, w, 2)
    for row_parity, rows in enumerate(_tap_pairs(weight, 2)):
        for col_parity, kernel in enumerate(_tap_pairs(rows, 3)):
            window = padded[:, :, row_parity:row_parity + h + 1, col_parity:col_parity + w + 1]
            out[:, :, :, row_parity, :, col_parity] = onednn_conv2d(window, kernel, bias)
    return out.view(n, -1, 2 * h, 2 * w)
