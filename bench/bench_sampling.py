"""One classifier-free-guided ControlNet denoising step: ours vs diffusers, same weights.

Builds the SD1.5 + ControlNet architecture (models/cldm_v15.yaml) with random weights, converts them
into diffusers' UNet2DConditionModel + ControlNetModel, then times one CFG step (the cond and uncond
rows of one image as one batch of 2) for both, interleaved, in one process: wall time and CPU time
(``process_time``; with ``--threads 1`` it counts work done, which machine load barely changes). Ours runs
twice, as the plain core ("ours plain") and with the inference backend the apps apply ("ours backend",
``ldm.accel.accelerate_for_inference``); ``--dtype bf16`` runs all three in bfloat16.
Peak memory is measured in a fresh process per implementation that holds only its own weights: the
high-water mark of the resident set, reset after building, over two steps.

    python -m bench.bench_sampling --threads 2     # full size: ~10 GB RAM, minutes on 2 cores
    python -m bench.bench_sampling --dtype bf16 --threads 2
    python -m bench.bench_sampling --config tests/configs/cldm_tiny.yaml --size 64   # smoke run
"""
import argparse
import copy
import gc
import json
import statistics
import subprocess
import sys
import time

import torch

from bench.diffusers_twin import diffusers_twin
from cldm.cldm import control_scales
from cldm.model import create_model
from ldm.accel import accelerate_for_inference, resolve_dtype, restore

OURS = ("plain", "backend")


def build(config: str, size: int, which: str, variant: str = "both", dtype: torch.dtype = torch.float32):
    """``({name: one CFG step}, our model)`` for ``which`` in "ours", "diffusers", "both"; our ``variant``:
    "plain" (the core alone), "backend" (with the inference backend) or "both" (the backend applied and
    removed around each step)."""
    torch.manual_seed(0)
    model = create_model(config).eval()
    latent = size // 8
    g = torch.Generator().manual_seed(0)
    ctx_dim = model.model.diffusion_model.spec.context_dim
    inputs = dict(x=torch.randn(1, 4, latent, latent, generator=g), t=torch.tensor([501]),
                  hint=torch.rand(1, 3, size, size, generator=g), cond=torch.randn(1, 77, ctx_dim, generator=g),
                  uncond=torch.randn(1, 77, ctx_dim, generator=g))
    steps = {}
    if which in ("both", "ours"):
        if which == "ours":  # hold the same weights as the diffusers twin: UNet + ControlNet only
            model.first_stage_model = model.cond_stage_model = None
        model.to(dtype)
        eps_fn = model.guided_eps_fn({"c_crossattn": [inputs["cond"]], "c_concat": [inputs["hint"]]},
                                     {"c_crossattn": [inputs["uncond"]], "c_concat": [inputs["hint"]]},
                                     guidance_scale=9.0, control_scales=control_scales(1.0))
        step = lambda: eps_fn(inputs["x"], inputs["t"], 0.0)  # noqa: E731
        if variant == "both" and dtype != torch.float32:
            # the backend re-lays out reduced-precision weights (channels-last): a twin, not a toggle per step
            twin = accelerate_for_inference(copy.deepcopy(model))
            twin_eps = twin.guided_eps_fn({"c_crossattn": [inputs["cond"]], "c_concat": [inputs["hint"]]},
                                          {"c_crossattn": [inputs["uncond"]], "c_concat": [inputs["hint"]]},
                                          guidance_scale=9.0, control_scales=control_scales(1.0))
            steps["ours plain"] = step
            steps["ours backend"] = lambda: twin_eps(inputs["x"], inputs["t"], 0.0)
        else:
            if variant in ("plain", "both"):
                steps["ours plain"] = lambda: (restore(model), step())
            if variant in ("backend", "both"):
                accelerate_for_inference(model)  # as the apps do after loading (says what it chose in the log)
                steps["ours backend"] = lambda: (accelerate_for_inference(model) if variant == "both" else None,
                                                 step())
    if which in ("both", "diffusers"):
        sd = {k: v.clone() for k, v in model.state_dict().items()}  # own storage, so our model can go
        unet, controlnet = diffusers_twin(config, sd, latent)
        unet.to(dtype), controlnet.to(dtype)
        inputs_cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        steps["diffusers"] = lambda: diffusers_step(unet, controlnet, inputs_cast, 9.0)
    if which == "diffusers":
        del sd
        model = None
        gc.collect()
    return steps, model


def diffusers_step(unet, controlnet, inp, scale):
    x2, t2 = torch.cat([inp["x"]] * 2), torch.cat([inp["t"]] * 2)
    ctx = torch.cat([inp["cond"], inp["uncond"]])
    down, mid = controlnet(x2, t2, encoder_hidden_states=ctx, controlnet_cond=torch.cat([inp["hint"]] * 2),
                           conditioning_scale=1.0, return_dict=False)
    e_c, e_u = unet(x2, t2, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample.chunk(2)
    return e_u + scale * (e_c - e_u)


@torch.inference_mode()
def time_steps(steps, repeats: int):
    for fn in steps.values():  # warm-up
        fn()
    times = {name: {"wall": [], "cpu": []} for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():  # interleaved, so machine load hits both alike
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return times


def _status_gib(field: str) -> float:
    """A memory field (VmRSS, VmHWM) of /proc/self/status in GiB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise KeyError(field)


def peak_memory(args, which: str) -> float:
    """Max RSS in GiB of a fresh process that builds ``which`` ("diffusers", "ours plain", "ours backend")
    and runs two steps."""
    cmd = [sys.executable, "-m", "bench.bench_sampling", "--config", args.config, "--size", str(args.size),
           "--only", which, "--repeats", "1", "--threads", str(torch.get_num_threads()), "--dtype", args.dtype]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="models/cldm_v15.yaml")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (latents are size/8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["ours plain", "ours backend", "diffusers"],
                        help="internal: one implementation, print max RSS")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-process peak memory runs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = resolve_dtype(args.dtype, "cpu")
    if args.only:
        which, _, variant = args.only.partition(" ")
        steps, _ = build(args.config, args.size, which, variant or "both", dtype)
        gc.collect()
        weights = _status_gib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark (Linux)
            f.write("5")
        time_steps(steps, args.repeats)
        print(json.dumps({"weights_gib": weights, "peak_gib": _status_gib("VmHWM")}))
        return
    times = time_steps(build(args.config, args.size, "both", "both", dtype)[0], args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.config}, {args.size}px, {args.dtype}, "
          f"CFG batch 2, median of {args.repeats}, CPU: {cpu_model()}")
    medians = {}
    for name, t in times.items():
        medians[name] = {kind: statistics.median(v) for kind, v in t.items()}
        print(f"{name:13s} wall {medians[name]['wall']:.3f} s/step, CPU {medians[name]['cpu']:.3f} s/step "
              f"(wall runs: {', '.join(f'{x:.2f}' for x in t['wall'])})", flush=True)
    for variant in OURS:
        for kind in ("wall", "cpu"):
            print(f"ours {variant} / diffusers ({kind}) = "
                  f"{medians['ours ' + variant][kind] / medians['diffusers'][kind]:.3f}", flush=True)
    if not args.no_memory:  # after the timing process has freed its models
        del times
        gc.collect()
        for name in medians:
            memory = peak_memory(args, name)
            print(f"{name:13s} resident {memory['weights_gib']:.2f} GiB after build, peak {memory['peak_gib']:.2f} GiB",
                  flush=True)


def cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
