"""``--memory-preset``: named bundles of the memory-saving options, for a GPU of that size at 512 px.

Each preset sets flags (and logs what it set); an explicit flag that contradicts a preset is overridden, so
combine a preset only with flags it does not touch (batch size, steps, data, ...):

    preset  gradient checkpointing  precision   cached latents + text  batch / accumulation   optimizer   FSDP2 CPU offload
    none    as the config / flags   as --precision  as flags           as flags               as flags    no
    24gb    on                      bf16 mixed  no                     as flags               as flags    no
    16gb    on                      bf16 mixed  yes                    as flags               as flags    no
    12gb    on                      bf16 mixed  yes                    1 x (batch size)       adamw8bit   no
    8gb     on                      bf16 mixed  yes                    1 x (batch size)       adamw       yes (fsdp_cpu_offload)

The 12gb/8gb presets keep the effective batch (``--batch-size`` samples per optimizer step) by accumulating
gradients over single-sample batches; 12gb's 8-bit AdamW needs bitsandbytes (8gb keeps plain AdamW: its state
sits in CPU memory with the offload, and bitsandbytes' update does not take FSDP2's sharded tensors). Measured
figures: docs/training.md and ``python -m bench.bench_train --presets``.
"""
import argparse
import logging

log = logging.getLogger(__name__)

PRESETS = ("none", "24gb", "16gb", "12gb", "8gb")


def apply_preset(args: argparse.Namespace) -> argparse.Namespace:
    preset = getattr(args, "memory_preset", "none")
    if preset == "none":
        return args
    settings = {"no_grad_checkpointing": False, "precision": "bf16"}
    if preset in ("16gb", "12gb", "8gb"):
        settings.update(cache_latents=True, cache_text=True)
    if preset in ("12gb", "8gb"):
        settings.update(batch_size=1, accumulate=args.batch_size * args.accumulate, optimizer="adamw8bit")
    if preset == "8gb":
        settings.update(strategy="fsdp_cpu_offload", optimizer="adamw")
    for key, value in settings.items():
        setattr(args, key, value)
    log.info("--memory-preset %s: %s", preset, ", ".join(f"{k}={v}" for k, v in settings.items()))
    return args
