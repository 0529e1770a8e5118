"""Opt-in inference backend for CPUs: ``model = accelerate_for_inference(model)``.

The model core (``ldm/``, ``cldm/cldm.py``) is plain PyTorch. This module swaps, for inference only, some of
its layers for variants that run other kernels, and logs once what it chose. Each variant is built as a
*view* of the layer it replaces: it holds the very same ``Parameter`` objects (and parameter dict), so
``state_dict``, parameter counts and in-place weight edits are exactly those of the plain model, and
``restore(model)`` puts the plain layers back. Nothing is cached from the weights, so nothing goes stale.

Routes, per machine (``plan_for``):
* float32 on x86-64 CPUs with AVX-512 and a C++ compiler (``ldm.accel.kernels``):
  - self-attention with >= 128 queries on our AVX-512 kernel (``KernelAttention``);
  - 3x3 stride-1 convolutions on >= 32x32 images by Winograd's F(2x2, 3x3) (``WinogradConv2d``), including
    each upsampler's convolution, which runs on the upsampled image.
  Measured per route against torch's operators (bench/bench_routes.py) on the AMD Zen 4 they were tuned on
  (attention 1.15-1.35x, Winograd 1.3-2.0x torch's speed) and on an Intel Xeon with AVX-512 and AMX (attention
  1.2-1.6x since its keys and values are packed per head, Winograd 1.6-1.7x since its planes are padded, 2
  threads): both routes win on both CPUs, so both are kept (the packing and padding were measured on the Xeon
  only). Whole 512 px step on the Xeon: 0.79-0.84x the plain core's time (docs/performance.md).
* bfloat16 / float16 on CPU: torch's oneDNN kernels use AMX / AVX-512-BF16 where the CPU has them. The backend
  stores the convolution weights channels-last, so oneDNN's reduced-precision convolutions run on NHWC
  activations without re-laying out every input and output: 0.87-0.89x the plain core's step on the Intel Xeon
  (AMX) of docs/performance.md; parameters keep their values, ``restore`` puts the plain layout back. Group norms
  run in the activations' precision (``ReducedPrecisionGroupNorm``: torch's CPU kernel keeps float32
  statistics), which drops two casts of every normalised activation (3-5x the norm's own time).
* float32 and bfloat16 on any CPU: weight-heavy 3x3 convolutions on small images (>= 1280 input channels, at
  most 576 output pixels: the 16x16 and 8x8 levels at 512 px) as one matrix product (``ldm.accel.conv_matmul``,
  ``MatmulConv2d``), which spares oneDNN's per-call weight reorder: 0.2-0.9x torch's time per layer, the whole
  512 px step about 0.94x the backend's time without it (bf16 and fp32), on the Intel Xeon (AVX-512, AMX) only so
  far; re-measure elsewhere with ``python -m bench.bench_routes``.
* Other devices (CUDA, MPS): nothing; torch's kernels are the right ones.
Between the ControlNet and the UNet, freed activation memory is handed back to the OS (``release_free_memory``,
a forward pre-hook on the UNet), which lowers the peak resident memory of a 512 px step on glibc systems.

``CONTROLNET_CPU_KERNELS=0`` turns the kernels off; the kernels are compiled only when a route will use them.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ldm.accel import conv_matmul, kernels
from ldm.modules.attention import ScaledDotProductAttention
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.diffusionmodules.util import GroupNorm32
from ldm.util import release_free_memory

log = logging.getLogger(__name__)


def _view_of(module: nn.Module, cls: type) -> nn.Module:
    """A ``cls`` instance that shares every attribute of ``module``: the same parameter, buffer and child dicts
    (so the same Parameter objects), the same hyper-parameters. Only ``forward`` differs."""
    view = cls.__new__(cls)
    view.__dict__ = module.__dict__.copy()  # the dicts inside are shared, not copied
    object.__setattr__(view, "_plain", module)  # an attribute, not a child module: restore() puts it back
    return view


class KernelAttention(ScaledDotProductAttention):
    """``ScaledDotProductAttention`` on the AVX-512 kernel where it runs (float32, no graph, >= 128 queries)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        if kernels.attention_supported(q, k, v):
            return kernels.attention(q, k, v, heads)
        return super().forward(q, k, v, heads)


class MatmulConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that runs as one matrix product where ``ldm.accel.conv_matmul`` wins (weight-heavy 3x3
    convolutions on small images, no graph to record), and as ``nn.Conv2d`` otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if conv_matmul.supported(x, self.weight, self.stride[0]):
            return conv_matmul.conv3x3(x, self.weight, self.bias, self.stride[0])
        return super().forward(x)


class WinogradConv2d(MatmulConv2d):
    """A 3x3 / stride 1 / padding 1 convolution that runs Winograd's F(2x2, 3x3) kernel on large enough
    float32 inputs without a graph to record, and ``MatmulConv2d`` otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.winograd_supported(x, self.weight, self.bias):
            return kernels.winograd_conv3x3(x, self.weight, self.bias)
        return super().forward(x)


class ReducedPrecisionGroupNorm(GroupNorm32):
    """``GroupNorm32`` without its float32 round trip for bfloat16 / float16 activations on the CPU: torch's CPU
    kernel accumulates their statistics in float32 itself, so only the two casts of the whole activation go,
    which cost 3-5x the norm. The result differs from the round trip by output rounding (1 ulp)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)


def _winograd_shaped(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


# The routes, as the plan names them
ATTENTION_KERNEL = "attention layers on the AVX-512 kernel"
WINOGRAD = "3x3 convolutions by Winograd"
CHANNELS_LAST = "convolution weights stored channels-last"
GROUP_NORM = "group norms without a float32 copy of their input"
MATMUL_CONV = "weight-heavy 3x3 convolutions as one matrix product on small images"
RELEASE_MEMORY = "UNets handing freed memory back to the OS before running"


@dataclass
class Plan:
    """What ``accelerate_for_inference`` chose for one model, and why."""
    device: str
    dtype: torch.dtype
    routes: Dict[str, int] = field(default_factory=dict)  # route -> layers that take it
    reasons: List[str] = field(default_factory=list)  # why other routes do not run

    def summary(self) -> str:
        taken = ", ".join(f"{n} {route}" for route, n in self.routes.items() if n) or "no layer swapped"
        why = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        return f"CPU inference backend on {self.device}/{str(self.dtype).replace('torch.', '')}: {taken}{why}"


def plan_for(device: torch.device, dtype: torch.dtype, use_kernels: Optional[bool] = None) -> Plan:
    """Which routes run for a model on ``device`` in ``dtype`` on this machine (compiling the kernels only if
    a route needs them)."""
    plan = Plan(str(device), dtype)
    if device.type != "cpu":
        plan.reasons.append(f"torch's own kernels are the right ones on {device.type}")
        return plan
    if dtype in (torch.bfloat16, torch.float16):
        plan.routes = {CHANNELS_LAST: 0, GROUP_NORM: 0}
        if dtype in conv_matmul.DTYPES:
            plan.routes[MATMUL_CONV] = 0
        plan.reasons.append(f"our kernels are float32 only; {str(dtype).replace('torch.', '')} runs on torch's "
                            f"oneDNN kernels{' with AMX' if cpu_has_amx() else ''}")
        return plan
    if dtype != torch.float32:
        plan.reasons.append(f"nothing for {dtype}")
        return plan
    plan.routes = {MATMUL_CONV: 0}
    if use_kernels is False:
        plan.reasons.append("kernels turned off by the caller")
    elif not kernels.enabled():
        plan.reasons.append("kernels turned off (CONTROLNET_CPU_KERNELS=0)")
    elif not kernels.cpu_has_avx512():
        plan.reasons.append("this CPU lacks AVX-512")
    elif not kernels.available():
        plan.reasons.append("the kernels could not be built (see the warning above)")
    else:
        plan.routes.update({ATTENTION_KERNEL: 0, WINOGRAD: 0})
    return plan


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bfloat16 (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in kernels.cpu_flags()


def _parameter(module: nn.Module) -> Optional[torch.Tensor]:
    return next(module.parameters(), None)


def accelerate_for_inference(model: nn.Module, use_kernels: Optional[bool] = None) -> nn.Module:
    """Swap ``model``'s layers for the faster variants this machine runs (see the module docstring); returns
    ``model`` itself. Apply it after moving the model to its device and dtype and before sampling; the swapped
    layers compute the same function (training and other devices fall back to torch's operators inside
    them). ``use_kernels=False`` keeps our C++ kernels off. Undo with ``restore(model)``."""
    weight = _parameter(model)
    if weight is None:
        return model
    plan = plan_for(weight.device, weight.dtype, use_kernels)
    if CHANNELS_LAST in plan.routes:
        plan.routes[CHANNELS_LAST] = sum(isinstance(m, nn.Conv2d) for m in model.modules())
        model.to(memory_format=torch.channels_last)
        release_free_memory()  # the weights' old copies, which glibc would otherwise keep mapped
    if plan.routes:
        for module in list(model.modules()):
            for child_name, child in list(module.named_children()):
                swapped = _swap(child, plan)
                if swapped is not None:
                    setattr(module, child_name, swapped)
    hooked = 0
    if weight.device.type == "cpu":
        for module in model.modules():
            if isinstance(module, UNetModel) and not getattr(module, "_release_hook", None):
                module._release_hook = module.register_forward_pre_hook(_release_before_unet)
                hooked += 1
    if hooked:
        plan.routes[RELEASE_MEMORY] = hooked
    log.info(plan.summary())
    model.acceleration_plan = plan
    return model


def _swap(child: nn.Module, plan: Plan) -> Optional[nn.Module]:
    if GROUP_NORM in plan.routes and type(child) is GroupNorm32:
        plan.routes[GROUP_NORM] += 1
        return _view_of(child, ReducedPrecisionGroupNorm)
    if ATTENTION_KERNEL in plan.routes and type(child) is ScaledDotProductAttention:
        plan.routes[ATTENTION_KERNEL] += 1
        return _view_of(child, KernelAttention)
    if type(child) is not nn.Conv2d:
        return None
    matmul = MATMUL_CONV in plan.routes and conv_matmul.shaped(child)
    if matmul:
        plan.routes[MATMUL_CONV] += 1
    if WINOGRAD in plan.routes and _winograd_shaped(child):
        plan.routes[WINOGRAD] += 1
        return _view_of(child, WinogradConv2d)  # which takes the matrix product route on small images too
    return _view_of(child, MatmulConv2d) if matmul else None


def _release_before_unet(module, args):
    if not torch.is_grad_enabled():
        release_free_memory()  # the ControlNets' freed activations, before the UNet's pile onto them


def restore(model: nn.Module) -> nn.Module:
    """Undo ``accelerate_for_inference``: the plain layers back in place (they share the parameters, so any
    weight edit made meanwhile is kept), on ``model`` and any part of it that was accelerated; returns ``model``."""
    for module in list(model.modules()):
        plan = module.__dict__.pop("acceleration_plan", None)
        if plan is not None and plan.routes.get(CHANNELS_LAST):
            module.to(memory_format=torch.contiguous_format)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            plain = getattr(child, "_plain", None)
            if plain is not None:
                setattr(module, child_name, plain)
        hook = getattr(module, "_release_hook", None)
        if hook is not None:
            hook.remove()
            module._release_hook = None
    return model
