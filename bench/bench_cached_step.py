"""What ``--cache-latents --cache-text`` saves per training step: the step's inputs + forward + loss + backward
(no AdamW update) with the VAE and text encoders run, and with their outputs taken from a cache, interleaved
round by round in one process so machine load hits both alike (round 0 is a warm-up).

    python -m bench.bench_cached_step --config models/cldm_v15.yaml --size 256 --rounds 4
"""
import argparse
import resource
import statistics
import time

import torch

from cldm.model import load_model_config
from ldm.util import instantiate_from_config


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="models/cldm_v15.yaml")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_model_config(args.config)
    cfg["target"] = "training.model.TrainControlLDM"
    torch.manual_seed(0)
    model = instantiate_from_config(cfg)
    model.train()
    g = torch.Generator().manual_seed(0)
    plain = {"jpg": torch.rand(1, args.size, args.size, 3, generator=g) * 2 - 1,
             "hint": torch.rand(1, args.size, args.size, 3, generator=g),
             "txt": ["a photograph of a cat sitting on a red sofa"]}
    with torch.no_grad():
        posterior = model.encode_first_stage(plain["jpg"].permute(0, 3, 1, 2).contiguous())
        cached = {"moments": torch.cat([posterior.mean, posterior.logvar], 1), "hint": plain["hint"],
                  "txt": plain["txt"], "context": model.get_learned_conditioning(plain["txt"])}

    def step(batch) -> float:
        start = time.perf_counter()
        loss, _ = model.shared_step(batch)
        loss.backward()
        for param in model.parameters():
            param.grad = None
        return time.perf_counter() - start

    times = {"plain": [], "cached": []}
    for r in range(args.rounds + 1):
        for name, batch in (("plain", plain), ("cached", cached)):
            dt = step(batch)
            print(f"round {r} {name}: {dt:.2f} s", flush=True)
            if r:
                times[name].append(dt)
    ratios = [c / p for p, c in zip(times["plain"], times["cached"])]
    print(f"{args.config}, {args.size} px, batch 1: plain median {statistics.median(times['plain']):.2f} s, cached "
          f"median {statistics.median(times['cached']):.2f} s, cached/plain per round "
          f"{', '.join(f'{x:.2f}' for x in ratios)}; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.1f} GiB")


if __name__ == "__main__":
    main()
