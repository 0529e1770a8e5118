"""One ControlNet training step: time and peak memory, ours against diffusers and a plain SD fine-tune.

Builds the SD1.5 + ControlNet architecture (models/cldm_v15.yaml) with random weights and times one training
step (VAE encode, text encode, noise, forward, MSE loss, backward, AdamW step) at ``--size`` px, batch 1, fp32:

    ours_locked         ControlNet trained, SD locked (upstream's default), the config's gradient checkpointing
    ours_locked_nockpt  the same without gradient checkpointing
    ours_unlocked       ControlNet + SD UNet decoder trained (sd_locked=False)
    unet_finetune       no ControlNet: the whole SD UNet trained (the paper's "fine-tuning SD" baseline)
    diffusers           diffusers' train_controlnet.py step: ControlNetModel trained, UNet/VAE/CLIP frozen, same
                        weights converted; no gradient checkpointing and torch's default AdamW (the script's
                        defaults; ours take the optimizer their training takes, ``configure_optimizers``: fused AdamW)
    diffusers_ckpt      the same with gradient checkpointing (the script's --gradient_checkpointing)

Step times come from one process, variants interleaved round by round so machine load hits all alike; the
variants share one copy of the weights, and each timed step starts a fresh AdamW (its state is freed after the
step, so that all variants fit in one process: every timed step pays AdamW's state allocation). Peak memory
(max RSS) comes from a fresh process per variant that keeps its optimizer and runs two steps. A variant whose
estimated memory exceeds what the machine has free is skipped, and a child process is killed at ``--mem-cap-gb``.

    python -m bench.bench_train                          # full size: minutes per step on 2 cores, 10+ GB
    python -m bench.bench_train --config tests/configs/cldm_tiny.yaml --size 64      # smoke run, seconds
    python -m bench.bench_train --presets --size 512     # the --memory-preset table (bench/bench_presets.py)
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
import warnings
from typing import Callable, Dict, List, Optional

import psutil
import torch
import torch.nn.functional as F
import yaml

VARIANTS = ("ours_locked", "ours_locked_nockpt", "ours_unlocked", "unet_finetune", "diffusers", "diffusers_ckpt")
GIB = 2 ** 30
PROMPT = "medium sea green circle with light coral background"


class Variant:
    """A training step: ``loss_fn`` runs the forward pass; ``prepare`` sets the shared model up for it."""

    def __init__(self, params: List[torch.nn.Parameter], loss_fn: Callable[[], torch.Tensor],
                 prepare: Callable[[], None] = lambda: None,
                 adamw: Optional[Callable[[], torch.optim.Optimizer]] = None):
        self.params, self.loss_fn, self.prepare = params, loss_fn, prepare
        self.adamw = adamw or (lambda: torch.optim.AdamW(self.params, lr=1e-5))

    def step(self, optimizer: torch.optim.Optimizer) -> float:
        self.prepare()
        loss = self.loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def optimizer(self, kind: str = "adamw") -> torch.optim.Optimizer:
        """AdamW as the implementation trains; plain SGD (no state) only to time variants whose AdamW state cannot
        fit."""
        return self.adamw() if kind == "adamw" else torch.optim.SGD(self.params, lr=1e-5)


def make_batch(size: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"jpg": torch.rand(1, size, size, 3, generator=g) * 2 - 1, "hint": torch.rand(1, size, size, 3, generator=g),
            "txt": [PROMPT]}


def ours_variants(model, batch: dict, names) -> Dict[str, Variant]:
    """Our ControlLDM's own training step, and the plain UNet fine-tune on the same weights."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from training.train import set_grad_checkpointing

    unet = model.model.diffusion_model

    def ours(locked: bool, checkpointing: bool) -> Variant:
        def prepare():
            model.sd_locked = locked  # re-applies requires_grad (another variant may have changed it)
            set_grad_checkpointing(model, checkpointing)
        def adamw():  # the optimizer our training takes (configure_optimizers), for this variant's parameters
            prepare()
            return model.configure_optimizers()

        prepare()
        return Variant([p for p in model.trainable_parameters()], lambda: model.shared_step(batch)[0], prepare,
                       adamw)

    def unet_finetune_loss() -> torch.Tensor:
        z, c = model.get_input(batch, model.first_stage_key)  # VAE and text encoder without graph, as in training
        t = torch.randint(0, model.num_timesteps, (z.shape[0],))
        noise = torch.randn_like(z)
        # UNetModel.forward, not ControlledUnetModel's: the plain UNet records its encoder's graph too.
        eps = UNetModel.forward(unet, model.q_sample(z, t, noise), t, context=c["c_crossattn"][0])
        return F.mse_loss(eps, noise)

    def unet_prepare():
        unet.requires_grad_(True)
        set_grad_checkpointing(model, True)

    makers = {"ours_locked": lambda: ours(True, True), "ours_locked_nockpt": lambda: ours(True, False),
              "ours_unlocked": lambda: ours(False, True),
              "unet_finetune": lambda: Variant(list(unet.parameters()), unet_finetune_loss, unet_prepare)}
    return {name: makers[name]() for name in names if name in makers}


def diffusers_variants(model, config_path: str, batch: dict, size: int, names) -> Dict[str, Variant]:
    """diffusers' ControlNet training step (examples/controlnet/train_controlnet.py) on converted weights."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel

    from bench.diffusers_twin import diffusers_twin

    state = model.state_dict()
    unet, controlnet = diffusers_twin(config_path, state, size // 8)
    original = yaml.safe_load(open(config_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, state, image_size=size)
    with torch.device("meta"):
        vae = AutoencoderKL(**vae_cfg)
    vae.load_state_dict(sfu.convert_ldm_vae_checkpoint(state, vae_cfg), strict=True, assign=True)
    tower = model.cond_stage_model.config
    text_cfg = CLIPTextConfig(vocab_size=tower.vocab_size, hidden_size=tower.width, num_hidden_layers=tower.layers,
                              num_attention_heads=tower.heads, intermediate_size=tower.mlp_ratio * tower.width,
                              max_position_embeddings=tower.context_length, hidden_act=tower.act,
                              layer_norm_eps=tower.eps)
    with torch.device("meta"):
        text_encoder = CLIPTextModel(text_cfg)
    # The converter keeps transformers 4's "text_model." prefix, which transformers 5 dropped.
    clip_sd = {k.removeprefix("text_model."): v for k, v in sfu.convert_ldm_clip_checkpoint(state).items()
               if not k.endswith("position_ids")}
    text_encoder.load_state_dict(clip_sd, strict=True, assign=True)
    text_encoder.embeddings.position_ids = torch.arange(tower.context_length)[None]  # a buffer left on meta
    for frozen in (unet, vae, text_encoder):
        frozen.requires_grad_(False)
    controlnet.train()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    pixel_values = batch["jpg"].permute(0, 3, 1, 2).contiguous()
    conditioning = batch["hint"].permute(0, 3, 1, 2).contiguous()
    input_ids = model.cond_stage_model.tokenize(batch["txt"])  # the script tokenizes in its data loader

    def loss_fn() -> torch.Tensor:
        latents = vae.encode(pixel_values).latent_dist.sample() * model.scale_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        context = text_encoder(input_ids, return_dict=False)[0]
        down, mid = controlnet(noisy, timesteps, encoder_hidden_states=context, controlnet_cond=conditioning,
                               return_dict=False)
        pred = unet(noisy, timesteps, encoder_hidden_states=context, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid, return_dict=False)[0]
        return F.mse_loss(pred.float(), noise.float())

    def checkpointing(enabled: bool) -> Callable[[], None]:
        def prepare():
            for module in (unet, controlnet):
                if enabled:
                    module.enable_gradient_checkpointing()
                else:
                    module.disable_gradient_checkpointing()
        return prepare

    params = list(controlnet.parameters())
    makers = {"diffusers": lambda: Variant(params, loss_fn, checkpointing(False)),
              "diffusers_ckpt": lambda: Variant(params, loss_fn, checkpointing(True))}
    return {name: makers[name]() for name in names if name in makers}


def build_variants(config_path: str, size: int, names) -> Dict[str, Variant]:
    from cldm.model import create_model

    torch.manual_seed(0)
    model = create_model(config_path)
    model.train()
    batch = make_batch(size)
    variants = ours_variants(model, batch, names)
    if any(name.startswith("diffusers") for name in names):
        variants.update(diffusers_variants(model, config_path, batch, size, names))
    return {name: variants[name] for name in names}


def time_interleaved(variants: Dict[str, Variant], warmup: int, repeats: int, optimizer_kind: str = "adamw",
                     keep_optimizers: bool = False) -> Dict[str, List[float]]:
    """Step times per variant, round by round. Each step gets a fresh optimizer (see the module docstring), or
    with ``keep_optimizers`` each variant keeps one for the whole run, as training does (state allocated in
    the warm-up rounds; needs the memory of every variant's optimizer state at once)."""
    times = {name: [] for name in variants}
    kept = {}
    for round_ in range(warmup + repeats):
        for name, variant in variants.items():
            if keep_optimizers:
                optimizer = kept.setdefault(name, variant.optimizer(optimizer_kind))
            else:
                optimizer = variant.optimizer(optimizer_kind)
            start = time.perf_counter()
            variant.step(optimizer)
            elapsed = time.perf_counter() - start
            del optimizer
            if round_ >= warmup:
                times[name].append(elapsed)
            print(f"  round {round_} {name}: {elapsed:.2f} s", file=sys.stderr, flush=True)
    return times


def estimated_gib(config_path: str) -> Dict[str, float]:
    """Weights + 3 x trainable (gradient and AdamW's two moments) in fp32, from a meta model; activations not
    counted. Used only to skip variants that cannot fit."""
    from cldm.model import create_model

    model = create_model(config_path, device="meta")
    weights = sum(p.numel() for p in model.parameters())
    control = sum(p.numel() for p in model.control_model.parameters())
    unet = model.model.diffusion_model
    decoder = sum(p.numel() for m in (unet.output_blocks, unet.out) for p in m.parameters())
    trainable = {"ours_locked": control, "ours_locked_nockpt": control, "ours_unlocked": control + decoder,
                 "unet_finetune": sum(p.numel() for p in unet.parameters()), "diffusers": control,
                 "diffusers_ckpt": control}
    return {name: 4 * (weights + 3 * n) / GIB for name, n in trainable.items()}


def run_capped(cmd: List[str], cap_gib: float) -> Optional[str]:
    """Run ``cmd``; kill it if its RSS passes ``cap_gib`` (other people's processes share this machine).
    Returns its stdout, or None when killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    killed = threading.Event()

    def watch():
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                if ps.memory_info().rss > cap_gib * GIB:
                    killed.set()
                    proc.kill()
            except psutil.NoSuchProcess:
                return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    out, _ = proc.communicate()
    if killed.is_set():
        return None
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return out


def peak_memory(args, name: str, cap_gib: float) -> Optional[float]:
    cmd = [sys.executable, "-m", "bench.bench_train", "--config", args.config, "--size", str(args.size),
           "--memory-of", name]
    out = run_capped(cmd, cap_gib)
    return None if out is None else json.loads(out.strip().splitlines()[-1])["max_rss_gib"]


def memory_child(args) -> None:
    """Internal: build one variant, run two steps with one optimizer, print the process's max RSS."""
    variant = build_variants(args.config, args.size, [args.memory_of])[args.memory_of]
    optimizer = variant.optimizer()
    for _ in range(2):
        variant.step(optimizer)
    print(json.dumps({"max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="models/cldm_v15.yaml")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-process peak memory runs")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                        help="of the timed steps; sgd keeps no state (times variants too big for AdamW here)")
    parser.add_argument("--keep-optimizers", action="store_true",
                        help="each variant keeps its optimizer across rounds, as training does (time without the "
                             "first step's state allocation; holds every variant's optimizer state at once)")
    parser.add_argument("--mem-cap-gb", type=float, default=None,
                        help="kill a child above this RSS (default: free memory now less 1.5 GiB)")
    parser.add_argument("--presets", action="store_true",
                        help="print the --memory-preset table instead, at --config and --size (bench/bench_presets.py)")
    parser.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.presets:
        from bench import bench_presets
        return bench_presets.main(["--config", args.config, "--size", str(args.size)])
    if args.memory_of:
        return memory_child(args)

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {VARIANTS}")
    cap = args.mem_cap_gb or psutil.virtual_memory().available / GIB - 1.5
    estimates = estimated_gib(args.config)
    skipped = {n: estimates[n] for n in names if estimates[n] > cap and args.optimizer == "adamw"}
    names = [n for n in names if n not in skipped]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.config}, {args.size}px, batch 1, "
          f"fp32, {args.optimizer}; memory cap {cap:.1f} GiB")
    for name, need in skipped.items():
        print(f"{name:19s} skipped: needs about {need:.1f} GiB (weights + gradient + AdamW state) > cap")

    memory = {} if args.no_memory else {name: peak_memory(args, name, cap) for name in names}
    times = time_interleaved(build_variants(args.config, args.size, names), args.warmup, args.repeats,
                             args.optimizer, args.keep_optimizers)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name in names:
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        mem = "" if args.no_memory else (f", peak RSS {memory[name]:.2f} GiB" if memory[name] is not None
                                         else f", peak RSS > {cap:.1f} GiB (killed)")
        print(f"{name:19s} median {medians[name]:.2f} s/step (runs: {runs}){mem}")
    for ours, theirs in (("ours_locked_nockpt", "diffusers"), ("ours_locked", "diffusers_ckpt"),
                         ("ours_locked", "diffusers")):
        if ours in medians and theirs in medians:
            print(f"{ours} / {theirs}: time {medians[ours] / medians[theirs]:.3f}")
    print(json.dumps({"median_s": medians, "peak_rss_gib": memory, "skipped_estimate_gib": skipped}))


if __name__ == "__main__":
    main()
