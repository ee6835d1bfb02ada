"""Measuring on the device: calls timed with it synchronised, their summary, peak memory, and the estimate of a whole
training run from its first steps timed here (notebooks 06 and 07).

Every number is measured on the device it names: steps are timed with the device synchronised, warm-up (and the
compilation it triggers) is timed apart, and contestants compared with each other run alternately in one process so
that a busy machine slows them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..basics import check_at_least
from ..data import TokenBatches, fixed_batches
from ..hardware import Precision, compile_problem, enable_tf32, get_device, get_precision, synchronize, use_threads
from ..memory import MemoryFit
from ..model import GPT
from ..optim import configure_optimizer
from ..run import build_model
from ..tokenizer import GPT2_VOCAB_SIZE
from ..train import evaluate, fit_to_memory, train_step
from ..train_settings import TrainConfig


def timed_call(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    """Seconds `fn` takes, measured from an idle device until its queued work is done, and what it returned."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def summarise_times(seconds: list[float], tokens_per_call: int) -> dict:
    """Median and spread (fastest and slowest call) of per-call times in milliseconds, and the throughput at the
    median, at the slowest call (tokens_per_s_min) and at the fastest (tokens_per_s_max)."""
    median = statistics.median(seconds)
    return {
        "ms_median": 1000 * median,
        "ms_min": 1000 * min(seconds),
        "ms_max": 1000 * max(seconds),
        "tokens_per_s": tokens_per_call / median,
        "tokens_per_s_min": tokens_per_call / max(seconds),
        "tokens_per_s_max": tokens_per_call / min(seconds),
    }


def reset_peak_memory(device: torch.device) -> None:
    """Start a new high-water mark: CUDA's allocator counter, or the process's peak resident size on Linux."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif Path("/proc/self/clear_refs").exists():
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory since reset_peak_memory: tensors on CUDA, the whole process (resident set) on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


@dataclass(frozen=True)
class RunEstimate:
    """How long a training run will take on this device, from a few of its steps timed here."""

    max_steps: int
    step_s: float  # median seconds per optimizer step, after the first
    first_step_s: float  # the first step: memory allocation and, when compiling, the compilation
    evaluations: int
    evaluation_s: float  # seconds per evaluation of the validation windows
    measured_steps: int

    @property
    def total_s(self) -> float:
        return self.first_step_s + (self.max_steps - 1) * self.step_s + self.evaluations * self.evaluation_s

    def line(self) -> str:
        return (
            f"estimated {self.total_s / 60:.1f} min for {self.max_steps} steps on this device (less if a target "
            f"loss stops it): {self.step_s:.3g} s per step over {self.measured_steps} timed steps, a first step of "
            f"{self.first_step_s:.1f} s, {self.evaluations} evaluations of {self.evaluation_s:.1f} s"
        )


@dataclass
class StepAsTrained:
    """One optimizer step of a run set up here as `train` sets it up, on fixed random batches (no corpus needed)."""

    cfg: TrainConfig  # the run's settings, its micro-batch fitted to the memory
    fit: MemoryFit | None
    model: GPT
    precision: Precision
    batches: TokenBatches
    compiled: bool
    step: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # the loss and the gradient norm, as train_step returns


def step_as_trained(resolved: TrainConfig, device: torch.device) -> StepAsTrained:
    """The resolved run's model and one training step of it: micro-batch fitted to the memory, TF32, precision,
    the optimizer it asks for, compiled where compiling works; what estimate_run and bench profile time."""
    cfg, fit = fit_to_memory(resolved, device)
    enable_tf32(device)
    model = build_model(cfg).to(device)
    optimizer = configure_optimizer(model, cfg.weight_decay, cfg.lr, device_type=device.type, kind=cfg.optimizer)
    precision = get_precision(device, cfg.dtype)
    compiled = cfg.compile and compile_problem(device) is None
    runnable = torch.compile(model) if compiled else model
    batches = fixed_batches(GPT2_VOCAB_SIZE, cfg.batch_size, cfg.seq_len, cfg.seed)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        return train_step(runnable, optimizer, batches, cfg.grad_accum, precision, device, cfg.grad_clip)

    return StepAsTrained(cfg, fit, model, precision, batches, compiled, step)


def estimate_run(requested: TrainConfig, measured_steps: int = 3) -> RunEstimate:
    """Time the first steps of the run `requested` describes (its model, micro-batch fitted to the memory,
    accumulation, precision, compilation) and one validation batch on random tokens, and scale them to the whole
    run: an estimate from this device, not from a table. Checkpoints and samples are left out."""
    check_at_least("measured_steps", measured_steps, 1)
    device = get_device(requested.device)
    resolved = requested.resolve(device)
    use_threads(resolved.threads)
    timed = step_as_trained(resolved, device)
    cfg, fit, precision, batches = timed.cfg, timed.fit, timed.precision, timed.batches
    step = lambda: timed.step()[0]  # noqa: E731
    first_step_s = timed_call(step, device)[0]
    step_s = statistics.median(timed_call(step, device)[0] for _ in range(measured_steps))
    x, y = batches.next_batch()
    batch_s = timed_call(lambda: evaluate(timed.model, [(x, y)], precision, device), device)[0]
    evaluation_s = batch_s * cfg.eval_batches * (fit.requested if fit else cfg.batch_size) / cfg.batch_size
    evaluations = len({*range(cfg.eval_interval, cfg.max_steps + 1, cfg.eval_interval), cfg.max_steps})
    return RunEstimate(cfg.max_steps, step_s, first_step_s, evaluations, evaluation_s, measured_steps)
