"""Step time and peak memory of the ``--memory-preset`` settings (issue 21), one fresh process per row.

Each row builds the ControlLDM of ``--config`` (random weights, as ``training.train`` builds it), makes a synthetic
batch at ``--size`` px and runs the training step of ``training.train`` without Lightning around it: inputs
(VAE + text encoders, or the cached moments and contexts), forward, loss, backward and the step of the optimizer
training takes (``configure_optimizers``), under the preset's gradient checkpointing and autocast precision, with
the preset's batch/accumulation. Reported: median time per
optimizer step over ``--steps`` steps after one warm-up, the process's peak resident memory (CPU) and, on a GPU,
``torch.cuda.max_memory_allocated``. The 8gb preset's FSDP2 CPU offload needs a GPU and a process group; on CPU it
is timed as 12gb (marked). Rows ``plain`` and ``cached`` isolate the cached-encoding saving at fp32.

    python -m bench.bench_presets --config models/cldm_v15.yaml --size 256 --batch-size 1
    python -m bench.bench_presets --config tests/configs/cldm_tiny.yaml --size 64     # smoke run, seconds
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

ROWS = {  # name -> (grad checkpointing, autocast dtype or None, cached encodings, batch-1 accumulation + 8-bit AdamW)
    "plain": (True, None, False, False),
    "cached": (True, None, True, False),
    "none (no ckpt)": (False, None, False, False),
    "24gb": (True, torch.bfloat16, False, False),
    "16gb": (True, torch.bfloat16, True, False),
    "12gb": (True, torch.bfloat16, True, True),
    "8gb": (True, torch.bfloat16, True, True),
}


def run_row(name: str, config: str, size: int, batch: int, steps: int, device: str) -> dict:
    from ldm.util import instantiate_from_config
    from cldm.model import load_model_config
    from training.train import set_grad_checkpointing

    ckpt, dtype, cached, accumulate = ROWS[name]
    cfg = load_model_config(config)
    cfg["target"] = "training.model.TrainControlLDM"
    torch.manual_seed(0)
    model = instantiate_from_config(cfg).to(device)
    model.train()
    set_grad_checkpointing(model, ckpt)
    model.learning_rate = 1e-5
    model.optimizer_name = "adamw8bit" if accumulate and name == "12gb" else "adamw"
    optimizer = model.configure_optimizers()  # what training takes: fused AdamW, or 8-bit AdamW for 12gb
    g = torch.Generator().manual_seed(0)
    data = {"jpg": torch.rand(batch, size, size, 3, generator=g) * 2 - 1, "hint": torch.rand(batch, size, size, 3,
                                                                                               generator=g),
            "txt": ["a photograph of a cat sitting on a red sofa"] * batch}
    if cached:
        with torch.no_grad():
            x = data["jpg"].permute(0, 3, 1, 2).contiguous().to(device)
            posterior = model.encode_first_stage(x)
            data = {"moments": torch.cat([posterior.mean, posterior.logvar], 1).cpu(), "hint": data["hint"],
                    "txt": data["txt"], "context": model.get_learned_conditioning(data["txt"]).cpu()}
    micro = [{k: v[i:i + 1] for k, v in data.items()} for i in range(batch)] if accumulate else [data]

    def step():
        for part in micro:
            with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                loss, _ = model.shared_step(part)
            (loss / len(micro)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        step()
        if i:
            times.append(time.perf_counter() - start)
    out = {"row": name, "step_s": statistics.median(times), "rss_gib": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
    if device.startswith("cuda"):
        out["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="models/cldm_v15.yaml")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--row", help=argparse.SUPPRESS)  # child mode
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.row:
        print("RESULT " + json.dumps(run_row(args.row, args.config, args.size, args.batch_size, args.steps,
                                             args.device)), flush=True)
        return
    results = []
    for name in args.rows.split(","):
        command = [sys.executable, "-m", "bench.bench_presets", "--row", name, "--config", args.config, "--size",
                   str(args.size), "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--device",
                   args.device, "--threads", str(args.threads)]
        proc = subprocess.run(command, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name}: failed\n{proc.stderr[-1500:]}", file=sys.stderr)
            continue
        results.append(json.loads(lines[-1][7:]))
        print(f"  {name}: {results[-1]}", file=sys.stderr, flush=True)
    cpu_8gb = "" if args.device.startswith("cuda") else " (8gb timed without its GPU-only CPU offload)"
    print(f"\n{args.config}, {args.size} px, batch {args.batch_size}, {args.device}{cpu_8gb}")
    header = "| row | step (s) | peak RSS (GiB) |" + (" CUDA peak (GiB) |" if args.device.startswith("cuda") else "")
    print(header)
    print("|---|---|---|" + ("---|" if args.device.startswith("cuda") else ""))
    for r in results:
        cuda = f" {r['cuda_peak_gib']:.2f} |" if "cuda_peak_gib" in r else ""
        print(f"| {r['row']} | {r['step_s']:.3f} | {r['rss_gib']:.2f} |{cuda}")


if __name__ == "__main__":
    main()
