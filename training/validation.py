"""Validation during training: every N optimizer steps, the Fill50K scores (``training.eval_fill``: IoU of the
filled circle and colour accuracy on fixed held-out outlines) are computed by rank 0 and logged next to the loss
as ``val/iou``, ``val/color_acc``."""
import logging
import time

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class Fill50KValidation(pl.Callback):
    def __init__(self, every: int, samples: int = 16, ddim_steps: int = 20):
        self.every, self.samples, self.ddim_steps = every, samples, ddim_steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every <= 0 or step == 0 or step % self.every or not trainer.is_global_zero:
            return
        if getattr(self, "_last", None) == step:  # gradient accumulation: several batches end on one step
            return
        self._last = step
        from training.eval_fill import evaluate
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]), pl_module.ema_scope():
            scores = evaluate(pl_module, n=self.samples, steps=self.ddim_steps, batch_size=self.samples)
        metrics = {f"val/{k}": float(v) for k, v in scores.items() if k != "n"}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        log.info("validation at step %d (%.1f s): %s", step, time.perf_counter() - start,
                 ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
