"""The training DataLoader, made inside each process once its rank is known (a LightningDataModule), with a
``ResumableBatchSampler`` (see ``training.resume``) in place of Lightning's DistributedSampler."""
from typing import Optional

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from training.resume import ExactResume, ResumableBatchSampler, SeededItems


class TrainData(pl.LightningDataModule):
    """One data set, ``batch_size`` per process, batches kept within the data set's groups (``groups()``, e.g.
    aspect-ratio buckets) if it has them."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, resume: ExactResume, workers: int = 0,
                 shuffle: bool = True):
        super().__init__()
        self.dataset, self.batch_size, self.seed, self.resume = dataset, batch_size, seed, resume
        self.workers, self.shuffle = workers, shuffle
        self.sampler: Optional[ResumableBatchSampler] = None

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        groups = self.dataset.groups() if hasattr(self.dataset, "groups") else None
        self.sampler = ResumableBatchSampler(len(self.dataset), self.batch_size, seed=self.seed, shuffle=self.shuffle,
                                             groups=groups, rank=rank, world_size=world)
        self.resume.attach(self.sampler)
        # Not persistent: each epoch's workers must get the sampler's new epoch (SeededItems reads it).
        return DataLoader(SeededItems(self.dataset, self.sampler, self.seed), batch_sampler=self.sampler,
                          num_workers=self.workers, persistent_workers=False,
                          pin_memory=torch.cuda.is_available())
