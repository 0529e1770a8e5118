"""``python -m cldm.evaluate``: the controllability benchmark of ControlNet++ (Li et al., 2024).

Real images -> the condition extracted with the project's annotator -> an image generated from it (and the
image's prompt) -> the same condition extracted from the generated image -> an agreement score (see
``cldm.eval_conditions``: Canny F1, HED / soft-edge / lineart SSIM, depth RMSE, segmentation mIoU, pose
keypoints within a distance; ``fill50k`` for the bundled tiny model, on Fill50K samples drawn on the fly).

Inputs (as ``python -m cldm.generate`` reads them, but of real images): a folder of images with the prompt
in ``<stem>.txt`` (else ``--prompt``), or a CSV / JSON-lines file of ``image``, ``prompt`` (optionally
``seed``) rows. Each image is cropped and resized to the output size before annotation. Sample i is
generated with seed ``--seed`` + i (or its row's own), so a run repeats exactly.

Writes into ``--out``: ``results.json`` (summary, settings and per-sample scores), ``results.md`` (one table
per model and condition; runs of other models / conditions already in the folder are kept) and
``grid_<model>_<condition>.png`` (rows: condition, sample, re-extracted condition).

    python -m cldm.evaluate --condition fill50k --limit 50 --out eval/tiny
    python -m cldm.evaluate --condition canny --images photos/ --ckpt models/control_v11p_sd15_canny.pth \\
        --base models/v1-5-pruned.ckpt --config models/control_v11p_sd15_canny.yaml --out eval/canny
"""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from cldm.eval_conditions import CONDITIONS, Condition
from ldm.models.diffusion.samplers import SAMPLERS

DEFAULT_FILL50K_SAMPLES = 100  # training.eval_fill's held-out count
GRID_COLUMNS = 8
GRID_TILE = 128  # px per grid cell


@dataclass
class Sample:
    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB at the output size
    prompt: str
    seed: int
    meta: Any = None  # fill50k: its Circle


@dataclass
class Run:
    model: str
    condition: str
    summary: Dict[str, float]
    settings: Dict[str, Any]
    samples: List[Dict[str, Any]] = field(default_factory=list)
    grid: Optional[str] = None


# ------------------------------------------------------------------------------------------------- inputs
def fill50k_samples(count: int, size: int, seed: int) -> List[Sample]:
    """Held-out Fill50K samples (``training.eval_fill.HELDOUT_SEED``), generated on the fly at ``size`` px."""
    from training.eval_fill import HELDOUT_SEED
    from training.fill50k import make_sample

    out = []
    for i in range(count):
        _, target, prompt, circle = make_sample(i, size, HELDOUT_SEED)
        out.append(Sample(f"fill50k_{i}", target, prompt, seed + i, circle))
    return out


def image_samples(source: Path, prompt: Optional[str], limit: Optional[int], width: int, height: int,
                  seed: int) -> List[Sample]:
    """Rows of a folder / CSV / JSONL (``cldm.generate_cli`` reads them), images fitted to width x height."""
    from cldm.generate import fit_image, load_rgb
    from cldm.generate_cli import load_rows

    rows = load_rows(source, prompt)[:limit]
    return [Sample(row.name, fit_image(load_rgb(str(row.image)), width, height, "crop_and_resize"), row.prompt,
                   row.seed if row.seed is not None else seed + i) for i, row in enumerate(rows)]


# --------------------------------------------------------------------------------------------- the run
def evaluate(model, condition: Condition, samples: Sequence[Sample], annotators, *, steps: int = 20,
             sampler: str = "ddim", guidance_scale: float = 9.0, negative_prompt: str = "",
             progress: bool = True, keep: int = GRID_COLUMNS):
    """Score ``model`` on ``samples`` -> (summary, per-sample records, [(condition, sample, re-extracted)] of
    the first ``keep`` samples, for the grid)."""
    from cldm.generate import generate

    first = condition.reference(annotators, samples[0].image, samples[0].meta) if samples else None  # fails early
    records, triples = [], []
    for i, sample in enumerate(tqdm(samples, desc=f"evaluate {condition.name}", unit="img", disable=not progress)):
        control, reference = first if i == 0 else condition.reference(annotators, sample.image, sample.meta)
        h, w = sample.image.shape[:2]
        image = generate(control, sample.prompt, model, negative_prompt=negative_prompt, steps=steps,
                         sampler=sampler, seed=sample.seed, width=w, height=h, guidance_scale=guidance_scale,
                         progress_bar=False)[0]
        generated = np.asarray(image.convert("RGB"))
        again, measured = condition.reextract(annotators, generated, reference)
        scores = condition.score(reference, measured)
        records.append({"name": sample.name, "prompt": sample.prompt, "seed": sample.seed,
                        "scores": {k: _number(v) for k, v in scores.items()}})
        if i < keep:
            triples.append((control, generated, again))
    return condition.summarize([r["scores"] for r in records]), records, triples


def _number(v: float):
    return None if isinstance(v, float) and math.isnan(v) else float(v)


# ----------------------------------------------------------------------------------------------- output
def write_atomically(path: Path, write) -> None:
    """``write(tmp_path)`` then rename over ``path``: a killed run never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_grid(path: Path, triples, columns: int = GRID_COLUMNS, tile: int = GRID_TILE) -> None:
    """Columns: samples; rows: condition given, generated sample, condition re-extracted from it."""
    triples = triples[:columns]
    label_w, pad = 84, 4
    grid = Image.new("RGB", (label_w + len(triples) * (tile + pad), 3 * (tile + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for row, label in enumerate(("condition", "sample", "re-extracted")):
        draw.text((4, pad + row * (tile + pad) + tile // 2 - 6), label, fill="black")
        for col, images in enumerate(triples):
            cell = Image.fromarray(images[row]).resize((tile, tile), Image.NEAREST)
            grid.paste(cell, (label_w + col * (tile + pad), pad + row * (tile + pad)))
    write_atomically(path, lambda tmp: grid.save(tmp, format="PNG"))


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return str(v) if isinstance(v, int) else f"{v:.4f}"


def markdown(runs: Sequence[Run]) -> str:
    lines = ["# Controllability (`python -m cldm.evaluate`)", ""]
    for run in runs:
        cond = CONDITIONS.get(run.condition)
        keys = list(cond.metrics if cond else [k for k in run.summary if k != "n"])
        arrow = "↑" if cond is None or cond.higher_is_better else "↓"
        s = run.settings
        lines += [f"## {run.model} / {run.condition}", "",
                  f"{cond.description if cond else run.condition}; {s['sampler']} {s['steps']} steps, guidance "
                  f"{s['guidance_scale']}, {s['width']}x{s['height']}, seed {s['seed']}", "",
                  "| n | " + " | ".join(f"{k} {arrow if i == 0 else ''}".rstrip() for i, k in enumerate(keys)) + " |",
                  "|---|" + "---|" * len(keys),
                  f"| {run.summary.get('n')} | " + " | ".join(_fmt(run.summary.get(k)) for k in keys) + " |", ""]
        if run.grid:
            lines += [f"![condition / sample / re-extracted]({run.grid})", ""]
    return "\n".join(lines)


def save_results(out: Path, run: Run) -> List[Run]:
    """Add ``run`` to ``out/results.json`` (replacing an earlier run of the same model and condition), then
    rewrite ``results.md`` from all of them. Returns the runs written."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    runs: List[Run] = []
    if path.is_file():
        try:
            runs = [Run(**r) for r in json.loads(path.read_text())["runs"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a results file of cldm.evaluate ({e}): choose another --out") from None
    runs = [r for r in runs if (r.model, r.condition) != (run.model, run.condition)] + [run]
    text = json.dumps({"runs": [vars(r) for r in runs]}, indent=1, allow_nan=False)
    write_atomically(path, lambda tmp: tmp.write_text(text))
    write_atomically(out / "results.md", lambda tmp: tmp.write_text(markdown(runs)))
    return runs


# -------------------------------------------------------------------------------------------------- CLI
def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cldm.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--condition", nargs="+", required=True, choices=list(CONDITIONS),
                   help="condition(s) to score; fill50k needs no --images")
    p.add_argument("--images", type=Path, help="a folder of real images (+ <stem>.txt prompts), or a .csv/.jsonl")
    p.add_argument("--prompt", help="the prompt of folder images without a <stem>.txt")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--limit", type=int, help=f"first N samples (fill50k: default {DEFAULT_FILL50K_SAMPLES})")
    p.add_argument("--out", type=Path, default=Path("eval"), help="folder for results.json / .md and grids")
    p.add_argument("--config", help="model config; default the bundled tiny model's")
    p.add_argument("--ckpt", "--control", dest="ckpt", help="a full ControlLDM checkpoint, or the ControlNet file with --base; "
                                  "default the bundled tiny model")
    p.add_argument("--base", help="a Stable Diffusion checkpoint, when --ckpt holds only a ControlNet")
    p.add_argument("--name", help="the model's name in the tables (default: the checkpoint's file stem)")
    p.add_argument("--sampler", default="ddim", choices=list(SAMPLERS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, help="default 9, or 2 for the bundled tiny model")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i unless its row names one")
    p.add_argument("--width", type=int, help="output width, a multiple of 8; default the model's native size")
    p.add_argument("--height", type=int, help="output height, a multiple of 8; default the model's native size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", help="fp32, fp16, bf16 or auto")
    p.add_argument("--annotator-ckpts", help="folder of annotator weights (default annotator/ckpts)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def model_name(args) -> str:
    if args.name:
        return args.name
    if args.ckpt is None and args.base is None:
        return "tiny_fill50k"
    name = Path(args.ckpt).stem if args.ckpt else "base"
    return f"{name}+{Path(args.base).stem}" if args.base else name


def main(argv: Optional[Sequence[str]] = None) -> int:
    import torch

    from annotator.util import MissingWeightsError
    from cldm.app.annotators import Annotators
    from cldm.generate import check_size
    from cldm.generate_cli import TINY_GUIDANCE, load_model

    args = make_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        if any(c != "fill50k" for c in args.condition) and args.images is None:
            raise ValueError("--images is needed (a folder of images with prompts, or a .csv/.jsonl) for "
                             + ", ".join(c for c in args.condition if c != "fill50k"))
        model = load_model(args.config, args.ckpt, args.base, args.device, args.dtype)
        native = model.image_size * 8
        width, height = args.width or native, args.height or native
        check_size(width, height)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tiny = args.ckpt is None and args.base is None
    guidance = args.guidance_scale if args.guidance_scale is not None else (TINY_GUIDANCE if tiny else 9.0)
    annotators = Annotators(args.device, args.annotator_ckpts)
    name = model_name(args)
    for cond_name in args.condition:
        condition = CONDITIONS[cond_name]
        try:
            if cond_name == "fill50k":
                if width != height:
                    raise ValueError(f"fill50k samples are square, got {width}x{height}")
                samples = fill50k_samples(args.limit or DEFAULT_FILL50K_SAMPLES, width, args.seed)
            else:
                samples = image_samples(args.images, args.prompt, args.limit, width, height, args.seed)
            t0 = time.time()
            summary, records, triples = evaluate(
                model, condition, samples, annotators, steps=args.steps, sampler=args.sampler,
                guidance_scale=guidance, negative_prompt=args.negative_prompt, progress=not args.no_progress)
        except (ValueError, FileNotFoundError, OSError, MissingWeightsError) as e:
            print(f"error: {cond_name}: {e}", file=sys.stderr)
            return 2
        settings = dict(sampler=args.sampler, steps=args.steps, guidance_scale=guidance, seed=args.seed,
                        width=width, height=height, dtype=args.dtype, limit=args.limit,
                        images=None if args.images is None else str(args.images),
                        ckpt=args.ckpt, base=args.base, config=args.config)
        grid = f"grid_{name}_{cond_name}.png"
        args.out.mkdir(parents=True, exist_ok=True)
        save_grid(args.out / grid, triples)
        summary = {k: _number(v) if isinstance(v, float) else v for k, v in summary.items()}
        run = Run(name, cond_name, summary, settings, records, grid)
        try:
            save_results(args.out, run)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        shown = "  ".join(f"{k} {_fmt(summary.get(k))}" for k in condition.metrics)
        print(f"{name} / {cond_name}: {shown}  n={summary['n']}  ({time.time() - t0:.1f} s)", file=sys.stderr)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
