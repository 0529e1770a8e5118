"""Train a ControlNet with PyTorch Lightning 2: the library behind ``tutorial_train*.py``.

Upstream's ``tutorial_train.py`` hard-codes its settings and targets Lightning 1.5; here each setting is a flag
whose default is upstream's value (batch 4, lr 1e-5, image log every 300 batches, ``sd_locked``, fp32), the
scripts differ only in their ``TrainDefaults``, and an interrupted run resumes with its optimizer state.

Output layout under ``--output-dir``: ``checkpoints/`` (``step=N.ckpt``, ``last.ckpt``), ``image_log/train/``
(grids as upstream) and ``lightning_logs/version_N/metrics.csv`` (the loss).

A killed run resumes exactly (``--resume-training``; bit-identical with ``--deterministic``): see
``training.resume``. User documentation: ``docs/training.md``.
"""
import argparse
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from cldm.model import CheckpointError, load_checkpoint, load_model_config, load_state_dict
from ldm.util import instantiate_from_config
from training import cache
from training.dataset import DatasetError
from training.data.conditions import condition_names
from training.data.loader import TrainData
from training.data.sources import FORMATS
from training.data.sources import build_dataset as build_source_dataset
from training.logger import ImageLogger
from training.validation import Validation
from training.strategies import make_strategy, uses_own_checkpoint_io
from training.presets import PRESETS, apply_preset
from training.resume import (AtomicCheckpointIO, ExactResume, LearningRateSchedule, StepCheckpoint,
                             find_resume_checkpoint)

log = logging.getLogger(__name__)

# flag value -> Lightning's name (fp32/fp16 as in the apps' --dtype)
PRECISIONS = {"32": "32-true", "fp32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed", "fp16": "16-mixed"}


@dataclass(frozen=True)
class TrainDefaults:
    """What distinguishes one training script from another."""
    config: str = "./models/cldm_v15.yaml"
    resume: str = "./models/control_sd15_ini.ckpt"
    output_dir: str = "./runs/control_sd15"
    devices: str = "1"
    strategy: str = "auto"


def build_parser(defaults: TrainDefaults = TrainDefaults()) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a ControlNet on a Fill50K-layout data set.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=defaults.config, help="ControlLDM yaml")
    p.add_argument("--resume", default=defaults.resume,
                   help="initial weights, a ControlLDM checkpoint made by tool_add_control.py")
    p.add_argument("--data-root", default="./training/fill50k/",
                   help="a Fill50K-layout folder (prompt.json), a folder of image/caption/condition files, a "
                        ".jsonl/.csv index, or tar shards (a .tar, a folder of them, a glob or train-{000..009}.tar)")
    p.add_argument("--data-format", choices=FORMATS, default="auto", help="how to read --data-root")
    p.add_argument("--condition", choices=condition_names(), default=None,
                   help="compute each condition with this annotator (after crop and flip) where none is stored")
    p.add_argument("--annotator-ckpts", default=None, help="annotator weight folder for --condition")
    p.add_argument("--resolution", type=int, default=0,
                   help="train at this size (multiple of 64): resize and crop; 0 keeps each image's size")
    p.add_argument("--buckets", action="store_true",
                   help="aspect-ratio buckets of about resolution^2 pixels (each batch one shape)")
    p.add_argument("--random-crop", action="store_true", help="random instead of centre crop")
    p.add_argument("--flip", action="store_true", help="horizontal flip of image and condition together (p=0.5)")
    p.add_argument("--cache-latents", action="store_true",
                   help="encode every image with the VAE once, into a safetensors cache (no --random-crop/--flip)")
    p.add_argument("--cache-text", action="store_true", help="encode every caption once, into a safetensors cache")
    p.add_argument("--cache-dir", default=None, help="where the caches go (default: .encodings/ next to the data)")
    p.add_argument("--skip-bad-samples", action="store_true",
                   help="leave out (and count) unreadable or incomplete samples instead of stopping")
    p.add_argument("--output-dir", default=defaults.output_dir, help="checkpoints, image and loss logs")
    p.add_argument("--resume-training", action="store_true",
                   help="continue the interrupted run in --output-dir from checkpoints/last.ckpt")
    p.add_argument("--resume-if-possible", action="store_true",
                   help="--resume-training if --output-dir holds a checkpoint, else start (for requeued jobs)")
    p.add_argument("--batch-size", type=int, default=4, help="per device")
    p.add_argument("--accumulate", type=int, default=1, help="gradient accumulation (batches per optimizer step)")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate")
    p.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default="adamw",
                   help="AdamW, or 8-bit AdamW (bitsandbytes; about a quarter of the optimizer-state memory)")
    p.add_argument("--lr-warmup", type=int, default=0, help="linear learning-rate warm-up over N optimizer steps")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="after the warm-up: constant, or cosine decay to 0 at --max-steps")
    p.add_argument("--ema", action="store_true", help="keep an EMA of the UNet weights (the config's use_ema)")
    p.add_argument("--max-steps", type=int, default=-1, help="optimizer steps; -1 trains until stopped")
    p.add_argument("--precision", "--dtype", choices=sorted(PRECISIONS), default="32",
                   help="32 (fp32), bf16 (mixed, CPU or GPU) or 16 (fp16, mixed, GPU only)")
    p.add_argument("--sd-unlocked", action="store_true", help="also train the SD UNet decoder (sd_locked=False)")
    p.add_argument("--only-mid-control", action="store_true", help="add the control to the middle block only")
    p.add_argument("--prompt-dropout", type=float, default=0.0,
                   help="probability of an empty prompt (the paper uses 0.5)")
    p.add_argument("--memory-preset", choices=PRESETS, default="none",
                   help="bundle of memory savers for a GPU of that size (see docs/training.md); sets the flags it names")
    p.add_argument("--no-grad-checkpointing", action="store_true",
                   help="ignore the config's use_checkpoint: faster, much more memory")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, ... (Lightning's)")
    p.add_argument("--devices", default=defaults.devices, help="number of devices (Lightning's)")
    p.add_argument("--strategy", default=defaults.strategy,
                   help="auto, ddp, fsdp (FSDP2: sharded weights, gradients and optimizer state; CPU or GPU), "
                        "deepspeed_stage_2[_offload] (if deepspeed is installed), or another of Lightning's")
    p.add_argument("--num-nodes", type=int, default=1,
                   help="machines (Lightning's num_nodes); each runs --devices processes (see docs/training.md)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--seed", type=int, default=0, help="data order, augmentations and each step's noise")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only (Lightning's deterministic=True): with a fixed --seed, a "
                        "resumed run is bit-identical to an uninterrupted one on CPU")
    p.add_argument("--log-every", type=int, default=300, help="image log every N batches (0: never)")
    p.add_argument("--log-ddim-steps", type=int, default=50, help="DDIM steps of the logged samples")
    p.add_argument("--loss-every", type=int, default=50, help="write the loss to the CSV log every N steps")
    p.add_argument("--logger", choices=("csv", "tensorboard", "both"), default="csv",
                   help="metrics as lightning_logs/version_N/metrics.csv and/or TensorBoard event files "
                        "(tensorboard needs the tensorboardX or tensorboard package)")
    p.add_argument("--val-every", type=int, default=0,
                   help="every N steps, score the model on a held-out set (--val-metric) and log it with the loss")
    p.add_argument("--val-metric", default="fill50k",
                   help="fill50k (IoU / colour on held-out Fill50K outlines) or a cldm.evaluate condition "
                        "(canny, hed, softedge, lineart, depth, seg, pose: controllability on --val-data)")
    p.add_argument("--val-data", default=None, help="held-out images + prompts for --val-metric other than fill50k")
    p.add_argument("--val-samples", type=int, default=16, help="held-out samples per validation")
    p.add_argument("--ckpt-every", type=int, default=1000, help="checkpoint every N optimizer steps")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every step=N.ckpt (default: only the newest), e.g. to evaluate along training")
    return p


def _devices(value: str) -> Union[int, str]:
    return value if value == "auto" else int(value)


def last_checkpoint_path(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints", "last.ckpt")


def _holds_run(output_dir: str) -> bool:
    folder = os.path.join(output_dir, "checkpoints")
    return os.path.lexists(last_checkpoint_path(output_dir)) or (
        os.path.isdir(folder) and any(name.endswith(".ckpt") for name in os.listdir(folder)))


def check_args(args: argparse.Namespace) -> None:
    """Refuse settings that would fail late or silently differ from what was asked."""
    if getattr(args, "resume_if_possible", False):
        args.resume_training = find_resume_checkpoint(os.path.join(args.output_dir, "checkpoints")) is not None
    if args.precision == "16" and (args.accelerator == "cpu" or not torch.cuda.is_available()):
        raise SystemExit("error: --precision 16 needs a GPU (Lightning turns it into bf16 on CPU); "
                         "use --precision bf16")
    if args.optimizer == "adamw8bit" and args.strategy.startswith("fsdp"):
        raise SystemExit("error: --optimizer adamw8bit does not work with --strategy fsdp (bitsandbytes' update "
                         "does not take FSDP's sharded tensors); use ddp, or fsdp_cpu_offload with adamw")
    last = last_checkpoint_path(args.output_dir)
    if args.resume_training and find_resume_checkpoint(os.path.dirname(last)) is None:
        raise SystemExit(f"error: --resume-training: no checkpoint to resume at {last}")
    if not args.resume_training and _holds_run(args.output_dir):
        raise SystemExit(f"error: {args.output_dir} already holds a run ({last}); continue it with "
                         "--resume-training or choose another --output-dir")
    if not args.resume_training and not os.path.isfile(args.resume):
        raise SystemExit(f"error: initial weights not found: {args.resume}\nCreate them from a Stable Diffusion "
                         f"checkpoint with:\n  python tool_add_control.py <SD checkpoint> {args.resume} "
                         f"--config {args.config}")


def set_grad_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    """Override the config's ``use_checkpoint`` on every block that has one (read at each forward)."""
    for module in model.modules():
        if hasattr(module, "use_checkpoint"):
            module.use_checkpoint = enabled


def build_model(args: argparse.Namespace) -> pl.LightningModule:
    """The ControlLDM of ``--config`` with the training options; initial weights unless resuming a run
    (the run's checkpoint replaces them)."""
    extra = {"use_ema": True} if args.ema else {}
    config = load_model_config(args.config)
    if config.get("target") == "cldm.cldm.ControlLDM":
        config["target"] = "training.model.TrainControlLDM"  # same weights; cached encodings, FSDP
    model = instantiate_from_config(config, sd_locked=not args.sd_unlocked, only_mid_control=args.only_mid_control,
                                    learning_rate=args.lr, **extra)
    if args.no_grad_checkpointing:
        set_grad_checkpointing(model, False)
    model.fsdp_cpu_offload = args.strategy == "fsdp_cpu_offload"
    model.optimizer_name = args.optimizer
    if not args.resume_training:
        try:
            load_checkpoint(model, args.resume)
        except CheckpointError as e:
            raise SystemExit(f"error: {e}") from e
        if getattr(model, "use_ema", False):
            restart_ema(model)
    return model


@torch.no_grad()
def restart_ema(model: torch.nn.Module) -> None:
    """A new run's EMA starts at the loaded weights (LitEma copied the random initialisation)."""
    ema = model.model_ema
    buffers = dict(ema.named_buffers())
    for name, p in model.model.named_parameters():
        if name in ema.shadow_names:
            buffers[ema.shadow_names[name]].copy_(p)
    ema.num_updates.zero_()


def build_dataset(args: argparse.Namespace):
    try:
        return build_source_dataset(args)
    except (FileNotFoundError, DatasetError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e


def with_caches(args: argparse.Namespace, model: pl.LightningModule, dataset):
    """``dataset`` reading the encodings of --cache-latents / --cache-text (computed now if missing)."""
    if not (args.cache_latents or args.cache_text):
        return dataset
    if args.resume_training:  # the encoders' weights are in the run's checkpoint (the key depends on them)
        path = find_resume_checkpoint(os.path.dirname(last_checkpoint_path(args.output_dir)))
        model.load_state_dict(load_state_dict(path), strict=False)
    folder = args.cache_dir or cache.cache_dir_for(args.data_root)
    device = "cuda" if args.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"
    model.to(device)
    try:
        latents = cache.build_cache(model, dataset, "latents", folder) if args.cache_latents else None
        text = cache.build_cache(model, dataset, "text", folder) if args.cache_text else None
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    finally:
        model.to("cpu")
    return cache.CachedDataset(dataset, latents=latents, text=text)


def build_data(args: argparse.Namespace, resume: ExactResume, dataset=None) -> TrainData:
    dataset = build_dataset(args) if dataset is None else dataset
    return TrainData(dataset, args.batch_size, seed=args.seed, resume=resume, workers=args.workers)


def build_dataloader(args: argparse.Namespace):
    """The loader a single process would train from (for inspection; training builds it per rank)."""
    data = build_data(args, ExactResume(args.seed))
    return data.train_dataloader()


class RankSummary(pl.Callback):
    """Log, from every process, how many batches it trained: shows that all DDP ranks took part."""

    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1

    def on_train_end(self, trainer, pl_module) -> None:
        log.info("rank %d/%d: trained %d batches, global step %d", trainer.global_rank, trainer.world_size,
                 self.batches, trainer.global_step)


def _strategy(args: argparse.Namespace):
    """With --only-mid-control the 12 skip zero convs get no gradient, which plain DDP treats as an error."""
    if args.only_mid_control and args.strategy == "ddp":
        return "ddp_find_unused_parameters_true"
    devices = _devices(args.devices)
    if devices == "auto":
        devices = max(1, torch.cuda.device_count()) if args.accelerator != "cpu" else 1
    return make_strategy(args.strategy, world_size=devices * args.num_nodes)


def build_trainer(args: argparse.Namespace, resume: ExactResume) -> pl.Trainer:
    # The newest step (also written on an exception or Ctrl-C), or every one with --keep-checkpoints;
    # last.ckpt links to the newest.
    checkpoints = StepCheckpoint(dirpath=os.path.join(args.output_dir, "checkpoints"), filename="{step}",
                                 every_n_train_steps=args.ckpt_every, save_top_k=-1 if args.keep_checkpoints else 1,
                                 save_last="link",
                                 save_on_exception=True, enable_version_counter=False)
    images = ImageLogger(args.output_dir, batch_frequency=args.log_every,
                         log_images_kwargs={"ddim_steps": args.log_ddim_steps})
    loggers = []
    if args.logger in ("csv", "both"):
        loggers.append(CSVLogger(args.output_dir))
    if args.logger in ("tensorboard", "both"):
        loggers.append(TensorBoardLogger(args.output_dir, name="tensorboard"))
    callbacks = [resume]
    if args.val_every:
        try:
            callbacks.append(Validation(args.val_every, args.val_metric, samples=args.val_samples,
                                        ddim_steps=args.log_ddim_steps, data=args.val_data, size=args.resolution,
                                        annotator_ckpts=args.annotator_ckpts))
        except ValueError as e:
            raise SystemExit(f"error: {e}") from e
    schedule = LearningRateSchedule(args.lr, warmup=args.lr_warmup, schedule=args.lr_schedule, total=args.max_steps)
    io = AtomicCheckpointIO()
    strategy = _strategy(args)
    plugins = [] if uses_own_checkpoint_io(strategy) else [io]
    return pl.Trainer(accelerator=args.accelerator, devices=_devices(args.devices), strategy=strategy,
                      num_nodes=args.num_nodes,
                      precision=PRECISIONS[args.precision], max_steps=args.max_steps,
                      accumulate_grad_batches=args.accumulate, log_every_n_steps=args.loss_every,
                      callbacks=[*callbacks, schedule, checkpoints, images, RankSummary()],
                      logger=loggers, default_root_dir=args.output_dir,
                      plugins=plugins, deterministic=args.deterministic or None,
                      use_distributed_sampler=False)


def train(args: argparse.Namespace) -> pl.Trainer:
    args = apply_preset(args)
    check_args(args)
    # The VAE and text encoder stay in eval mode on purpose (LatentDiffusion.train): not worth a warning.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # Our loader resumes through ExactResume, not the DataLoader's own state_dict that Lightning looks for.
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch")
    pl.seed_everything(args.seed, workers=True)
    model = build_model(args)
    dataset = with_caches(args, model, build_dataset(args))
    resume = ExactResume(args.seed)
    trainer = build_trainer(args, resume)
    ckpt_path = None
    if args.resume_training:
        ckpt_path = find_resume_checkpoint(os.path.dirname(last_checkpoint_path(args.output_dir)))
        log.info("resuming from %s", ckpt_path)
    trainer.fit(model, datamodule=build_data(args, resume, dataset), ckpt_path=ckpt_path)
    return trainer


def main(argv: Optional[Sequence[str]] = None, defaults: TrainDefaults = TrainDefaults()) -> pl.Trainer:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return train(build_parser(defaults).parse_args(argv))
