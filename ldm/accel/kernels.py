"""Our float32 CPU kernels for x86-64 with AVX-512, in C++ (``cpu_attention.cpp``, ``cpu_winograd.cpp``), compiled
into one library with the system's C++ compiler at first use and cached (``CONTROLNET_CACHE``, default
``~/.cache/controlnet``). They run on torch's own OpenMP threads. The model never calls them itself: the
inference backend ``ldm.accel.cpu`` swaps in layers that do.

Why: on the AMD Zen 4 CPU they were written on, torch's float32 kernels leave two kinds of work well short of the FMA peak.
* Attention: torch's CPU flash attention does its products with MKL's sgemm, which runs without AVX-512
  here: ~125 GFLOP/s on 2 cores at the UNet's 40-wide heads, where ``attention`` reaches ~175 (the 64x64
  level's self-attention is a fifth of a 512 px step). Same maths: blocked online softmax in float32, scale
  ``dim_head ** -0.5``, error against float64 on par with torch's.
* 3x3 convolutions, already at the peak with oneDNN, have 2.25x less arithmetic with Winograd's F(2x2, 3x3):
  ``winograd_conv3x3`` takes the 64x64 and 32x32 levels' convolutions in 0.5-0.77x oneDNN's time, at about
  twice the float32 rounding error of a direct convolution (~1e-6 relative).

``attention_supported`` / ``winograd_supported`` say where each runs: inference (no graph to record) on CPU
float32 tensors. Elsewhere, or on a machine without a compiler or AVX-512, callers keep torch's operators.
``CONTROLNET_CPU_KERNELS=0`` turns both off.
"""
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch

SOURCES = (Path(__file__).with_name("cpu_attention.cpp"), Path(__file__).with_name("cpu_winograd.cpp"))
# -fopenmp: the library's OpenMP calls resolve to the libgomp torch has loaded, so they use torch's threads
COMPILE_FLAGS = ("-O3", "-std=c++17", "-mavx512f", "-mfma", "-fopenmp", "-shared", "-fPIC")
# With fewer queries (the 8x8 level's 64) torch's attention is as fast or faster: too little work per head.
MIN_QUERIES = 128
# Winograd pays from 32x32 images (1.3-1.6x oneDNN there, 1.7-2x at 64x64; 0.65x at 16x16) ...
WINOGRAD_MIN_PIXELS = 32 * 32
# Its transformed weights (16 / 9 of the weight, in 16 planes padded by 16 floats each) are made at each call, for
# at most this many channel pairs at a time (under 32 MiB, glibc's largest reusable block): larger weights run in
# output-channel slices.
WINOGRAD_SLICE_WEIGHTS = 2**19 - 64  # in_channels * out_channels

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    root = os.environ.get("CONTROLNET_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "controlnet"
    return Path(root) / "kernels"


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                           if line.startswith("flags")), []))


def cpu_has_avx512() -> bool:
    """Whether this (Linux) CPU runs the kernel's instructions: AVX-512F and FMA."""
    return platform.machine().lower() in ("x86_64", "amd64") and {"avx512f", "fma"} <= cpu_flags()


def enabled() -> bool:
    """False when the user turned the kernels off with ``CONTROLNET_CPU_KERNELS=0``."""
    return os.environ.get("CONTROLNET_CPU_KERNELS", "1") != "0"


def build(sources: Sequence[Path] = SOURCES, directory: Optional[Path] = None, compiler: Optional[str] = None,
          name: str = "cpu_kernels") -> Path:
    """Compile ``sources`` into one shared library in ``directory``, once per source text, compiler and flags.
    The library appears under its final name only when complete, so concurrent builds cannot see half a file."""
    compiler = compiler or os.environ.get("CXX") or "c++"
    executable = shutil.which(compiler)
    if executable is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX to use another)")
    version = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=60).stdout
    digest = hashlib.sha256(b"".join(Path(s).read_bytes() for s in sources) + version.encode()
                            + " ".join(COMPILE_FLAGS).encode())
    directory = Path(directory) if directory is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    fd, partial = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=directory)
    os.close(fd)
    try:
        result = subprocess.run([executable, *COMPILE_FLAGS, "-o", partial, *map(str, sources)],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} could not compile {', '.join(map(str, sources))}:\n"
                               f"{result.stderr[-2000:]}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


@functools.lru_cache(maxsize=None)
def _library() -> Optional[ctypes.CDLL]:
    """The compiled kernels, or None where they cannot run (said once in the log)."""
    if not enabled() or not cpu_has_avx512():
        return None
    try:
        library = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        log.warning("using torch's operators: the AVX-512 kernels are unavailable (%s)", err)
        return None
    pointer, size, strides = ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)
    library.controlnet_attention_f32.argtypes = ([pointer] * 4 + [size] * 5 + [strides] * 4
                                                 + [ctypes.c_float, ctypes.c_int])
    library.controlnet_winograd_conv3x3_f32.argtypes = [pointer] * 4 + [size] * 5 + [ctypes.c_int]
    for entry in (library.controlnet_attention_f32, library.controlnet_winograd_conv3x3_f32):
        entry.restype = ctypes.c_int
    return library


def available() -> bool:
    return _library() is not None


def _inference_on_cpu_float32(*tensors: torch.Tensor) -> bool:
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            and not torch.is_autocast_enabled("cpu"))  # under autocast torch's operators run in bf16


def attention_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether ``attention(q, k, v, heads)`` runs here: (b, tokens, width) float32 CPU tensors, each token's
    features contiguous, at least ``MIN_QUERIES`` queries, no autograd graph (the kernel has no backward)."""
    return (_inference_on_cpu_float32(q, k, v) and all(t.dim() == 3 and t.stride(-1) == 1 for t in (q, k, v))
            and q.shape[0] == k.shape[0] == v.shape[0] and q.shape[2] == k.shape[2] == v.shape[2]
            and q.shape[1] >= MIN_QUERIES and k.shape[1] == v.shape[1] > 0 and available())


def winograd_supported(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                       upsampled: bool = False) -> bool:
    """Whether ``winograd_conv3x3(x, weight, bias)`` runs here (the convolution's stride 1 and padding 1 being
    the caller's to check): a float32 CPU batch of images with even sides of at least ``WINOGRAD_MIN_PIXELS``,
    a 3x3 weight, no autograd graph. ``upsampled``: whether it runs on ``x`` upsampled 2x instead."""
    if x.dim() != 4 or weight.shape[1:] != (x.shape[1], 3, 3):
        return False
    tensors = (x, weight) if bias is None else (x, weight, bias)
    height, width = (2 * x.shape[2], 2 * x.shape[3]) if upsampled else x.shape[2:]
    return (_inference_on_cpu_float32(*tensors) and height % 2 == 0 and width % 2 == 0
            and height * width >= WINOGRAD_MIN_PIXELS and available())


def _run(entry, *args) -> None:
    if entry(*args, torch.get_num_threads()) != 0:
        raise MemoryError(f"{entry.__name__} could not allocate its scratch memory")


@torch.library.custom_op("controlnet::attention", mutates_args=(), device_types="cpu")
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q_h k_h^T / sqrt(d)) v_h for each of ``heads`` heads of width d, on (b, n, heads * d) queries and
    (b, m, heads * d) keys and values; returns (b, n, heads * d). Check ``attention_supported`` first."""
    batch, queries, width = q.shape
    dim = width // heads
    out = q.new_empty(batch, queries, width)
    strides = [(ctypes.c_int64 * 3)(t.stride(0), t.stride(1), dim) for t in (q, k, v, out)]
    _run(_library().controlnet_attention_f32, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), batch,
         heads, queries, k.shape[1], dim, *strides, dim ** -0.5)
    return out


@attention.register_fake
def _(q, k, v, heads):
    return q.new_empty(q.shape)


@torch.library.custom_op("controlnet::winograd_conv3x3", mutates_args=(), device_types="cpu")
def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 ``weight``, by Winograd's F(2x2, 3x3). Check
    ``winograd_supported`` first."""
    x = x.contiguous()
    slice_channels = max(1, WINOGRAD_SLICE_WEIGHTS // x.shape[1])
    if weight.shape[0] <= slice_channels:
        return _winograd(x, weight.contiguous(), None if bias is None else bias.contiguous())
    weights = weight.split(slice_channels)
    biases = [None] * len(weights) if bias is None else bias.split(slice_channels)
    return torch.cat([_winograd(x, w.contiguous(), None if b is None else b.contiguous())
                      for w, b in zip(weights, biases)], dim=1)


def _winograd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    batch, channels, height, width = x.shape
    out = x.new_empty(batch, weight.shape[0], height, width)
    _run(_library().controlnet_winograd_conv3x3_f32, x.data_ptr(), weight.data_ptr(),
         None if bias is None else bias.data_ptr(), out.data_ptr(), batch, channels, height, width, weight.shape[0])
    return out


@winograd_conv3x3.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0], *x.shape[2:])
