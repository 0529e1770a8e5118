"""Each route of the CPU inference backend (ldm/accel) against the torch operator it replaces, on the SD1.5 UNet's
own shapes, in isolation: the measurement behind which routes the backend keeps on a CPU.

Timings are interleaved (torch, ours, torch, ours, ...) in one process; with ``--threads 1`` the CPU time
(``process_time``) counts work done, which other load on the machine barely changes.

    python -m bench.bench_routes --threads 1
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench.bench_sampling import cpu_model
from ldm.accel import conv_matmul, kernels
from ldm.modules.attention import ScaledDotProductAttention

# (name, batch, tokens, heads, head width): the self-attentions of the 64x64 and 32x32 levels at 512 px, CFG batch 2
ATTENTION = [("attention 64x64 (4096 tokens, 8 x 40)", 2, 4096, 8, 40),
             ("attention 32x32 (1024 tokens, 8 x 80)", 2, 1024, 8, 80)]
# (name, batch, channels in, channels out, side): 3x3 convolutions of the 64x64 and 32x32 levels
CONVOLUTIONS = [("3x3 conv 64x64, 320 -> 320", 2, 320, 320, 64), ("3x3 conv 32x32, 640 -> 640", 2, 640, 640, 32),
                ("3x3 conv 32x32, 1280 -> 640 (decoder)", 2, 1280, 640, 32)]
# (name, batch, channels in, side, dtype): weight-heavy 3x3 convolutions (1280 out) of the 16x16 and 8x8 levels
MATMUL_CONVOLUTIONS = [(f"3x3 conv {side}x{side}, {c_in} -> 1280 {name}", 2, c_in, side, dtype)
                       for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
                       for c_in, side in ((1280, 16), (2560, 16), (1280, 8), (2560, 8))]


def _times(fns, repeats):
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


@torch.inference_mode()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU time, median of {args.repeats}, CPU: {cpu_model()}")
    print(f"{'route':44s}{'torch s':>9s}{'ours s':>9s}{'ours/torch':>12s}")
    g = torch.Generator().manual_seed(0)

    def row(name, torch_fn, ours_fn):
        t = _times({"torch": torch_fn, "ours": ours_fn}, args.repeats)
        print(f"{name:44s}{t['torch']:9.3f}{t['ours']:9.3f}{t['ours'] / t['torch']:12.3f}", flush=True)

    for name, batch, c_in, side, dtype in MATMUL_CONVOLUTIONS:  # bf16 as the backend lays it out: channels-last
        layout = torch.channels_last if dtype == torch.bfloat16 else torch.contiguous_format
        x = torch.randn(batch, c_in, side, side, generator=g).to(dtype).contiguous(memory_format=layout)
        w = torch.randn(1280, c_in, 3, 3, generator=g).to(dtype).contiguous(memory_format=layout)
        b = torch.randn(1280, generator=g).to(dtype)
        row(name, lambda: F.conv2d(x, w, b, padding=1), lambda: conv_matmul.conv3x3(x, w, b, 1))
    if not kernels.available():
        print("the AVX-512 kernels do not run on this machine: no kernel routes to compare")
        return
    sdpa = ScaledDotProductAttention()
    for name, batch, tokens, heads, width in ATTENTION:
        q, k, v = (torch.randn(batch, tokens, heads * width, generator=g) for _ in range(3))
        row(name, lambda: sdpa(q, k, v, heads), lambda: kernels.attention(q, k, v, heads))
    for name, batch, c_in, c_out, side in CONVOLUTIONS:
        x = torch.randn(batch, c_in, side, side, generator=g)
        w, b = torch.randn(c_out, c_in, 3, 3, generator=g), torch.randn(c_out, generator=g)
        row(name, lambda: F.conv2d(x, w, b, padding=1), lambda: kernels.winograd_conv3x3(x, w, b))


if __name__ == "__main__":
    main()
