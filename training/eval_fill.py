"""Score a Fill50K ControlNet: does the sample fill the outline's circle, in the prompt's colours?

Held-out hints are Fill50K samples drawn with ``HELDOUT_SEED`` (the recipe trains on seed 0), so their
circles and colour pairs are fresh draws of the same distribution, and their true parameters are known
(``training.fill50k.sample_circle``). Each sample starts from its own fixed noise (``seed + i``), so a
score does not depend on the batch size.

Metrics, per sample, then averaged:

* IoU: predicted circle = pixels nearer (RGB) to the prompt's circle colour than to its background colour;
  true circle = the outline's disc, as the generator fills it in the target (so the true target scores 1).
* Colour accuracy: the median colour of the true disc (and of the background), each shrunk by 2 px away from
  the edge, is named by its nearest CSS colour. "fair": correct when that name's colour is within
  ``MIN_COLOR_DISTANCE`` (64, RGB) of the named one, the distance below which the generator treats two
  colours as one and never pairs them (snow vs white is 7); "strict": the nearest CSS colour has exactly the
  named RGB (aqua = cyan). ``color_acc`` is the fair one, averaged over circle and background.

    python -m training.eval_fill --config models/tiny_fill50k.yaml --ckpt models/tiny_fill50k.safetensors
"""
import argparse
import json
import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch

from ldm.accel.dtypes import DTYPE_CHOICES

from training.fill50k import COLORS, MIN_COLOR_DISTANCE, Circle, make_sample, render

HELDOUT_SEED = 1000
DEFAULT_STEPS = 20
DEFAULT_CFG = 2.0  # best of 1.5 / 2 / 3 / 5 / 9 for the shipped tiny model (models/tiny_fill50k.md)
_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[n] for n in _NAMES], dtype=np.float32)  # (K, 3)


@dataclass
class HeldOut:
    hints: torch.Tensor  # (n, 3, H, W) float in [0, 1]
    prompts: List[str]
    circles: List[Circle]
    seeds: List[int]


def heldout(n: int = 100, size: int = 64, seed: int = HELDOUT_SEED) -> HeldOut:
    """The first ``n`` samples of Fill50K drawn with ``seed``; sample i gets noise seed ``seed + i``."""
    hints, prompts, circles = [], [], []
    for i in range(n):
        source, _, prompt, circle = make_sample(i, size, seed)
        hints.append(torch.from_numpy(source).permute(2, 0, 1).float() / 255.0)
        prompts.append(prompt)
        circles.append(circle)
    return HeldOut(torch.stack(hints), prompts, circles, [seed + i for i in range(n)])


def disc_mask(circle: Circle, size: int) -> np.ndarray:
    """(size, size) bool: the filled circle exactly as the generator draws it in the target, i.e. the target's
    pixels nearer the circle colour than the background colour. (cv2's anti-aliased fill reaches about half a
    pixel past ``radius``: a plain ``radius`` disc would score the true target itself at IoU 0.92.)"""
    _, target = render(circle, size)
    return nearer_circle_colour(target, circle)


def nearer_circle_colour(image: np.ndarray, circle: Circle) -> np.ndarray:
    """(H, W) bool: pixels of an RGB image nearer the circle's colour than its background colour."""
    fg, bg = (np.array(COLORS[name], np.float32) for name in (circle.color, circle.background))
    px = image.astype(np.float32)
    return ((px - fg) ** 2).sum(-1) < ((px - bg) ** 2).sum(-1)


def nearest_color(rgb: np.ndarray) -> str:
    return _NAMES[int(np.argmin(((_PALETTE - rgb[None].astype(np.float32)) ** 2).sum(1)))]


def _region_color(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    region = inner if inner.sum() >= 4 else mask
    if region.sum() == 0:
        region = np.ones_like(mask)
    return np.median(image[region].reshape(-1, 3), axis=0)


def score(image: np.ndarray, circle: Circle) -> Dict[str, float]:
    """Scores of one generated (H, W, 3) uint8 RGB image against the circle its hint shows."""
    size = image.shape[0]
    pred = nearer_circle_colour(image, circle)
    truth = disc_mask(circle, size)
    union = (pred | truth).sum()
    out = {"iou": float((pred & truth).sum() / union) if union else 1.0}
    for key, mask, name in (("circle", truth, circle.color), ("background", ~truth, circle.background)):
        measured = _region_color(image, mask)
        guess = nearest_color(measured)
        out[f"{key}_fair"] = float(math.dist(COLORS[guess], COLORS[name]) < MIN_COLOR_DISTANCE)
        out[f"{key}_strict"] = float(COLORS[guess] == COLORS[name])
    return out


def summarize(scores: Sequence[Dict[str, float]]) -> Dict[str, float]:
    mean = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    mean["color_acc"] = (mean["circle_fair"] + mean["background_fair"]) / 2
    mean["color_acc_strict"] = (mean["circle_strict"] + mean["background_strict"]) / 2
    mean["iou_ge_0.9"] = float(np.mean([s["iou"] >= 0.9 for s in scores]))
    mean["n"] = len(scores)
    return mean


def initial_noise(model, seeds: Sequence[int], latent_shape: Sequence[int]) -> torch.Tensor:
    """One fixed noise tensor per seed, independent of the batch it is sampled in."""
    return torch.stack([torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(s))
                        for s in seeds]).to(model.device)


@torch.no_grad()
def generate(model, hints: Optional[torch.Tensor], prompts: Sequence[str], seeds: Sequence[int],
             steps: int = DEFAULT_STEPS, cfg: float = DEFAULT_CFG, batch_size: int = 50,
             size: Optional[int] = None, use_control: bool = True) -> np.ndarray:
    """Samples as (n, H, W, 3) uint8 RGB. ``hints`` (n, 3, H, W) in [0, 1]; ``use_control=False`` samples
    without any ControlNet residuals (the base model alone; ``hints`` may then be None)."""
    from ldm.models.diffusion.ddim import DDIMSampler

    size = size or hints.shape[-1]
    shape = (4, size // 8, size // 8)
    sampler = DDIMSampler(model)
    out = []
    for lo in range(0, len(prompts), batch_size):
        p = list(prompts[lo:lo + batch_size])
        b = len(p)
        x_T = initial_noise(model, seeds[lo:lo + b], shape)
        c, u = model.get_learned_conditioning(p), model.get_unconditional_conditioning(b)
        cond, uncond = {"c_crossattn": [c]}, {"c_crossattn": [u]}
        if use_control:
            hint = hints[lo:lo + b].to(model.device)
            cond["c_concat"] = uncond["c_concat"] = [hint]
        z, _ = sampler.sample(steps, b, shape, cond, x_T=x_T, verbose=False, unconditional_guidance_scale=cfg,
                              unconditional_conditioning=uncond)
        x = model.decode_first_stage(z)
        out.append(((x.float() + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def native_size(model) -> int:
    """Image side the model was trained at: its latent side times the VAE's factor 8."""
    return model.image_size * 8


def evaluate(model, n: int = 100, steps: int = DEFAULT_STEPS, cfg: float = DEFAULT_CFG, size: Optional[int] = None,
             seed: int = HELDOUT_SEED, batch_size: int = 50, return_images: bool = False):
    """Mean scores over the first ``n`` held-out hints (see the module docstring), at ``size`` px (default: the
    model's own)."""
    data = heldout(n, size or native_size(model), seed)
    was_training = model.training
    model.eval()
    images = generate(model, data.hints, data.prompts, data.seeds, steps, cfg, batch_size)
    model.train(was_training)
    result = summarize([score(img, c) for img, c in zip(images, data.circles)])
    return (result, images, data) if return_images else result


@torch.no_grad()
def step0_check(model, n: int = 8, steps: int = 10, cfg: float = DEFAULT_CFG,
                size: Optional[int] = None) -> Dict[str, bool]:
    """With the zero convolutions still zero, the hint must not change the sample at all: compare samples
    (same noise, same prompts) with the held-out hints, with blank hints, and with no ControlNet at all."""
    size = size or native_size(model)
    data = heldout(n, size)
    model.eval()
    with_hint = generate(model, data.hints, data.prompts, data.seeds, steps, cfg)
    blank = generate(model, torch.zeros_like(data.hints), data.prompts, data.seeds, steps, cfg)
    base = generate(model, None, data.prompts, data.seeds, steps, cfg, size=size, use_control=False)
    return {"hint_vs_blank_identical": bool(np.array_equal(with_hint, blank)),
            "hint_vs_no_controlnet_identical": bool(np.array_equal(with_hint, base))}


def save_grid(path: str, data: HeldOut, images: np.ndarray, count: int = 8, scale: int = 2) -> None:
    """Rows: hint, sample; the prompt under each column pair. PNG via PIL."""
    from PIL import Image, ImageDraw

    count = min(count, len(images))
    size = images.shape[1] * scale
    label_h = 28
    cell_w = size + 8
    grid = Image.new("RGB", (cell_w * count + 8, 2 * size + label_h + 24), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((4, 2), "top: hint (outline)   bottom: sample   below: prompt", fill="black")
    for i in range(count):
        hint = (data.hints[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        x0 = 8 + i * cell_w
        for row, img in enumerate((hint, images[i])):
            tile = Image.fromarray(img).resize((size, size), Image.NEAREST)
            grid.paste(tile, (x0, 16 + row * size))
        words = data.prompts[i].replace(" background", "").split(" circle with ")
        draw.text((x0, 18 + 2 * size), words[0][:22], fill="black")
        draw.text((x0, 18 + 2 * size + 12), "on " + words[1][:19], fill="black")
    grid.save(path)


def load_model(config: str, ckpt: str, device: str = "cpu", dtype="fp32"):
    """The model for inference as the apps run it (``ldm.accel.prepare_for_inference``), in ``dtype``."""
    from cldm.model import create_model, load_checkpoint
    from ldm.accel import prepare_for_inference

    model = create_model(config)
    load_checkpoint(model, ckpt)
    return prepare_for_inference(model, device, dtype)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="models/tiny_fill50k.yaml")
    parser.add_argument("--ckpt", default="models/tiny_fill50k.safetensors")
    parser.add_argument("--n", type=int, default=100, help="held-out hints (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DDIM steps (default: %(default)s)")
    parser.add_argument("--cfg", type=float, nargs="+", default=[DEFAULT_CFG],
                        help="classifier-free guidance scale(s) (default: %(default)s)")
    parser.add_argument("--size", type=int, default=None,
                        help="hint size in px, a multiple of 64 (default: the model's training size)")
    parser.add_argument("--step0", action="store_true", help="also run the zero-conv bit-identity check")
    parser.add_argument("--grid", help="write a hint / prompt / sample grid PNG here")
    parser.add_argument("--json", help="write the metrics here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="fp32",
                        help="inference precision (auto: bf16 on CPUs with AMX and on GPUs; default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.config, args.ckpt, args.device, args.dtype)
    results = {}
    for cfg in args.cfg:
        t0 = time.time()
        metrics, images, data = evaluate(model, args.n, args.steps, cfg, args.size, return_images=True)
        metrics["seconds"] = round(time.time() - t0, 1)
        results[f"cfg_{cfg:g}"] = metrics
        print(f"cfg {cfg:g}: IoU {metrics['iou']:.3f}  colour acc {metrics['color_acc']:.3f} "
              f"(strict {metrics['color_acc_strict']:.3f})  IoU>=0.9 {metrics['iou_ge_0.9']:.2f}  "
              f"n={metrics['n']}  {metrics['seconds']}s")
        if args.grid:
            save_grid(args.grid, data, images)
    if args.step0:
        results["step0"] = step0_check(model)
        print("step-0 check:", results["step0"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
