"""Train the tiny Fill50K ControlNet from nothing, on a CPU: data, VAE, text-to-image base, ControlNet.

    python -m training.tiny_recipe --out runs/tiny_fill50k

1. data:    ``python -m training.fill50k`` (the project's generator), 128 px.
2. vae:     the config's ``AutoencoderKL`` trained alone (L1 + MSE + a small KL), in cosine phases with warm
            restarts: first on 32 px crops that show an edge (it is convolutional, so crops make steps cheap),
            last on whole images. The whole-image phase matters: GroupNorm statistics of a whole image (mostly
            one flat colour) differ from those of an edge crop, and a VAE that only saw crops shifts the colours
            of large flat regions. Its latent std sets ``scale_factor``.
3. base:    a text-to-image ``LatentDiffusion`` (the ControlLDM config minus the ControlNet) on the targets
            and prompts, text tower trained too, 10% empty prompts so classifier-free guidance works; the
            saved weights are an EMA of the trained ones.
4. control: ``tool_add_control.py`` on the base, then ``tutorial_train.py`` with ``sd_locked=True`` on the
            outlines, in segments scored with ``training.eval_fill`` (the IoU curve). The same run from a copy
            whose zero-initialised layers are Gaussian-initialised is the paper's ablation.

Stages 2-4 stop at a step cap or a time budget (``--*-minutes``), whichever comes first: on a shared CPU a step
count alone cannot promise a finishing time. The defaults put the shipped model's ingredients into one run from
scratch (about 2 h 30 min on 2 cores); the shipped model's own invocations are in models/tiny_fill50k.md.
Every stage writes its outputs and a ``stage_<name>.json`` (wall time, settings, metrics) under ``--out``
and is skipped when that file exists, so an interrupted recipe resumes at the stage it was in.
The shippable files are ``OUT/tiny_fill50k.yaml`` and ``OUT/tiny_fill50k.safetensors`` (fp16).
"""
import argparse
import copy
import json
import logging
import math
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import yaml

from ldm.modules.ema import LitEma

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(ROOT, "models", "tiny_fill50k.yaml")
STAGES = ("data", "vae", "base", "control")
log = logging.getLogger("tiny_recipe")


# ---------------------------------------------------------------------------------------------- helpers
def _done_path(out: str, stage: str) -> str:
    return os.path.join(out, f"stage_{stage}.json")


def _finish(out: str, stage: str, t0: float, **info) -> Dict:
    info = {"stage": stage, "wall_s": round(time.time() - t0, 1), **info}
    with open(_done_path(out, stage), "w") as f:
        json.dump(info, f, indent=1)
    log.info("stage %s done in %.1f min", stage, info["wall_s"] / 60)
    return info


def _read_config(path: str) -> Dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _write_config(config: Dict, path: str, header: str) -> None:
    with open(path, "w") as f:
        f.write(header)
        yaml.safe_dump(config, f, sort_keys=False, default_flow_style=None)


def base_config(control_config: Dict) -> Dict:
    """The plain text-to-image LatentDiffusion of a ControlLDM config, text tower trainable."""
    config = copy.deepcopy(control_config)
    params = config["model"]["params"]
    config["model"]["target"] = "ldm.models.diffusion.ddpm.LatentDiffusion"
    for key in ("control_stage_config", "control_key", "only_mid_control"):
        params.pop(key, None)
    params["unet_config"]["target"] = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
    params["cond_stage_trainable"] = True
    params["cond_stage_config"]["params"]["freeze"] = False
    return config


def build(config: Dict):
    from ldm.util import instantiate_from_config
    return instantiate_from_config(config["model"])


def load_targets(root: str, limit: Optional[int] = None):
    """Target images (N, H, W, 3) uint8 RGB and prompts from a Fill50K folder."""
    with open(os.path.join(root, "prompt.json")) as f:
        entries = [json.loads(line) for line in f]
    entries = entries[:limit] if limit else entries
    images = np.stack([cv2.cvtColor(cv2.imread(os.path.join(root, e["target"])), cv2.COLOR_BGR2RGB) for e in entries])
    return images, [e["prompt"] for e in entries]


def two_colour_crops(images: np.ndarray, n: int, crop: int, rng) -> np.ndarray:
    """``n`` random ``crop``-px crops that show both colours (an edge): a flat crop teaches the VAE nothing
    about edges, and full images always show both colours."""
    size, out = images.shape[1], []
    while len(out) < n:
        image = images[rng.integers(len(images))]
        y0, x0 = rng.integers(0, size - crop + 1, 2)
        patch = image[y0:y0 + crop, x0:x0 + crop].reshape(-1, 3)
        if crop == size or int(patch.max(0).astype(int).sum() - patch.min(0).astype(int).sum()) > 48:
            out.append(image[y0:y0 + crop, x0:x0 + crop])
    return np.stack(out)


def to_model_images(batch_uint8: np.ndarray) -> torch.Tensor:
    """(b, H, W, 3) uint8 -> (b, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(batch_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class Budget:
    """Training length as ``steps`` and optionally ``minutes`` (whichever ends first): on a CPU shared with other
    jobs a step count alone cannot promise a finishing time. ``progress`` drives the learning-rate schedule."""

    def __init__(self, steps: int, minutes: Optional[float] = None):
        self.steps, self.seconds, self.t0 = steps, (minutes or 0) * 60, time.time()

    def progress(self, step: int) -> float:
        by_time = (time.time() - self.t0) / self.seconds if self.seconds else 0.0
        return min(1.0, max(step / self.steps, by_time))

    def done(self, step: int) -> bool:
        return step >= self.steps or (self.seconds and time.time() - self.t0 >= self.seconds)


def lr_at(step: int, progress: float, peak: float, warmup: int = 50, floor: float = 0.05) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor * peak`` as progress goes 0 -> 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _set_lr(opt, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def half_state_dict(model) -> Dict[str, torch.Tensor]:
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}


def _save(sd: Dict[str, torch.Tensor], path: str) -> None:
    from cldm.model import save_state_dict
    if os.path.exists(path):
        os.remove(path)
    save_state_dict(sd, path)


# ---------------------------------------------------------------------------------------------- stage 1
def stage_data(args) -> Dict:
    t0 = time.time()
    cmd = [sys.executable, "-m", "training.fill50k", "--out", args.data, "--count", str(args.count),
           "--size", str(args.size), "--seed", "0", "--workers", str(args.threads)]
    log.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT)
    return _finish(args.out, "data", t0, count=args.count, size=args.size, root=args.data)


# ---------------------------------------------------------------------------------------------- stage 2
def stage_vae(args) -> Dict:
    t0 = time.time()
    template = _read_config(args.template)
    torch.manual_seed(0)
    vae = build({"model": template["model"]["params"]["first_stage_config"]})
    vae.train().requires_grad_(True)
    if args.vae_init:  # continue an earlier VAE run (a second phase with its own schedule)
        from cldm.model import load_state_dict
        vae.load_state_dict(load_state_dict(args.vae_init))
    else:
        with torch.no_grad():  # start with a near-deterministic posterior (std e^-5): the decoder learns at once
            vae.quant_conv.bias[vae.embed_dim:] = -10.0
    images, _ = load_targets(args.data)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr[0], weight_decay=0.0)
    rng = np.random.default_rng(0)
    history, total = [], 0
    # One or more cosine phases (warm restarts), each of --vae-minutes[i] at peak --vae-lr[i].
    phases = _per_phase(args.vae_minutes, args.vae_lr, args.vae_crop, args.vae_batch)
    for minutes, peak, crop, batch in phases:
        total += _vae_phase(args, vae, opt, images, rng, crop, batch, minutes, peak, history, t0, total)
    vae.eval()

    # Full-size reconstruction error and latent statistics on held-back images.
    with torch.no_grad():
        x = to_model_images(images[-256:])
        posterior = vae.encode(x)
        z = posterior.mode()
        rec = vae.decode(z)
        psnr = float(-10 * torch.log10(((rec.clamp(-1, 1) - x) ** 2).mean() / 4))
        scale_factor = float(1.0 / z.std())
    _save({k: v.contiguous() for k, v in vae.state_dict().items()}, os.path.join(args.out, "vae.safetensors"))
    # The configs of the later stages carry the measured scale factor.
    control = copy.deepcopy(template)
    control["model"]["params"]["scale_factor"] = round(scale_factor, 5)
    control["model"]["params"]["image_size"] = args.size // 8  # latent side: the VAE downsamples by 8
    control["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["resolution"] = args.size
    header = "".join(l for l in open(args.template) if l.startswith("#"))
    _write_config(control, os.path.join(args.out, "tiny_fill50k.yaml"), header)
    _write_config(base_config(control), os.path.join(args.out, "tiny_fill50k_base.yaml"),
                  "# Stage-3 text-to-image base of tiny_fill50k.yaml (written by training/tiny_recipe.py).\n")
    log.info("vae: PSNR %.2f dB on 256 images, scale_factor %.4f", psnr, scale_factor)
    return _finish(args.out, "vae", t0, init=args.vae_init, steps=total, phases=phases,
                   kl_weight=args.vae_kl, psnr_db=round(psnr, 2), scale_factor=scale_factor, history=history)


def _per_phase(minutes: List[float], *settings: List) -> List[tuple]:
    """(minutes, lr, crop, batch) of each VAE phase; a setting given once holds for every phase."""
    for values in settings:
        if len(values) not in (1, len(minutes)):
            raise SystemExit(f"VAE phase settings need 1 or {len(minutes)} values, got {values}")
    return [(m, *(v[i] if len(v) > 1 else v[0] for v in settings)) for i, m in enumerate(minutes)]


def _vae_phase(args, vae, opt, images, rng, crop, batch, minutes, peak, history, t0, offset) -> int:
    """One cosine phase of VAE training; returns its step count."""
    budget, step = Budget(args.vae_steps, minutes), 0
    while not budget.done(step):
        _set_lr(opt, lr_at(step, budget.progress(step), peak))
        x = to_model_images(two_colour_crops(images, batch, crop, rng))
        rec, posterior = vae(x)
        rec_loss = (rec - x).abs().mean() + F.mse_loss(rec, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec_loss + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.log_every == 0:
            history.append({"step": offset + step, "rec": round(rec_loss.item(), 5), "kl": round(kl.item(), 4)})
            log.info("vae %d rec %.4f kl %.3f (%.0fs)", offset + step, rec_loss.item(), kl.item(), time.time() - t0)
        step += 1
    return step


# ---------------------------------------------------------------------------------------------- stage 3
@torch.no_grad()
def encode_all(vae, images: np.ndarray, batch: int = 256):
    means, stds = [], []
    for lo in range(0, len(images), batch):
        posterior = vae.encode(to_model_images(images[lo:lo + batch]))
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def stage_base(args) -> Dict:
    from cldm.model import load_state_dict
    t0 = time.time()
    config = _read_config(os.path.join(args.out, "tiny_fill50k_base.yaml"))
    torch.manual_seed(0)
    model = build(config)
    if args.base_init:  # continue an earlier base (e.g. an eps-prediction one, now trained for v)
        model.load_state_dict(load_state_dict(args.base_init))
    model.first_stage_model.load_state_dict(load_state_dict(os.path.join(args.out, "vae.safetensors")))
    images, prompts = load_targets(args.data, args.base_count)  # 50,000 at 128 px: ~6 min to encode
    t_enc = time.time()
    mean, std = encode_all(model.first_stage_model, images)
    log.info("encoded %d targets in %.0fs", len(images), time.time() - t_enc)
    model.train()
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=args.base_lr, weight_decay=0.0)
    ema = LitEma(model, decay=args.ema)  # the trainable parameters' average (upstream's LitEma)
    rng = np.random.default_rng(1)
    history = []
    budget, step = Budget(args.base_steps, args.base_minutes), 0
    while not budget.done(step):
        _set_lr(opt, lr_at(step, budget.progress(step), args.base_lr))
        idx = torch.from_numpy(rng.integers(0, len(images), args.base_batch))
        z = model.scale_factor * (mean[idx] + std[idx] * torch.randn_like(mean[idx]))
        text = ["" if rng.random() < args.prompt_dropout else prompts[i] for i in idx.tolist()]
        loss, _ = model(z, text)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema(model)
        if step % args.log_every == 0:
            history.append({"step": step, "loss": round(loss.item(), 5)})
            log.info("base %d/%d loss %.4f (%.0fs)", step, args.base_steps, loss.item(), time.time() - t0)
        step += 1
    ema.copy_to(model)
    model.eval()
    _save({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(args.out, "base.safetensors"))
    return _finish(args.out, "base", t0, init=args.base_init, steps=step, batch=args.base_batch, lr=args.base_lr,
                   ema=args.ema, prompt_dropout=args.prompt_dropout, history=history)


# ---------------------------------------------------------------------------------------------- stage 4
def gaussian_init(sd: Dict[str, torch.Tensor], seed: int = 0) -> List[str]:
    """The paper's ablation: every zero-initialised ControlNet layer (13 zero convs and the hint block's
    last conv) gets Gaussian weights instead, std = 1/sqrt(fan_in) (variance-preserving), zero bias."""
    g = torch.Generator().manual_seed(seed)
    changed = []
    for key, value in sd.items():
        if key.startswith("control_model.") and key.endswith(".weight") and value.ndim == 4 and not value.any():
            fan_in = value.shape[1] * value.shape[2] * value.shape[3]
            sd[key] = (torch.randn(value.shape, generator=g) / math.sqrt(fan_in)).to(value.dtype)
            changed.append(key)
    return changed


def _score(args, model, curve: List[Dict], tag: str, step: int, t0: float) -> Dict:
    """Score ``model`` on ``curve_n`` held-out hints; append the point to ``curve``."""
    from training.eval_fill import evaluate
    m = evaluate(model, n=args.curve_n, steps=args.eval_steps, cfg=args.cfg, size=args.size)
    point = {"run": tag, "step": step, "batch": args.control_batch, "wall_s": round(time.time() - t0, 1), **m}
    curve.append(point)
    log.info("[%s] step %d IoU %.3f colour %.3f (%.0fs)", tag, step, m["iou"], m["color_acc"], time.time() - t0)
    return point


def run_tutorial_train(args, config: str, init: str, run_dir: str, steps: int, curve: List[Dict], tag: str,
                       deadline: float) -> str:
    """``tutorial_train.py`` in segments of ``eval_every`` steps, each continuing the previous one with
    ``--resume-training`` (weights, optimizer state, step), so that every segment's checkpoint is scored before
    the trainer replaces it (it keeps only the newest). Stops early, after a segment, past ``deadline``."""
    from training.eval_fill import load_model
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    t0, step = time.time(), 0
    _score(args, load_model(config, init), curve, tag, 0, t0)
    while step < steps and time.time() < deadline:
        step = min(steps, step + args.eval_every)
        cmd = [sys.executable, "tutorial_train.py", "--config", config, "--resume", init,
               "--batch-size", str(args.control_batch), "--lr", str(args.control_lr), "--max-steps", str(step),
               "--precision", "32", "--data-root", args.data, "--output-dir", run_dir, "--log-every", "0",
               "--loss-every", "25", "--ckpt-every", str(args.eval_every)] + args.train_extra
        if os.path.lexists(last):
            cmd.append("--resume-training")
        log.info("$ python %s", " ".join(cmd[1:]))
        os.makedirs(run_dir, exist_ok=True)
        with open(run_dir + ".log", "a") as out:
            subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _score(args, load_model(config, os.path.realpath(last)), curve, tag, step, t0)
    return os.path.realpath(last)


def stage_control(args) -> Dict:
    from cldm.model import create_model, load_checkpoint, load_state_dict
    from training.eval_fill import evaluate, step0_check
    t0 = time.time()
    config = os.path.join(args.out, "tiny_fill50k.yaml")
    init = os.path.join(args.out, "control_ini.safetensors")
    if not os.path.exists(init):
        subprocess.run([sys.executable, "tool_add_control.py", os.path.join(args.out, "base.safetensors"), init,
                        "--config", config], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    init_gauss = os.path.join(args.out, "control_ini_gauss.safetensors")
    if not os.path.exists(init_gauss):
        sd = load_state_dict(init)
        changed = gaussian_init(sd)
        log.info("Gaussian ablation: %d zero-initialised convs re-initialised", len(changed))
        _save(sd, init_gauss)

    model = create_model(config)
    load_checkpoint(model, init)
    step0 = step0_check(model, size=args.size)
    log.info("step-0 check (zero convs): %s", step0)
    curve: List[Dict] = []
    times = {}
    runs = [("zero", init, args.control_steps)]
    if args.ablation_steps > 0:
        runs.append(("gaussian", init_gauss, args.ablation_steps))
    final_path = None
    for tag, start, steps in runs:
        t_run = time.time()
        minutes = args.control_minutes if tag == "zero" else args.ablation_minutes
        deadline = t_run + 60 * minutes if minutes else float("inf")
        run_dir = os.path.join(args.out, f"control_{tag}")
        last = run_tutorial_train(args, config, start, run_dir, steps, curve, tag, deadline)
        times[tag + "_s"] = round(time.time() - t_run, 1)
        with open(os.path.join(args.out, "curve.json"), "w") as f:
            json.dump(curve, f, indent=1)
        if tag == "zero":
            final_path = last
    # The shipped model: the zero-conv run's last weights, fp16.
    model = create_model(config)
    load_checkpoint(model, final_path)
    model = model.half().float()  # score what is shipped
    final = {f"cfg_{c:g}": evaluate(model, n=args.final_n, steps=args.eval_steps, cfg=c, size=args.size)
             for c in args.final_cfgs}
    log.info("final: %s", final)
    _save(half_state_dict(model), os.path.join(args.out, "tiny_fill50k.safetensors"))
    plot_curve(os.path.join(args.out, "curve.json"), os.path.join(args.out, "iou_curve.png"), args.cfg)
    return _finish(args.out, "control", t0, trainer="tutorial_train.py",
                   steps=args.control_steps, ablation_steps=args.ablation_steps, batch=args.control_batch,
                   lr=args.control_lr, eval_every=args.eval_every, curve_n=args.curve_n, cfg=args.cfg,
                   eval_steps=args.eval_steps, step0=step0, final=final, times=times, final_from=final_path)


# ---------------------------------------------------------------------------------------------- plots
def plot_curve(curve_path: str, png: str, curve_cfg: float = 2.0) -> None:
    """IoU (and colour accuracy) of held-out samples vs ControlNet training step, zero vs Gaussian init."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(curve_path) as f:
        curve = json.load(f)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    styles = {"zero": ("tab:blue", "zero convolutions (ControlNet)"),
              "gaussian": ("tab:red", "Gaussian-initialised convolutions (ablation)")}
    for tag, (color, label) in styles.items():
        points = sorted((p["step"], p["iou"], p["color_acc"]) for p in curve if p["run"] == tag)
        if not points:
            continue
        steps, iou, acc = zip(*points)
        ax.plot(steps, iou, "o-", color=color, label=f"IoU, {label}")
        ax.plot(steps, acc, "x--", color=color, alpha=0.5, label=f"colour accuracy, {tag}")
    ax.set_xlabel("ControlNet training step (batch %d)" % curve[0].get("batch", 0) if curve and "batch" in curve[0]
                  else "ControlNet training step")
    ax.set_ylabel("held-out score")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", framealpha=0.9)
    n, cfg = curve[0].get("n", "?"), curve_cfg
    ax.set_title("Tiny Fill50K ControlNet: IoU of the generated circle vs the outline's disc\n"
                 f"({n} held-out hints per point, guidance {cfg:g}, DDIM 20)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/tiny_fill50k", help="working folder (default: %(default)s)")
    p.add_argument("--template", default=TEMPLATE, help="ControlLDM config to train (default: models/tiny_fill50k.yaml)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 is several times faster than 2 when other jobs share the CPU")
    p.add_argument("--count", type=int, default=50000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--vae-steps", type=int, default=20000, help="step cap per VAE phase")
    p.add_argument("--vae-minutes", type=float, nargs="+", default=[15, 20, 12],
                   help="length of each VAE phase (cosine schedule with warm restarts)")
    p.add_argument("--vae-lr", type=float, nargs="+", default=[3e-3, 1.5e-3, 1e-3], help="peak lr of each VAE phase")
    p.add_argument("--vae-crop", type=int, nargs="+", default=[32, 32, 128],
                   help="crop side of each VAE phase; the image size means whole images")
    p.add_argument("--vae-batch", type=int, nargs="+", default=[16, 24, 8], help="batch of each VAE phase")
    p.add_argument("--vae-init", default=None, help="start the VAE from these weights (continue an earlier run)")
    p.add_argument("--vae-kl", type=float, default=1e-5, help="KL weight per latent element vs per-pixel losses")
    p.add_argument("--base-steps", type=int, default=100000, help="step cap (the time budget ends it first)")
    p.add_argument("--base-batch", type=int, default=32)
    p.add_argument("--base-count", type=int, default=50000, help="targets encoded for the base stage")
    p.add_argument("--base-lr", type=float, default=1e-3)
    p.add_argument("--base-init", default=None, help="start the base from these weights (continue an earlier run)")
    p.add_argument("--base-minutes", type=float, default=45, help="stop the base stage after this long")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--prompt-dropout", type=float, default=0.1)
    p.add_argument("--control-steps", type=int, default=100000, help="step cap (the time budget ends it first)")
    p.add_argument("--ablation-steps", type=int, default=3000, help="Gaussian-init run length; 0 skips it")
    p.add_argument("--control-minutes", type=float, default=35, help="stop the zero-conv run after this long")
    p.add_argument("--ablation-minutes", type=float, default=8, help="stop the Gaussian run after this long")
    p.add_argument("--control-batch", type=int, default=16)
    p.add_argument("--control-lr", type=float, default=3e-4)
    p.add_argument("--eval-every", type=int, default=300, help="checkpoint/IoU-curve interval (steps)")
    p.add_argument("--curve-n", type=int, default=24, help="held-out hints per curve point")
    p.add_argument("--eval-steps", type=int, default=20, help="DDIM steps when scoring")
    p.add_argument("--cfg", type=float, default=2.0, help="guidance scale of the IoU curve")
    p.add_argument("--final-n", type=int, default=100, help="held-out hints for the final scores")
    p.add_argument("--final-cfgs", type=float, nargs="+", default=[1.5, 2.0, 3.0, 5.0])
    p.add_argument("--train-extra", nargs=argparse.REMAINDER, default=[], help="more tutorial_train.py flags")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    args.out = os.path.abspath(args.out)
    args.data = os.path.join(args.out, "fill50k")
    stage_fns = {"data": stage_data, "vae": stage_vae, "base": stage_base,
                 "control": stage_control}
    for stage in STAGES:
        if stage not in args.stages:
            continue
        if os.path.exists(_done_path(args.out, stage)):
            log.info("stage %s already done (%s), skipped", stage, _done_path(args.out, stage))
            continue
        log.info("stage %s ...", stage)
        stage_fns[stage](args)
    summary = {s: json.load(open(_done_path(args.out, s))).get("wall_s") for s in STAGES if os.path.exists(_done_path(args.out, s))}
    log.info("wall time per stage (s): %s", summary)


if __name__ == "__main__":
    main()
