"""Device and precision, met in notebook 00 and taught in 05: one place decides what the hardware can do (bf16,
fp16 with a gradient scaler, TF32) and names the device every measurement was made on."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import os
import platform
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend

from .basics import ShakeGPTError, first_line

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def get_device(requested: str | None = None) -> torch.device:
    """The requested device, else the best available: CUDA, then Apple's MPS, then the CPU."""
    if requested and requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ShakeGPTError(f"--device {requested}: no CUDA GPU is available here.")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ShakeGPTError(f"--device {requested}: Apple's MPS is not available here.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX), where bf16 beats fp32."""
    if sys.platform != "linux":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def ampere_or_newer(device: torch.device) -> bool:
    """Whether `device` is an NVIDIA GPU of Ampere (compute capability 8.0) or newer, the first with bf16 and TF32
    tensor cores."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def enable_tf32(device: torch.device, enabled: bool = True) -> bool:
    """Let fp32 matrix products use TF32 tensor cores (10-bit mantissa, ~8x faster) on Ampere and newer, or, with
    enabled=False, switch that off again. Returns whether TF32 is now on."""
    on = enabled and ampere_or_newer(device)
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return on


@dataclass
class Precision:
    """How the forward pass runs: an autocast dtype (float32 means none) and, for fp16, a gradient scaler."""

    device_type: str
    dtype: torch.dtype
    scaler: torch.amp.GradScaler | None = field(default=None)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return {value: key for key, value in DTYPES.items()}[self.dtype]


def auto_dtype(device: torch.device) -> str:
    """bf16 where the hardware computes it natively; fp16 (with loss scaling) on older CUDA GPUs; else fp32."""
    if device.type == "cuda":
        return "bf16" if ampere_or_newer(device) else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def get_precision(device: torch.device | str, dtype: str = "auto") -> Precision:
    """The Precision for `dtype` ('auto', 'bf16', 'fp16' or 'fp32') on `device`."""
    device = torch.device(device)
    name = auto_dtype(device) if dtype == "auto" else dtype
    if name not in DTYPES:
        raise ShakeGPTError(f"unknown dtype {dtype!r}; choose auto, bf16, fp16 or fp32.")
    if name == "fp16" and device.type not in ("cuda", "cpu"):
        raise ShakeGPTError(f"fp16 with loss scaling runs on CUDA GPUs and CPUs, not {device.type}; use bf16 or fp32.")
    # fp16 has 5 exponent bits: small gradients underflow to zero unless the loss is scaled up before backward.
    # On a CPU fp16 is slow (no native fp16 products) but exact enough to test the T4's code path anywhere.
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(device.type, DTYPES[name], scaler)


# The kernels behind F.scaled_dot_product_attention, by the names PyTorch's dispatcher gives its choice (SDPBackend).
ATTENTION_KERNELS = {
    "FLASH_ATTENTION": "flash",
    "EFFICIENT_ATTENTION": "memory-efficient",
    "CUDNN_ATTENTION": "cuDNN",
    "MATH": "math (unfused)",
}


def attention_kernel(
    device: torch.device | str, dtype: torch.dtype, n_head: int = 12, head_size: int = 64, seq_len: int = 1024
) -> str:
    """The kernel scaled_dot_product_attention runs for the model's causal attention in training on `device` at
    `dtype`, as PyTorch's own dispatcher picks it for tensors of that shape (flash, memory-efficient, cuDNN or math);
    it depends on the GPU, the dtype, the head size and the kernels switched on, so it is asked, not guessed."""
    device = torch.device(device)
    q = torch.zeros(1, n_head, seq_len, head_size, device=device, dtype=dtype, requires_grad=True)
    try:
        choice = torch._fused_sdp_choice(q, q, q, None, 0.0, True)
        name = ATTENTION_KERNELS.get(SDPBackend(choice).name, "unknown")
    except (AttributeError, RuntimeError, ValueError):  # a torch without this query, or a device it does not serve
        return "unknown"
    return f"{name} (CPU)" if device.type == "cpu" and name == "flash" else name


@functools.cache
def compile_problem(device: torch.device | str) -> str | None:
    """Why torch.compile cannot build and run code for `device` (one sentence), or None when it can. A small function
    with a backward pass is compiled and run once per device: a missing C++ compiler, a Triton without kernels for this
    GPU or another compiler error shows up here, in seconds, instead of at a run's first step."""
    device = torch.device(device)
    if device.type == "mps":
        return "torch.compile for Apple's MPS is still experimental in PyTorch"
    try:
        x = torch.randn(16, 16, device=device, requires_grad=True)
        compiled = torch.compile(lambda t: torch.nn.functional.gelu(t @ t).sum())
        compiled(x).backward()
    except Exception as error:  # noqa: BLE001  (the compiler raises many types; any of them means "not here")
        return f"torch.compile failed here: {type(error).__name__}: {first_line(error)}"
    return None


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the operating system. A CPU training
    step frees and reallocates large tensors (gradients, logit chunks) every time, and each one handed back returns
    as fresh zeroed pages, each a page fault (the README's CPU results say how many). Linux with glibc only;
    returns whether it applied."""
    if sys.platform != "linux":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl) or none by that name
        return False
    no_mmap, trim_threshold, top_pad = -4, -1, -2  # M_MMAP_MAX, M_TRIM_THRESHOLD, M_TOP_PAD in malloc.h
    settings = ((no_mmap, 0), (trim_threshold, 2**31 - 1), (top_pad, 256 * 2**20))
    return all(mallopt(option, value) == 1 for option, value in settings)


def use_threads(threads: int | None) -> None:
    """Let torch use `threads` CPU threads for its operations; None leaves torch's own choice."""
    if threads is not None:
        torch.set_num_threads(threads)


def set_seed(seed: int) -> None:
    """Seed Python's and PyTorch's generators (every device), so CPU runs repeat bit for bit."""
    random.seed(seed)
    torch.manual_seed(seed)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# Dense (no sparsity) peak FLOP/s of well-known NVIDIA GPUs from their datasheets, for model FLOPs utilisation.
# Each name pattern must tell a model from its neighbours: an L40S is not an L4, and an H100 PCIe (or NVL) is slower
# than the SXM part, which CUDA names "H100 80GB HBM3". The first pattern that matches decides.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    (r"\bH200 NVL\b", {"bf16": 836e12, "fp16": 836e12, "tf32": 418e12}),
    (r"\bH200\b", {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12}),
    (r"\bH100 NVL\b", {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12}),
    (r"\bH100 PCIe\b", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12}),
    (r"\bH100\b", {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12}),
    (r"\bA100\b", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12}),
    (r"\bL40S\b", {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12}),
    (r"\bL4\b", {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12}),
    (r"\bA10G\b", {"bf16": 70e12, "fp16": 70e12, "tf32": 35e12}),
    (r"\bT4\b", {"fp16": 65e12}),
    (r"\bV100\b", {"fp16": 125e12}),
]


def peak_flops_of(gpu_name: str, number_format: str) -> float | None:
    """The datasheet's dense peak FLOP/s of the GPU called `gpu_name` in `number_format` (bf16, fp16, tf32 or
    fp32), or None when the table does not know that GPU or format."""
    for pattern, peaks in PEAK_FLOPS:
        if re.search(pattern, gpu_name):
            return peaks.get(number_format)
    return None


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak FLOP/s at `dtype` where known (a few NVIDIA GPUs), else None: MFU is then not reported."""
    if device.type != "cuda":
        return None
    number_format = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)
    if number_format is None:
        number_format = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    return peak_flops_of(torch.cuda.get_device_name(device), number_format)


def processor_name() -> str:
    """The CPU's model name, read from /proc/cpuinfo on Linux, else from the platform module."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device | str | None = None) -> str:
    """One line naming the hardware a result was measured on, e.g. for a notebook's first output."""
    device = torch.device(device) if device is not None else get_device()
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    elif device.type == "mps":
        name = f"Apple MPS ({processor_name()})"
    else:
        name = f"{processor_name()}, {os.cpu_count()} cores"
    return f"{device.type}: {name}; torch {torch.__version__}; autocast {auto_dtype(device)}"


def versions() -> dict[str, str]:
    """The versions a measurement depends on (transformers too where installed, read without importing it)."""
    found = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        found["transformers"] = importlib.metadata.version("transformers")
    return found
