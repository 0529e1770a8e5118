"""Exact resume: a run killed at any point and resumed from its last checkpoint ends with the same weights as a
run that was never stopped (bit-identical on CPU with ``--deterministic``).

Lightning restores the model, the optimizer and its loop counters; what it cannot restore is made a pure
function of the position in the run, so there is nothing else to save:

- the data order: ``ResumableBatchSampler`` draws each epoch's batches from ``(seed, epoch)`` and can start
  ``n`` batches into an epoch; ``ExactResume`` keeps ``(epoch, batches done)`` in the checkpoint;
- the random numbers of a step (timesteps, noise, the VAE posterior sample): ``ExactResume`` reseeds torch,
  numpy and ``random`` before every batch from ``(seed, rank, epoch, batch)``, so neither data-loader prefetching
  nor image logging nor a restart changes what a step draws;
- the random numbers of a sample's augmentation (prompt dropout, crops, flips): ``SeededItems`` draws them from
  ``(seed, epoch, index)`` inside a forked RNG, in whichever process loads the sample;
- the learning rate: ``LearningRateSchedule`` sets it from the optimizer step count before every step;
- the EMA: Lightning saves in ``on_train_batch_end`` before the model's own hook updates the EMA, so a checkpoint
  lags the EMA by one update; on resume that update is applied once (the weights it reads are the saved ones).

Checkpoints are written atomically (``AtomicCheckpointIO``: temporary file, fsync, rename; ``last.ckpt`` is
replaced by rename too), and ``find_resume_checkpoint`` falls back to the newest complete ``step=N.ckpt`` if a kill
landed between two renames.
"""
import glob
import logging
import math
import os
import random
import re
import zipfile
from typing import Any, Dict, Hashable, Iterator, List, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import Dataset, Sampler

log = logging.getLogger(__name__)

_MASK = (1 << 63) - 1


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (a splitmix64-style mix, stable across processes and Python versions)."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        h = (h ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & _MASK


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)  # also every CUDA device
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)


class ResumableBatchSampler(Sampler[List[int]]):
    """Batches of item indices, the same for a given ``(seed, epoch)`` in every process and after a restart.

    ``groups`` (one hashable per item, e.g. its aspect-ratio bucket) keeps every batch inside one group; the
    batches of all groups are then shuffled together. Incomplete batches are dropped, so every batch has
    ``batch_size`` items. With ``world_size`` > 1 each rank takes every ``world_size``-th batch (the tail that
    does not divide is dropped, so all ranks run the same number of steps): this replaces DistributedSampler.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 groups: Optional[Sequence[Hashable]] = None, rank: int = 0, world_size: int = 1):
        if groups is not None and len(groups) != num_items:
            raise ValueError(f"groups has {len(groups)} entries for {num_items} items")
        self.num_items, self.batch_size, self.seed, self.shuffle = num_items, batch_size, seed, shuffle
        self.groups = list(groups) if groups is not None else [0] * num_items
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0  # batches of the current epoch to skip at the next iteration (set on resume)
        by_group: Dict[Hashable, List[int]] = {}
        for index, group in enumerate(self.groups):
            by_group.setdefault(group, []).append(index)
        self._by_group = [by_group[g] for g in sorted(by_group, key=repr)]
        total = sum(len(items) // batch_size for items in self._by_group)
        self._length = total // world_size
        if self._length == 0:
            sizes = ", ".join(f"{g!r}: {len(by_group[g])}" for g in sorted(by_group, key=repr))
            raise ValueError(f"no full batch of {batch_size} per process ({world_size} processes) can be made from "
                             f"{num_items} items (per group: {sizes}); lower --batch-size or add data")

    def go_to(self, epoch: int, start: int = 0) -> None:
        """Iterate ``epoch`` from its batch ``start`` next. Not named ``set_epoch`` on purpose: Lightning would
        call that with its own epoch count, which after a restart at an epoch's last batch is one behind."""
        self.epoch, self.start = epoch, start

    def plan(self, epoch: int) -> List[List[int]]:
        """All of this rank's batches of ``epoch``, in order."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        batches = []
        for items in self._by_group:
            order = [items[i] for i in torch.randperm(len(items), generator=g)] if self.shuffle else list(items)
            batches += [order[i:i + self.batch_size] for i in range(0, len(order) - self.batch_size + 1,
                                                                     self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g)]
        return batches[:self._length * self.world_size][self.rank::self.world_size]

    def __iter__(self) -> Iterator[List[int]]:
        start, self.start = self.start, 0
        yield from self.plan(self.epoch)[start:]

    def __len__(self) -> int:
        return self._length


class SeededItems(Dataset):
    """``dataset[i]`` with torch/numpy/random seeded from ``(seed, epoch, i)`` and the caller's RNG untouched,
    so a sample's random choices are the same in any worker and after a restart. The epoch comes from
    ``sampler.epoch`` (read in the loading process: with worker processes it is the value when the epoch's
    iterator started, which is what Lightning sets first)."""

    def __init__(self, dataset: Dataset, sampler: ResumableBatchSampler, seed: int):
        self.dataset, self.sampler, self.seed = dataset, sampler, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # the wrapped data set's attributes (e.g. skipped-sample counts)
        if name in ("dataset", "sampler", "seed"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        state = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
        try:
            seed_all(derive_seed(self.seed, self.sampler.epoch, index, 1))
            return self.dataset[index]
        finally:
            torch.random.set_rng_state(state[0])
            np.random.set_state(state[1])
            random.setstate(state[2])


class ExactResume(pl.Callback):
    """Keeps the data position in the checkpoint and reseeds the RNGs before every batch (see the module doc).
    The sampler is made once the ranks are known (``attach``, from the data module), after a restore."""

    def __init__(self, seed: int):
        self.seed = seed
        self.sampler: Optional[ResumableBatchSampler] = None
        self.epoch, self.done = 0, 0  # batches of ``epoch`` this rank has finished
        self._restored: Optional[Dict[str, Any]] = None
        self._resumed = False
        self._ema_pending = False  # set between a batch's end hooks: a checkpoint saved now lacks its EMA update
        self._apply_ema_on_start = False

    @property
    def state_key(self) -> str:
        return "ExactResume"

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "done": self.done, "ema_pending": self._ema_pending}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._restored = dict(state)
        self._apply_ema_on_start = bool(state.get("ema_pending"))
        if self.sampler is not None:
            self._apply_restored()

    def attach(self, sampler: ResumableBatchSampler) -> None:
        self.sampler = sampler
        if self._restored is not None:
            self._apply_restored()

    def _apply_restored(self) -> None:
        epoch, done = int(self._restored["epoch"]), int(self._restored["done"])
        self._restored = None
        if done >= len(self.sampler):  # saved at the last batch of an epoch: resume at the next one
            epoch, done = epoch + 1, 0
        self.epoch, self.done = epoch, done
        self.sampler.go_to(epoch, done)
        self._resumed = True
        log.info("resuming at epoch %d, batch %d of %d", epoch, done, len(self.sampler))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._apply_ema_on_start and getattr(pl_module, "use_ema", False):
            pl_module.model_ema(pl_module.model)
        self._apply_ema_on_start = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        resumed, self._resumed = self._resumed, False
        if resumed and trainer.current_epoch == self.epoch:
            return
        self.epoch, self.done = trainer.current_epoch, 0
        if self.sampler is not None:
            self.sampler.go_to(self.epoch)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._ema_pending = False
        seed_all(derive_seed(self.seed, trainer.global_rank, self.epoch, self.done, 2))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self.done += 1
        self._ema_pending = True  # ModelCheckpoint saves next, then the model's hook updates the EMA

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ema_pending = False  # the final save (StepCheckpoint.on_train_end) comes after the last update


class LearningRateSchedule(pl.Callback):
    """Linear warm-up over ``warmup`` optimizer steps, then constant or cosine decay to 0 at ``total`` steps;
    the rate is set from the step count before every batch, so it needs no state of its own."""

    def __init__(self, base_lr: float, warmup: int = 0, schedule: str = "constant", total: int = -1):
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
        if schedule == "cosine" and total <= 0:
            raise ValueError("a cosine schedule needs --max-steps")
        self.base_lr, self.warmup, self.schedule, self.total = base_lr, warmup, schedule, total

    def factor(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "cosine":
            progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        lr = self.base_lr * self.factor(trainer.global_step)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``<name>.tmp-<pid>`` in the same folder, fsync, then rename over the target: a kill at
    any moment leaves either the old file or the new one, never a cut file under the final name."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        _fsync_dir(folder)


class StepCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, plus a save of the final step (Lightning saves only every N steps, so a run
    ending between two saves would lose its last steps) and an atomic ``last.ckpt`` link (Lightning removes the
    link, then makes a new one). Uses ModelCheckpoint's own helpers (Lightning 2.6, pinned);
    tests/test_training.py and tests/test_resume.py check the result."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A step saved in on_train_batch_end lacks that step's EMA update: save it again, complete.
        ema_behind = getattr(pl_module, "use_ema", False) and self._last_global_step_saved == trainer.global_step
        if ema_behind or not self._should_skip_saving_checkpoint(trainer):  # False when this step is saved already
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)

    @staticmethod
    def _link_checkpoint(trainer: pl.Trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            tmp = f"{linkpath}.tmp-{os.getpid()}"
            if os.path.lexists(tmp):
                os.remove(tmp)
            os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), tmp)
            os.replace(tmp, linkpath)
            _fsync_dir(os.path.dirname(os.path.abspath(linkpath)))
        trainer.strategy.barrier()


def is_complete_checkpoint(path: str) -> bool:
    """True if ``path`` is a whole torch zip file (its central directory reads and lists a data.pkl)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("/data.pkl") for name in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _step_of(path: str) -> int:
    match = re.search(r"step=(\d+)", os.path.basename(path))
    return int(match.group(1)) if match else -1


def find_resume_checkpoint(checkpoint_dir: str) -> Optional[str]:
    """``last.ckpt`` if it resolves to a complete file, else the newest complete ``step=N.ckpt``; None if none.
    Leftover temporary files of a killed save are removed."""
    for tmp in glob.glob(os.path.join(checkpoint_dir, "*.tmp-*")):
        os.remove(tmp)
    last = os.path.join(checkpoint_dir, "last.ckpt")
    if os.path.exists(last) and is_complete_checkpoint(last):
        return last
    steps = sorted(glob.glob(os.path.join(checkpoint_dir, "step=*.ckpt")), key=_step_of, reverse=True)
    for path in steps:
        if is_complete_checkpoint(path):
            log.warning("%s is missing or incomplete; resuming from %s", last, path)
            return path
    return None
