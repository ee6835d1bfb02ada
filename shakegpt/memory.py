"""GPU memory, met in notebooks 05 and 06: how much a training step needs, the micro-batch that fits the device (the
tokens per optimizer step kept by accumulating micro-steps), and running out of memory said in one sentence.

A step's peak memory is a straight line in the number of sequences per micro-step: a fixed part (weights, gradients,
the optimizer's two moments) plus the activations, which grow with every sequence. Two small steps on the device
measure both, so the rule holds for any GPU, model, precision and attention kernel without a table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .basics import ShakeGPTError, setting

# A micro-batch is chosen so that its predicted peak fills at most this share of the memory the process may use:
# the allocator's fragmentation, cuBLAS's workspace and compiled kernels need room beside the tensors.
MARGIN = 0.85


class CudaMemory:
    """What a fit needs to know of a CUDA device's memory, read from PyTorch's allocator. Anything with the same
    three methods can stand in for it (the tests present a fake GPU of a given size this way)."""

    def __init__(self, device: torch.device):
        self.device = device

    def capacity(self) -> int:
        """Bytes this process may fill: what it holds plus what is free on the device, within the share that
        torch.cuda.set_per_process_memory_fraction allows."""
        free, total = torch.cuda.mem_get_info(self.device)
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 1.0)  # torch 2.8 and later
        return min(free + torch.cuda.memory_reserved(self.device), int(fraction(self.device) * total))

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        """Bytes of tensors allocated at most since reset_peak."""
        return torch.cuda.max_memory_allocated(self.device)


def memory_of(device: torch.device) -> CudaMemory | None:
    """The memory of `device` where micro-batches are fitted to it (CUDA GPUs), else None."""
    return CudaMemory(device) if device.type == "cuda" else None


@dataclass(frozen=True)
class StepMemory:
    """The peak bytes of one training step: fixed + per_sequence x sequences per micro-step."""

    fixed: int
    per_sequence: int

    def peak(self, batch_size: int) -> int:
        return self.fixed + batch_size * self.per_sequence


def measure_step_memory(step: Callable[[int], object], memory: CudaMemory) -> StepMemory:
    """Run `step(batch_size)` at one and at two sequences and read the peaks. A first step comes before, because the
    optimizer allocates its moments during the first step, after which they stay."""
    step(1)
    peaks = []
    for batch_size in (1, 2):
        memory.reset_peak()
        step(batch_size)
        peaks.append(memory.peak())
    per_sequence = max(peaks[1] - peaks[0], 1)
    return StepMemory(fixed=peaks[0] - per_sequence, per_sequence=per_sequence)


def smaller_divisors(batch_size: int) -> list[int]:
    """The divisors of `batch_size` below it, largest first: micro-batches that keep the tokens per step exact."""
    return [b for b in range(batch_size - 1, 0, -1) if batch_size % b == 0]


@dataclass(frozen=True)
class MemoryFit:
    """The micro-batch chosen for a device: `batch_size` sequences per micro-step, the accumulation that keeps the
    tokens per optimizer step of the `requested` micro-batch, and what that was measured against."""

    batch_size: int
    requested: int
    seq_len: int
    capacity: int  # bytes this process may fill on the device
    peak: int  # bytes one step at batch_size took, measured
    step_memory: StepMemory

    @property
    def accumulation(self) -> int:
        """How many micro-steps replace one of the requested micro-batch."""
        return self.requested // self.batch_size

    def line(self, grad_accum: int | None = None) -> str:
        """What was chosen and why, for a banner; `grad_accum`, the accumulation after the fit, where one keeps the
        tokens per step."""
        steps = "" if grad_accum is None else f", {grad_accum} accumulation step{'s' if grad_accum > 1 else ''}"
        why = "to fit" if self.batch_size < self.requested else "fits"
        return (
            f"micro-batch {self.batch_size} x {self.seq_len:,}{steps}, {why} {self.capacity / 1e9:.1f} GB "
            f"(a step's peak {self.peak / 1e9:.1f} GB; {self.requested} x {self.seq_len:,} asked)"
        )


def fit_micro_batch(step: Callable[[int], object], requested: int, seq_len: int, memory: CudaMemory) -> MemoryFit:
    """The largest micro-batch, a divisor of `requested`, whose step fits in MARGIN of the device's memory: predicted
    from two small measured steps, then confirmed by one real step (a smaller one is tried if that step runs out)."""
    try:
        measured = measure_step_memory(step, memory)
    except torch.OutOfMemoryError:
        raise ShakeGPTError(too_large_for_one_sequence(seq_len)) from None
    capacity = memory.capacity()
    for batch_size in (requested, *smaller_divisors(requested)):
        if measured.peak(batch_size) > MARGIN * capacity:
            continue
        try:
            memory.reset_peak()
            step(batch_size)
        except torch.OutOfMemoryError:
            continue
        return MemoryFit(batch_size, requested, seq_len, capacity, memory.peak(), measured)
    raise ShakeGPTError(too_large_for_one_sequence(seq_len))


def too_large_for_one_sequence(seq_len: int) -> str:
    return (
        f"the model does not fit in this GPU's memory even with one sequence of {seq_len:,} tokens per micro-step; "
        f"use a smaller {setting('seq_len')} or {setting('preset')}."
    )


def out_of_memory_advice(batch_size: int, grad_accum: int, seq_len: int, fit: MemoryFit | None) -> str:
    """Which setting to lower after running out of memory, and to what: the largest smaller micro-batch that the
    measured line says fits (without a measurement, the largest smaller divisor), with the accumulation that keeps
    the tokens per step."""
    if batch_size == 1:
        return too_large_for_one_sequence(seq_len)
    candidates = smaller_divisors(batch_size)
    if fit is not None:
        fitting = [b for b in candidates if fit.step_memory.peak(b) <= MARGIN * fit.capacity]
        candidates = fitting or candidates[-1:]
    smaller = candidates[0]
    return (
        f"lower {setting('batch_size')} to {smaller} with {setting('grad_accum')} {grad_accum * batch_size // smaller}"
        f" (the same {batch_size * grad_accum * seq_len:,} tokens per step per process)."
    )
