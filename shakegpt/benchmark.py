"""What every benchmark shares (notebook 05 and `python -m shakegpt_utils bench`): its settings, timing with the
device synchronised, peak memory, and the result file with its figure beside it.

Every number is measured on the device it names: steps are timed with the device synchronised, warm-up (and the
compilation it triggers) is timed apart, and contestants compared with each other run alternately in one process so
that a busy machine slows them alike.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from .config import GPT2_VOCAB_SIZE, check_at_least, option
from .data import fixed_batches
from .hardware import (
    auto_dtype,
    compile_problem,
    describe_device,
    enable_tf32,
    get_device,
    get_precision,
    synchronize,
    use_threads,
    versions,
)
from .optim import configure_optimizer
from .plots import figures_dir, save_figure
from .train import TrainConfig, build_model, evaluate, fit_to_memory, train_step

# The training settings a benchmark reads: which model, which batch, how it runs, where. The others (learning rate,
# corpus, schedule...) do not change the speed of a step, so the bench command does not offer them.
TIMED_RUN_FIELDS = (
    "preset", "n_layer", "n_head", "n_embd", "seq_len", "batch_size", "grad_accum", "dtype", "compile", "fit_memory",
    "device", "threads", "seed",
)  # fmt: skip


@dataclass
class BenchSettings(TrainConfig):
    """What a benchmark times: the steps of the training run its TrainConfig fields describe (TIMED_RUN_FIELDS),
    and, in the five fields below, how. Each of those is also a `python -m shakegpt_utils bench WHICH --flag`.
    None means "choose for this device and preset", as for training (see `resolve`)."""

    steps: int = option(5, "timed training steps per configuration (ladder, peer)")
    warmup: int = option(2, "untimed training steps first, compilation included (ladder, peer)")
    new_tokens: int = option(200, "tokens to generate (generate)")
    prompt_len: int = option(16, "prompt tokens (generate)")
    rounds: int = option(3, "timed rounds per decoder (generate)")

    @classmethod
    def flags(cls) -> list[str]:
        """The fields the bench command takes as flags: the timed run's, then the benchmark's own."""
        training = {f.name for f in fields(TrainConfig)}
        own = [f.name for f in fields(cls) if f.name not in training]
        return [*TIMED_RUN_FIELDS, *own]

    def to_dict(self) -> dict:
        """The settings a result file records: those of `flags`."""
        return {name: getattr(self, name) for name in self.flags()}

    def compared_dtypes(self, device: torch.device) -> list[str]:
        """float32 and the precision `dtype` asks for ('auto': the device's own), each once: what a comparison with
        transformers (peer, generate) runs at."""
        return list(dict.fromkeys(("fp32", auto_dtype(device) if self.dtype == "auto" else self.dtype)))

    def resolve(self, device: torch.device | str = "cpu", world_size: int = 1) -> BenchSettings:
        """Filled for `device` as a training run is (the 124M model with 16 x 1,024 tokens on CUDA, the small one
        with 8 x 256 elsewhere), after refusing settings that cannot run."""
        resolved = super().resolve(device, world_size)
        for name in ("steps", "new_tokens", "prompt_len", "rounds"):
            check_at_least(name, getattr(resolved, name), 1)
        check_at_least("warmup", resolved.warmup, 0)
        return resolved


def resolve_for_device(settings: BenchSettings | None) -> tuple[BenchSettings, torch.device]:
    """The settings (the defaults when None) resolved for the device they name, and that device; torch uses the
    number of CPU threads they ask for."""
    settings = settings or BenchSettings()
    device = get_device(settings.device)
    resolved = settings.resolve(device)
    use_threads(resolved.threads)
    return resolved, device


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


def estimate_run(requested: TrainConfig, measured_steps: int = 3) -> RunEstimate:
    """Time the first steps of the run `requested` describes (its model, micro-batch fitted to the memory,
    accumulation, precision, compilation) and one validation batch on random tokens, and scale them to the whole
    run: an estimate from this device, not from a table. Checkpoints and samples are left out."""
    check_at_least("measured_steps", measured_steps, 1)
    device = get_device(requested.device)
    cfg, fit = fit_to_memory(requested.resolve(device), device)
    use_threads(cfg.threads)
    enable_tf32(device)
    model = build_model(cfg).to(device)
    optimizer = configure_optimizer(model, cfg.weight_decay, cfg.lr, device_type=device.type)
    precision = get_precision(device, cfg.dtype)
    runnable = torch.compile(model) if cfg.compile and compile_problem(device) is None else model
    batches = fixed_batches(GPT2_VOCAB_SIZE, cfg.batch_size, cfg.seq_len, cfg.seed)
    step = lambda: train_step(runnable, optimizer, batches, cfg.grad_accum, precision, device, cfg.grad_clip)[0]  # noqa: E731
    first_step_s = timed_call(step, device)[0]
    step_s = statistics.median(timed_call(step, device)[0] for _ in range(measured_steps))
    x, y = batches.next_batch()
    batch_s = timed_call(lambda: evaluate(model, [(x, y)], precision, device), device)[0]
    evaluation_s = batch_s * cfg.eval_batches * (fit.requested if fit else cfg.batch_size) / cfg.batch_size
    evaluations = len({*range(cfg.eval_interval, cfg.max_steps + 1, cfg.eval_interval), cfg.max_steps})
    return RunEstimate(cfg.max_steps, step_s, first_step_s, evaluations, evaluation_s, measured_steps)


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


def result_header(kind: str, device: torch.device, settings: dict) -> dict:
    """The part of every result file that says what was measured, where and with what."""
    return {
        "benchmark": kind,
        "device": describe_device(device),
        "device_type": device.type,
        "versions": versions(),
        "settings": settings,
        "torch_threads": torch.get_num_threads(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def device_label(result: dict) -> str:
    """The device line, with the number of CPU threads torch used when it ran on a CPU."""
    if result["device_type"] != "cpu":
        return result["device"]
    return f"{result['device']}; {result['torch_threads']} torch thread(s)"


def save_bench(
    result: dict, figure: plt.Figure, out: str | Path | None = None, log: Callable[[str], None] = print
) -> list[Path]:
    """Write a result as JSON at `out` (default figures/bench_KIND_DEVICE.json) and its figure beside it, as .png
    and .svg of the same name; return the three paths."""
    path = Path(out) if out else figures_dir() / f"bench_{result['benchmark']}_{result['device_type']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    written = save_figure(figure, path.stem, folder=path.parent)
    plt.close(figure)
    log(f"wrote {path} and {written[0].name} (+ .svg) beside it")
    return [path, *written]
