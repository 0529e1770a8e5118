"""Where one CFG ControlNet step's time goes on this CPU, and the least time its arithmetic can take here.

Counts the floating-point operations of one classifier-free-guided step (the same step as
``bench.bench_sampling``: SD1.5 + ControlNet, cond and uncond rows as one batch of 2) by kind (convolutions,
matrix products, attention), times each kind inside the step with the profiler, and measures the best rate
this CPU's torch kernels reach for each kind on the model's own shapes in isolation. The work of each kind at
its best rate, summed, is a lower bound for any fp32 implementation that does this arithmetic with these
kernels (it leaves out normalisations, activations and copies entirely).

    python -m bench.roofline --threads 2          # full size: ~6 GB RAM, a few minutes on 2 cores
    python -m bench.roofline --config tests/configs/cldm_tiny.yaml --size 64   # smoke run
"""
import argparse
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, register_flop_formula, sdpa_flop_count

from bench.bench_sampling import build
from ldm.accel import kernels as cpu_kernels

# Operator -> kind, for the FLOP counter's names and the profiler's (which carry an "aten::" prefix).
KINDS = {"convolution": "conv", "mkldnn_convolution": "conv", "addmm": "matmul", "mm": "matmul", "bmm": "matmul",
         "_scaled_dot_product_flash_attention_for_cpu": "attention",
         "controlnet.attention": "attention", "controlnet::attention": "attention",
         "controlnet.winograd_conv3x3": "conv", "controlnet::winograd_conv3x3": "conv"}


# torch counts the CUDA attention kernels but not the CPU one that scaled_dot_product_attention picks here.
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)  # the formula receives shapes


# And our AVX-512 kernels (ldm.accel.kernels, taken with the inference backend). Attention: (b, n, width) queries over (b, m, width) keys.
@register_flop_formula(torch.ops.controlnet.attention)
def _our_attention_flops(q_shape, k_shape, *args, out_shape=None, **kwargs) -> int:
    batch, queries, width = q_shape
    return 4 * batch * queries * k_shape[1] * width


# The Winograd convolution counts as the direct convolution it replaces (its own multiplications are 4/9 of
# that), so "GFLOP/s" stays comparable: work done per second, not operations executed.
@register_flop_formula(torch.ops.controlnet.winograd_conv3x3)
def _our_winograd_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    return conv_flop_count(x_shape, w_shape, out_shape)


def _op_kind(op) -> str:
    return KINDS.get(str(op).replace("aten.", ""), "other")


def count_flops(step) -> dict:
    """GFLOP of one call of ``step`` per kind."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        step()
    by_kind = defaultdict(float)
    for op, n in counter.get_flop_counts()["Global"].items():
        by_kind[_op_kind(op)] += n / 1e9
    return dict(by_kind)


def _event_kind(event):
    return KINDS.get(event.key.replace("aten::", ""))


def seconds_by_kind(step) -> dict:
    """Seconds of one call of ``step`` spent in each kind's kernels, and in everything else ("other")."""
    with torch.inference_mode():
        step()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t0 = time.perf_counter()
            step()
            wall = time.perf_counter() - t0
    by_kind = defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        kind = _event_kind(event)
        if kind:
            by_kind[kind] += event.self_cpu_time_total / 1e6
    by_kind["other"] = wall - sum(by_kind.values())
    return dict(by_kind, total=wall)


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def best_rates(latent: int, channels: int, heads: int, repeats: int = 5) -> dict:
    """Best GFLOP/s of each kind on the step's first-level shapes (where most of its work is): a 3x3 conv
    (the faster of oneDNN's and our Winograd kernel's, where it runs);
    the transformer's matrix products (d -> d, d -> 8d, 4d -> d, each as torch's addmm and as the same product
    run by oneDNN as a 1x1 convolution of a channels-last image), the best of them; self-attention, the
    faster of torch's kernel and ours (ldm.accel.kernels) where ours runs."""
    tokens = latent * latent
    x, w = torch.randn(2, channels, latent, latent), torch.randn(channels, channels, 3, 3)
    q = torch.randn(2, heads, tokens, channels // heads)
    with torch.inference_mode():
        conv = _median_seconds(lambda: F.conv2d(x, w, padding=1), repeats)
        if cpu_kernels.winograd_supported(x, w):  # its rate counted as the direct convolution's work
            conv = min(conv, _median_seconds(lambda: cpu_kernels.winograd_conv3x3(x, w, None), repeats))
        attention = _median_seconds(lambda: F.scaled_dot_product_attention(q, q, q), repeats)
        tokens_q = q.transpose(1, 2).reshape(2, tokens, channels)
        if cpu_kernels.attention_supported(tokens_q, tokens_q, tokens_q):
            attention = min(attention, _median_seconds(
                lambda: cpu_kernels.attention(tokens_q, tokens_q, tokens_q, heads), repeats))
        matmul = 0.0
        for k, n in ((channels, channels), (channels, 8 * channels), (4 * channels, channels)):
            a, b, bias = torch.randn(2 * tokens, k), torch.randn(n, k), torch.randn(n)
            a_nhwc = a.view(1, 2 * tokens, 1, k).permute(0, 3, 1, 2)  # the same memory as a channels-last image
            seconds = min(_median_seconds(lambda: F.linear(a, b, bias), repeats),
                          _median_seconds(lambda: F.conv2d(a_nhwc, b[:, :, None, None], bias), repeats))
            matmul = max(matmul, 2 * a.shape[0] * k * n / seconds / 1e9)
    return {"conv": 2 * x.numel() * channels * 9 / conv / 1e9, "matmul": matmul,
            "attention": 4 * q.numel() * tokens / attention / 1e9}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="models/cldm_v15.yaml")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (latents are size/8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    unet = OmegaConf.load(args.config).model.params.unet_config.params
    steps, model = build(args.config, args.size, "ours", "backend")
    step = steps["ours"]
    gflop = count_flops(step)
    with torch.inference_mode():
        seconds = _median_seconds(step, args.repeats)
    spent = seconds_by_kind(step)
    best = best_rates(args.size // 8, unet.model_channels, unet.num_heads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.config}, {args.size}px, CFG batch 2")
    total = sum(gflop.values())
    print(f"our step: {seconds:.2f} s (median of {args.repeats}) for {total:.0f} GFLOP = "
          f"{total / seconds:.0f} GFLOP/s; profiled step {spent['total']:.2f} s")
    print(f"{'kind':<10}{'GFLOP':>8}{'s in step':>11}{'GFLOP/s':>9}{'best GFLOP/s':>14}{'s at best':>11}")
    bound = 0.0
    for kind in ("conv", "matmul", "attention"):
        at_best = gflop.get(kind, 0.0) / best[kind]
        bound += at_best
        print(f"{kind:<10}{gflop.get(kind, 0.0):>8.0f}{spent.get(kind, 0.0):>11.2f}"
              f"{gflop.get(kind, 0.0) / max(spent.get(kind, 0.0), 1e-9):>9.0f}{best[kind]:>14.0f}{at_best:>11.2f}")
    print(f"{'other':<10}{gflop.get('other', 0.0):>8.0f}{spent['other']:>11.2f}   (norms, activations, copies)")
    print(f"lower bound (each kind at its best rate, nothing else): {bound:.2f} s per step")
    peak = max(best.values())
    print(f"all {total:.0f} GFLOP at the best rate of any kernel ({peak:.0f} GFLOP/s): {total / peak:.2f} s per step")


if __name__ == "__main__":
    main()
