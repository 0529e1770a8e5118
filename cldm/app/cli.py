"""Command line of the apps: flags, model loading, serving (upstream did this at import time, per script)."""
import argparse
import logging
import os
import re
from pathlib import Path
from typing import Union

import torch

from cldm.app.annotators import Annotators
from cldm.app.engine import Engine
from cldm.app.tasks import TASKS, Task
from cldm.app.tasks_v11 import AppV11
from cldm.app.ui import (CACHE_TTL_S, MAX_FILE_SIZE, QUEUE_SIZE, build_annotator_demo, build_demo,
                         build_multi_demo, launch)
from cldm.app.ui_v11 import build_v11_demo
from cldm.app.weights import resolve_model
from cldm.model import CheckpointError
from ldm.accel import DTYPE_CHOICES

log = logging.getLogger(__name__)


def make_parser(description: str, num_ckpts: int = 1, with_model: bool = True,
                default_ckpt: str = "control_sd15_<name>.pth") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    if with_model:
        parser.add_argument("--config", help="model yaml (default: models/cldm_v15.yaml)")
        parser.add_argument("--ckpt", nargs=num_ckpts, type=Path,
                            help="ControlNet checkpoint" + ("s, one per ControlNet" if num_ckpts > 1 else "") +
                                 f" (default: ./models/{default_ckpt}, else the bundled demo model)")
        parser.add_argument("--control", nargs=num_ckpts, type=Path, dest="ckpt",
                            help="same as --ckpt; also a control-only file (1.1's control_v11*.pth, fp16 "
                                 ".safetensors) or a diffusers ControlNet folder, with --base")
        parser.add_argument("--base", type=Path,
                            help="Stable Diffusion checkpoint under a control-only --control file (default: "
                                 "v1-5-pruned-emaonly / v1-5-pruned .safetensors/.ckpt in the models folder)")
        parser.add_argument("--models-dir", type=Path,
                            help="folder scanned for control_sd15_<name>.pth, control_v11*_<name> files and "
                                 "diffusers folders, and base checkpoints (default: ./models)")
        parser.add_argument("--save-memory", action="store_true",
                            help="low-VRAM mode: keep only the modules in use on the device")
        parser.add_argument("--dtype", choices=DTYPE_CHOICES + ("float32", "float16", "bfloat16"), default="auto",
                            help="model precision; auto (default): bf16 on CPUs with AMX and on GPUs, else fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device, e.g. cpu, cuda, cuda:1, mps (default: cuda when available)")
    parser.add_argument("--annotator-ckpts", type=Path,
                        help="folder of annotator weights (default: $CONTROLNET_ANNOTATOR_CKPTS or annotator/ckpts)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default: %(default)s, this machine only; 0.0.0.0: every network)")
    parser.add_argument("--listen", action="store_true", help="serve every network (--host 0.0.0.0)")
    parser.add_argument("--port", type=int, help="default: Gradio's (7860, or the next free one)")
    parser.add_argument("--max-file-size", default=MAX_FILE_SIZE, type=_file_size,
                        help="largest upload accepted, e.g. 25mb, 500kb, 1gb (default: %(default)s)")
    parser.add_argument("--queue-size", type=_at_least_one, default=QUEUE_SIZE,
                        help="requests that may wait; more are turned away (default: %(default)s)")
    parser.add_argument("--cache-ttl", type=_at_least_one, default=CACHE_TTL_S, metavar="SECONDS",
                        help="delete uploads and outputs this long after they were written (default: %(default)s)")
    return parser


def _file_size(text: str):
    """'25mb', '500kb', '1gb' or a byte count -> what Gradio's max_file_size takes (the string, or an int)."""
    match = re.fullmatch(r"(\d+)\s*(b|kb|mb|gb|tb)?", text.strip().lower())
    if not match or int(match[1]) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 25mb, 500kb, 1gb or a byte count")
    return f"{match[1]}{match[2]}" if match[2] else int(match[1])


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return value


def _setup(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    args = parser.parse_args(argv)
    for path in getattr(args, "ckpt", None) or []:
        if not path.exists():
            parser.error(f"--ckpt {path}: no such file or folder")
    base = getattr(args, "base", None)
    if base is not None and not base.is_file():
        parser.error(f"--base {base}: no such file")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own startup requests
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by Gradio at call time: no telemetry, no version check
    return args


def _engine(args: argparse.Namespace, checkpoints) -> Engine:
    choice = resolve_model(checkpoints, args.ckpt, args.config, base=args.base, models_dir=args.models_dir)
    if args.ckpt and (choice.demo or not choice.available):  # files the user named cannot run
        raise SystemExit(f"error: {choice.reason}")
    try:
        return Engine.load(choice, args.device, args.dtype, args.save_memory)
    except (CheckpointError, FileNotFoundError, ValueError) as e:  # the user's file or flag: no traceback
        raise SystemExit(f"error: {e}") from None


def serve(demo, args: argparse.Namespace) -> None:
    launch(demo, "0.0.0.0" if args.listen else args.host, args.port, max_file_size=args.max_file_size,
           queue_size=args.queue_size, cache_ttl=args.cache_ttl)


def main(task: Union[Task, AppV11], argv=None) -> None:
    """Run one diffusion app (`gradio_<task>2image.py`, or a 1.1 app's `gradio_<name>_v11.py`)."""
    v11 = isinstance(task, AppV11)
    args = _setup(make_parser(task.title, default_ckpt=f"{task.checkpoint}[_fp16].{{pth,safetensors}}" if v11
                              else "control_sd15_<name>.pth"), argv)
    build = build_v11_demo if v11 else build_demo
    serve(build(task, _engine(args, [task.checkpoint]), Annotators(args.device, args.annotator_ckpts)), args)


def main_multi(default_tasks=("canny", "pose"), argv=None) -> None:
    """Run the multi-ControlNet app; `--tasks` picks the ControlNets (their checkpoints and default detectors)."""
    parser = make_parser("Control Stable Diffusion with two ControlNets", num_ckpts=len(default_tasks))
    names = [name for name, task in TASKS.items() if not task.canvas]
    parser.add_argument("--tasks", nargs=len(default_tasks), choices=names, default=list(default_tasks),
                        help="app names whose ControlNets to compose, e.g. canny pose")
    args = _setup(parser, argv)
    tasks = [TASKS[name] for name in args.tasks]
    engine = _engine(args, [t.checkpoint for t in tasks])
    serve(build_multi_demo(tasks, engine, Annotators(args.device, args.annotator_ckpts)), args)


def main_annotator(argv=None) -> None:
    """Run the annotator app (maps only, no diffusion model)."""
    args = _setup(make_parser("ControlNet annotators", with_model=False), argv)
    serve(build_annotator_demo(Annotators(args.device, args.annotator_ckpts)), args)
