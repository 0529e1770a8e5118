"""Exponential moving average of a model's parameters, stored as buffers so ``model_ema.*`` keys load.

Buffer names are the parameter names with the dots removed (upstream's ``LitEma`` layout, e.g.
``diffusion_model.input_blocks.0.0.weight`` -> ``diffusion_modelinput_blocks00weight``).
"""
from contextlib import contextmanager

import torch
from torch import nn


class LitEma(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_updates: bool = True):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_updates else -1, dtype=torch.int))
        self.shadow_names = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                self.shadow_names[name] = name.replace(".", "")
                self.register_buffer(self.shadow_names[name], p.detach().clone())

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        """Move the averages towards ``model``'s parameters; warm-up decay (1+n)/(10+n) as upstream."""
        decay = float(self.decay)
        if self.num_updates >= 0:
            self.num_updates += 1
            decay = min(decay, (1 + float(self.num_updates)) / (10 + float(self.num_updates)))
        buffers = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if name in self.shadow_names:
                shadow = buffers[self.shadow_names[name]]
                shadow.sub_((1.0 - decay) * (shadow - p.to(shadow.dtype)))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        buffers = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if name in self.shadow_names:
                p.copy_(buffers[self.shadow_names[name]])

    @contextmanager
    def average_parameters(self, model: nn.Module):
        """Temporarily put the averaged weights into ``model`` (for sampling/validation)."""
        saved = [p.detach().clone() for p in model.parameters()]
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(model.parameters(), saved):
                    p.copy_(s)
