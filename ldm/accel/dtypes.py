"""Which precision to run inference in: ``--dtype auto|fp32|fp16|bf16`` of the apps, the CLI and evaluation.

``auto`` picks bfloat16 where the hardware computes it natively: CPUs with AMX (Intel Sapphire Rapids and
later; 2.6x a float32 step on the Xeon measured in docs/performance.md) and CUDA GPUs that support it (float16
on older GPUs); float32 elsewhere. Quality at bfloat16 is checked on the tiny model (docs/performance.md).
"""
import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")


def preferred_dtype(device) -> torch.dtype:
    """The fastest precision that keeps the model's quality on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        from ldm.accel.cpu import cpu_has_amx
        return torch.bfloat16 if cpu_has_amx() else torch.float32
    return torch.float32


def resolve_dtype(name: str, device) -> torch.dtype:
    """``name`` (one of ``DTYPE_CHOICES`` or a torch dtype name) as a torch dtype, ``auto`` per device."""
    if name == "auto":
        return preferred_dtype(device)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[name]
