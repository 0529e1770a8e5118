"""Image logging during training (upstream ``cldm/logger.py``).

Every ``batch_frequency`` batches (by batch index in the epoch, as upstream, so also the first batch of every
epoch) the model's ``log_images`` grids are written to
``<save_dir>/image_log/train/<name>_gs-<global step>_e-<epoch>_b-<batch>.png``: reconstruction, control,
conditioning (the prompt as text) and samples_cfg_scale_9.00. Only rank 0 draws and writes.
"""
import logging
import math
import os
from typing import Any, Mapping, Optional

import cv2
import numpy as np
import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


def image_grid(images: torch.Tensor, nrow: int = 4, padding: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """(n, c, h, w) -> (c, H, W): ``nrow`` images per row in a ``padding``-pixel frame (torchvision's
    ``make_grid`` layout, which upstream's grids have; a single image is returned unframed)."""
    n, c, h, w = images.shape
    if n == 1:
        return images[0]
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = images.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i, image in enumerate(images):
        top = (i // cols) * (h + padding) + padding
        left = (i % cols) * (w + padding) + padding
        grid[:, top:top + h, left:left + w] = image
    return grid


def save_grid(images: torch.Tensor, path: str) -> None:
    """Write (n, 3, h, w) images in [-1, 1] as one PNG grid (the frame is mid-grey, as upstream's)."""
    grid = (image_grid(images.detach().float().cpu().clamp(-1.0, 1.0)) + 1.0) / 2.0
    rgb = (grid.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


class ImageLogger(pl.Callback):
    """Write the model's ``log_images`` grids every ``batch_frequency`` batches (0 disables).

    The model samples in eval mode without gradients, then goes back to train mode.
    ``log_images_kwargs`` go to ``log_images`` (e.g. ``ddim_steps``; upstream's default is 50).
    """

    def __init__(self, save_dir: str, batch_frequency: int = 300, max_images: int = 4,
                 log_images_kwargs: Optional[Mapping[str, Any]] = None):
        super().__init__()
        self.root = os.path.join(save_dir, "image_log", "train")
        self.batch_frequency = batch_frequency
        self.max_images = max_images
        self.log_images_kwargs = dict(log_images_kwargs or {})

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self.batch_frequency > 0 and batch_idx % self.batch_frequency == 0 and trainer.is_global_zero:
            self.log_batch(pl_module, batch, batch_idx)

    def log_batch(self, pl_module: pl.LightningModule, batch: Mapping, batch_idx: int) -> None:
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                images = pl_module.log_images(batch, N=self.max_images, **self.log_images_kwargs)
        finally:
            pl_module.train(was_training)
        suffix = f"gs-{pl_module.global_step:06}_e-{pl_module.current_epoch:06}_b-{batch_idx:06}.png"
        for name, grid in images.items():
            save_grid(grid[:self.max_images], os.path.join(self.root, f"{name}_{suffix}"))
        log.info("image log: %d grids for global step %d in %s", len(images), pl_module.global_step, self.root)
