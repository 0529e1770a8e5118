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
from ldm.accel import kernels
from ldm.modules.attention import ScaledDotProductAttention

# (name, batch, tokens, heads, head width): the self-attentions of the 64x64 and 32x32 levels at 512 px, CFG batch 2
ATTENTION = [("attention 64x64 (4096 tokens, 8 x 40)", 2, 4096, 8, 40),
             ("attention 32x32 (1024 tokens, 8 x 80)", 2, 1024, 8, 80)]
# (name, batch, channels in, channels out, side): 3x3 convolutions of the 64x64 and 32x32 levels
CONVOLUTIONS = [("3x3 conv 64x64, 320 -> 320", 2, 320, 320, 64), ("3x3 conv 32x32, 640 -> 640", 2, 640, 640, 32),
                ("3x3 conv 32x32, 1280 -> 640 (decoder)", 2, 1280, 640, 32)]


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
    if not kernels.available():
        print("the AVX-512 kernels do not run on this machine: nothing to compare")
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU time, median of {args.repeats}, CPU: {cpu_model()}")
    print(f"{'route':44s}{'torch s':>9s}{'ours s':>9s}{'ours/torch':>12s}")
    g = torch.Generator().manual_seed(0)
    sdpa = ScaledDotProductAttention()
    for name, batch, tokens, heads, width in ATTENTION:
        q, k, v = (torch.randn(batch, tokens, heads * width, generator=g) for _ in range(3))
        t = _times({"torch": lambda: sdpa(q, k, v, heads), "ours": lambda: kernels.attention(q, k, v, heads)},
                   args.repeats)
        print(f"{name:44s}{t['torch']:9.3f}{t['ours']:9.3f}{t['ours'] / t['torch']:12.3f}", flush=True)
    for name, batch, c_in, c_out, side in CONVOLUTIONS:
        x = torch.randn(batch, c_in, side, side, generator=g)
        w, b = torch.randn(c_out, c_in, 3, 3, generator=g), torch.randn(c_out, generator=g)
        t = _times({"torch": lambda: F.conv2d(x, w, b, padding=1),
                    "ours": lambda: kernels.winograd_conv3x3(x, w, b)}, args.repeats)
        print(f"{name:44s}{t['torch']:9.3f}{t['ours']:9.3f}{t['ours'] / t['torch']:12.3f}", flush=True)


if __name__ == "__main__":
    main()
