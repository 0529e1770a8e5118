"""Multi-head attention in float32 on x86-64 CPUs with AVX-512: a small C++ kernel (``cpu_attention.cpp``),
compiled with the system's C++ compiler at its first use and cached (``CONTROLNET_CACHE``, default
``~/.cache/controlnet``).

Why: torch's CPU flash attention does its products with MKL's sgemm, which on AMD CPUs (Zen 4 here) runs
without AVX-512: ~125 GFLOP/s on 2 cores at the UNet's 40-wide heads, where this kernel reaches ~175, and the
64x64 level's self-attention is a fifth of a 512 px step. Same maths as torch's kernel (blocked online
softmax in float32, scale ``dim_head ** -0.5``), with the same error against float64.

``supports`` says where it runs: inference (no graph to record) on CPU float32 tensors laid out as the
projections leave them. Elsewhere, or on a machine without a compiler or AVX-512, callers keep torch's
``scaled_dot_product_attention``. ``CONTROLNET_CPU_KERNELS=0`` turns the kernel off.
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
from typing import Optional

import torch

SOURCE = Path(__file__).with_name("cpu_attention.cpp")
COMPILE_FLAGS = ("-O3", "-std=c++17", "-mavx512f", "-mfma", "-fopenmp", "-shared", "-fPIC")
# With fewer queries (the 8x8 level's 64) torch's kernel is as fast or faster: too little work per head.
MIN_QUERIES = 128

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    root = os.environ.get("CONTROLNET_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "controlnet"
    return Path(root) / "kernels"


def cpu_has_avx512() -> bool:
    """Whether this (Linux) CPU runs the kernel's instructions: AVX-512F and FMA."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return {"avx512f", "fma"} <= set(flags)


def build(source: Path = SOURCE, directory: Optional[Path] = None, compiler: Optional[str] = None) -> Path:
    """Compile ``source`` into a shared library in ``directory``, once per source text, compiler and flags.
    The library appears under its final name only when complete, so concurrent builds cannot see half a file."""
    compiler = compiler or os.environ.get("CXX") or "c++"
    executable = shutil.which(compiler)
    if executable is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX to use another)")
    version = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=60).stdout
    digest = hashlib.sha256(source.read_bytes() + version.encode() + " ".join(COMPILE_FLAGS).encode())
    directory = Path(directory) if directory is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{source.stem}-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    fd, partial = tempfile.mkstemp(prefix=f".{source.stem}-", suffix=".so", dir=directory)
    os.close(fd)
    try:
        result = subprocess.run([executable, *COMPILE_FLAGS, "-o", partial, str(source)],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} could not compile {source}:\n{result.stderr[-2000:]}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


@functools.lru_cache(maxsize=None)
def _kernel():
    """The compiled entry point, or None where the kernel cannot run (said once in the log)."""
    if os.environ.get("CONTROLNET_CPU_KERNELS", "1") == "0" or not cpu_has_avx512():
        return None
    try:
        library = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        log.warning("using torch's attention: the AVX-512 attention kernel is unavailable (%s)", err)
        return None
    entry = library.controlnet_attention_f32
    pointer, size, strides = ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)
    entry.argtypes = [pointer] * 4 + [size] * 5 + [strides] * 4 + [ctypes.c_float, ctypes.c_int]
    entry.restype = ctypes.c_int
    return entry


def available() -> bool:
    return _kernel() is not None


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether ``attention(q, k, v, heads)`` runs here: (b, tokens, width) float32 CPU tensors, each token's
    features contiguous, at least ``MIN_QUERIES`` queries, no autograd graph (the kernel has no backward)."""
    tensors = (q, k, v)
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 3 and t.stride(-1) == 1
                for t in tensors)
            and q.shape[0] == k.shape[0] == v.shape[0] and q.shape[2] == k.shape[2] == v.shape[2]
            and q.shape[1] >= MIN_QUERIES and k.shape[1] == v.shape[1] > 0
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            and available())


@torch.library.custom_op("controlnet::cpu_attention", mutates_args=(), device_types="cpu")
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q_h k_h^T / sqrt(d)) v_h for each of ``heads`` heads of width d, on (b, n, heads * d) queries and
    (b, m, heads * d) keys and values; returns (b, n, heads * d). Check ``supports`` first."""
    batch, queries, width = q.shape
    dim = width // heads
    out = q.new_empty(batch, queries, width)
    strides = [(ctypes.c_int64 * 3)(t.stride(0), t.stride(1), dim) for t in (q, k, v, out)]
    status = _kernel()(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), batch, heads, queries,
                       k.shape[1], dim, *strides, dim ** -0.5, torch.get_num_threads())
    if status != 0:
        raise MemoryError(f"the attention kernel could not allocate its scratch memory ({torch.get_num_threads()} "
                          "threads)")
    return out


@attention.register_fake
def _(q, k, v, heads):
    return q.new_empty(q.shape)
