"""``python -m cldm.generate``: ``cldm.generate.generate`` over a batch of (control map, prompt) rows.

Rows come from a folder of control maps (the prompt from ``<stem>.txt`` beside each image, else
``--prompt``), or from a CSV (header row) or JSON-lines file with the columns ``image`` (or ``source``, as
Fill50K's ``prompt.json``), ``prompt`` and optionally ``init_image``, ``mask``, ``seed``, ``negative_prompt``;
relative paths are read from the file's folder. Each row writes ``<row>_<stem>_<k>.png`` into ``--out``
(atomically, with the settings in a PNG text chunk); a rerun skips rows whose images are all there, so an
interrupted batch resumes where it stopped. Seeds are the row's ``seed`` or ``--seed`` + row index, so a
rerun gives the same images.
"""
import argparse
import csv
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from PIL.PngImagePlugin import PngInfo
from tqdm.auto import tqdm

from cldm.generate import RESIZE_MODES, generate
from ldm.models.diffusion.samplers import SAMPLERS

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "models" / "tiny_fill50k.yaml"
TINY_WEIGHTS = ROOT / "models" / "tiny_fill50k.safetensors"
TINY_GUIDANCE = 2.0  # what the tiny model scores best at (models/tiny_fill50k.md)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

log = logging.getLogger(__name__)


@dataclass
class Row:
    image: Path
    prompt: str
    name: str  # the output file stem: row index and the image's stem
    init_image: Optional[Path] = None
    mask: Optional[Path] = None
    seed: Optional[int] = None
    negative_prompt: Optional[str] = None


def rows_from_folder(folder: Path, prompt: Optional[str]) -> List[Row]:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    rows = []
    for i, path in enumerate(images):
        sidecar = path.with_suffix(".txt")
        text = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else prompt
        if text is None:
            raise ValueError(f"no prompt for {path}: write it into {sidecar.name} or pass --prompt")
        rows.append(Row(path, text, f"{i:05d}_{path.stem}"))
    return rows


def rows_from_table(path: Path) -> List[Row]:
    """CSV (with a header) or JSON lines -> rows; every problem names the file and the line."""
    records = []
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".csv":
            records = [(n + 2, r) for n, r in enumerate(csv.DictReader(f))]  # line 1 is the header
        else:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append((n, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}, line {n}: not a JSON object ({e.msg})") from None
    if not records:
        raise ValueError(f"{path} holds no rows")
    rows = []
    for i, (n, record) in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {n}: expected an object with 'image' and 'prompt'")
        image = record.get("image") or record.get("source")
        if not image or record.get("prompt") is None:
            raise ValueError(f"{path}, line {n}: needs an 'image' (or 'source') and a 'prompt'")

        def local(key):
            value = record.get(key)
            return None if value in (None, "") else path.parent / value

        seed = record.get("seed")
        try:
            seed = None if seed in (None, "") else int(seed)
        except ValueError:
            raise ValueError(f"{path}, line {n}: seed {seed!r} is not an integer") from None
        rows.append(Row(path.parent / image, str(record["prompt"]), f"{i:05d}_{Path(image).stem}",
                        local("init_image"), local("mask"), seed, record.get("negative_prompt")))
    return rows


def load_rows(source: Path, prompt: Optional[str]) -> List[Row]:
    if source.is_dir():
        rows = rows_from_folder(source, prompt)
    elif source.is_file():
        rows = rows_from_table(source)
    else:
        raise FileNotFoundError(f"input not found: {source} (a folder of images, a .csv or a .jsonl file)")
    missing = [str(p) for r in rows for p in (r.image, r.init_image, r.mask) if p is not None and not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} file(s) named in {source} are missing, e.g. {missing[0]}")
    return rows


def output_paths(out: Path, row: Row, num_images: int) -> List[Path]:
    return [out / f"{row.name}_{k}.png" for k in range(num_images)]


def save_atomically(image, path: Path, parameters: dict) -> None:
    """Write to a temporary file beside ``path``, then rename: a killed run never leaves half a PNG."""
    info = PngInfo()
    info.add_text("parameters", json.dumps(parameters))
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)


def load_model(config: Optional[str], ckpt: Optional[str], base: Optional[str], device: str, dtype: str):
    from cldm.loading import load_model_weights
    from cldm.model import create_model
    from ldm.accel import prepare_for_inference

    if ckpt is None and base is None:
        config, ckpt = config or str(TINY_CONFIG), str(TINY_WEIGHTS)
    elif config is None:
        raise ValueError("--ckpt needs its --config (e.g. models/cldm_v15.yaml)")
    model = create_model(config)
    load_model_weights(model, ckpt, base=base)
    return prepare_for_inference(model, device, dtype)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cldm.generate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", type=Path, help="a folder of control maps, or a .csv / .jsonl of rows")
    p.add_argument("--out", type=Path, required=True, help="output folder (created; existing images are kept)")
    p.add_argument("--prompt", help="the prompt of folder images without a <stem>.txt")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--config", help="model config; default the bundled tiny model's")
    p.add_argument("--ckpt", help="a full ControlLDM checkpoint, or the ControlNet file with --base; "
                                  "default the bundled tiny model")
    p.add_argument("--base", help="a Stable Diffusion checkpoint, when --ckpt holds only a ControlNet")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="auto (default): bf16 on CPUs with AMX and on GPUs, else fp32")
    p.add_argument("--sampler", default="ddim", choices=list(SAMPLERS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, help=f"default 9, or {TINY_GUIDANCE} for the tiny model")
    p.add_argument("--width", type=int, help="a multiple of 8; default the model's native size")
    p.add_argument("--height", type=int, help="a multiple of 8; default the model's native size")
    p.add_argument("--resize-mode", default="just_resize", choices=RESIZE_MODES)
    p.add_argument("--num-images", type=int, default=1, help="images per row")
    p.add_argument("--seed", type=int, default=0, help="row i uses seed + i unless it names its own")
    p.add_argument("--strength", type=float, help="img2img denoising strength (rows with init_image)")
    p.add_argument("--control-strength", type=float, default=1.0)
    p.add_argument("--control-mode", default="balanced", help="balanced, prompt or control")
    p.add_argument("--mask-blur", type=float, default=4.0, help="Gaussian sigma in pixels (rows with a mask)")
    p.add_argument("--eta", type=float, help="DDIM's eta (0 default), Euler a's (1 default)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        rows = load_rows(args.input, args.prompt)
        out = args.out.resolve()
        inputs = {p.resolve() for r in rows for p in (r.image, r.init_image, r.mask) if p is not None}
        if args.input.is_dir() and args.input.resolve() == out:
            raise ValueError(f"--out must not be the input folder {args.input}: the images written would be "
                             "read as inputs on the next run")
        clash = [p for r in rows for p in output_paths(out, r, args.num_images) if p in inputs]
        if clash:
            raise ValueError(f"an output would overwrite the input {clash[0]}: choose another --out")
        todo = [(i, r) for i, r in enumerate(rows)
                if not all(p.is_file() for p in output_paths(out, r, args.num_images))]
        print(f"{len(rows)} rows, {len(rows) - len(todo)} already done in {out}", file=sys.stderr)
        if not todo:
            return 0
        model = load_model(args.config, args.ckpt, args.base, args.device, args.dtype)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tiny = args.ckpt is None and args.base is None
    guidance = args.guidance_scale if args.guidance_scale is not None else (TINY_GUIDANCE if tiny else 9.0)
    out.mkdir(parents=True, exist_ok=True)
    for index, row in tqdm(todo, desc="generate", unit="row"):
        seed = row.seed if row.seed is not None else args.seed + index
        settings = dict(steps=args.steps, sampler=args.sampler, seed=seed, width=args.width, height=args.height,
                        guidance_scale=guidance, num_images=args.num_images, resize_mode=args.resize_mode,
                        control_strength=args.control_strength, control_mode=args.control_mode,
                        mask_blur=args.mask_blur, eta=args.eta, strength=args.strength)
        negative = row.negative_prompt if row.negative_prompt is not None else args.negative_prompt
        try:
            images = generate(str(row.image), row.prompt, model, negative_prompt=negative,
                              init_image=None if row.init_image is None else str(row.init_image),
                              mask=None if row.mask is None else str(row.mask), progress_bar=False, **settings)
        except (ValueError, OSError) as e:  # an unreadable image, a size the model cannot take, ...
            print(f"error: row {index} ({row.image}): {e}", file=sys.stderr)
            return 2
        parameters = {"prompt": row.prompt, "negative_prompt": negative, "image": str(row.image), **settings}
        for image, path in zip(images, output_paths(out, row, args.num_images)):
            save_atomically(image, path, parameters)
    print(f"wrote {len(todo) * args.num_images} images into {out}", file=sys.stderr)
    return 0
