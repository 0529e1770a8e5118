"""How close one CFG ControlNet step already is to this CPU's fp32 ceiling.

Counts the floating-point operations of one classifier-free-guided step (the same step as
``bench.bench_sampling``: SD1.5 + ControlNet, cond and uncond rows as one batch of 2), measures the machine's
fp32 ceiling as the throughput of a large matrix product (MKL sgemm, the best-tuned kernel torch has here),
then times our step and reports what fraction of that ceiling it runs at, and the step time it would take at
the ceiling: a lower bound for any fp32 implementation that does this arithmetic.

    python -m bench.roofline --threads 2          # full size: ~6 GB RAM, about a minute on 2 cores
    python -m bench.roofline --config tests/configs/cldm_tiny.yaml --size 64   # smoke run
"""
import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from bench.bench_sampling import build


# torch counts the CUDA attention kernels but not the CPU one that scaled_dot_product_attention picks here.
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)  # the formula receives shapes


def count_flops(step) -> dict:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        step()
    by_op = {str(op).replace("aten.", ""): n for op, n in counter.get_flop_counts()["Global"].items()}
    return {"total": counter.get_total_flops(), "by_op": by_op}


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def sgemm_ceiling(n: int = 4096, repeats: int = 5) -> float:
    """fp32 GFLOP/s of an n x n x n matrix product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / _median_seconds(lambda: a @ b, repeats) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="models/cldm_v15.yaml")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (latents are size/8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    step = build(args.config, args.size, "ours")["ours"]
    flops = count_flops(step)
    ceiling = sgemm_ceiling()
    with torch.inference_mode():
        seconds = _median_seconds(step, args.repeats)
    achieved = flops["total"] / seconds / 1e9
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.config}, {args.size}px, CFG batch 2")
    print(f"work per step: {flops['total'] / 1e9:.1f} GFLOP (" +
          ", ".join(f"{op} {n / 1e9:.1f}" for op, n in sorted(flops["by_op"].items(), key=lambda kv: -kv[1])) + ")")
    print(f"fp32 ceiling (4096^3 sgemm): {ceiling:.0f} GFLOP/s")
    print(f"our step: {seconds:.2f} s = {achieved:.0f} GFLOP/s = {achieved / ceiling:.0%} of the ceiling")
    print(f"the same work at the ceiling: {flops['total'] / ceiling / 1e9:.2f} s per step")


if __name__ == "__main__":
    main()
