"""Validation during training: every N optimizer steps rank 0 scores the model on a fixed held-out set and logs
the scores next to the loss (``val/<metric>``), with the EMA weights when there are some.

- ``fill50k``: ``training.eval_fill`` on held-out Fill50K outlines (IoU of the filled circle, colour accuracy);
- any other condition of ``cldm.evaluate`` (``canny``, ``hed``, ``softedge``, ``lineart``, ``depth``, ``seg``,
  ``pose``): its controllability score (ControlNet++'s benchmark: the condition extracted from the generated
  image against the one it was generated from), on the images and prompts of ``--val-data`` (a folder of images
  with ``<stem>.txt`` prompts, or a CSV / JSON-lines file, as ``python -m cldm.evaluate --images`` reads).
"""
import logging
import time
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class Validation(pl.Callback):
    def __init__(self, every: int, metric: str = "fill50k", samples: int = 16, ddim_steps: int = 20,
                 data: Optional[str] = None, size: int = 0, annotator_ckpts: Optional[str] = None):
        from cldm.eval_conditions import CONDITIONS
        if metric not in CONDITIONS:
            raise ValueError(f"unknown --val-metric {metric!r}; choose one of {', '.join(sorted(CONDITIONS))}")
        if metric != "fill50k" and not data:
            raise ValueError(f"--val-metric {metric} needs --val-data (held-out images with prompts)")
        self.every, self.metric, self.samples, self.ddim_steps = every, metric, samples, ddim_steps
        self.data, self.size, self.annotator_ckpts = data, size, annotator_ckpts
        self._last = None
        self._held_out = None

    def _score(self, pl_module: pl.LightningModule) -> dict:
        if self.metric == "fill50k":
            from training.eval_fill import evaluate
            return evaluate(pl_module, n=self.samples, steps=self.ddim_steps, batch_size=self.samples)
        from cldm.app.annotators import Annotators
        from cldm.eval_conditions import CONDITIONS
        from cldm.evaluate import evaluate, image_samples
        if self._held_out is None:
            side = self.size or pl_module.image_size * 8
            self._held_out = (image_samples(Path(self.data), None, self.samples, side, side, seed=1000),
                              Annotators(str(pl_module.device), self.annotator_ckpts))
        samples, annotators = self._held_out
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                summary, _, _ = evaluate(pl_module, CONDITIONS[self.metric], samples, annotators,
                                         steps=self.ddim_steps, progress=False)
        finally:
            pl_module.train(was_training)
        return summary

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every <= 0 or step == 0 or step % self.every or not trainer.is_global_zero or self._last == step:
            return  # (several batches end on one step under gradient accumulation)
        self._last = step
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]), pl_module.ema_scope():
            scores = self._score(pl_module)
        metrics = {f"val/{k}": float(v) for k, v in scores.items() if k != "n"}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        log.info("validation (%s) at step %d (%.1f s): %s", self.metric, step, time.perf_counter() - start,
                 ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
