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
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from .config import GPTConfig, ShakeGPTError, check_at_least, option, setting
from .data import TokenBatches
from .hardware import describe_device, get_device, synchronize, versions
from .plots import figures_dir, save_figure


@dataclass
class BenchSettings:
    """Every setting of the benchmarks; each field is also a `python -m shakegpt_utils bench WHICH --flag`.
    None means "choose for this device" (see `resolve`)."""

    # the model: a preset, or its shape changed
    preset: str | None = option(None, "model size: gpt2, small or tiny; default gpt2 on a GPU, small elsewhere")
    n_layer: int | None = option(None, "layers, instead of the preset's")
    n_head: int | None = option(None, "attention heads, instead of the preset's")
    n_embd: int | None = option(None, "width, instead of the preset's")
    seq_len: int | None = option(None, "tokens per sequence (default: the model's context)")
    # training steps: ladder and peer
    batch_size: int | None = option(None, "sequences per training step; default 16 on a GPU, 8 elsewhere")
    steps: int = option(5, "timed training steps per configuration")
    warmup: int = option(2, "untimed training steps first, compilation included")
    grad_accum: int = option(2, "micro-steps per optimizer step on the ladder's last rung")
    compile: bool = option(True, "try torch.compile on the ladder")
    # decoding: generate
    new_tokens: int = option(200, "tokens to generate")
    prompt_len: int = option(16, "prompt tokens")
    rounds: int = option(3, "timed rounds per decoder")
    dtype: str | None = option(None, "precisions, comma-separated (default: fp32 and the device's own)")
    # where, and what to write
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    threads: int | None = option(None, "CPU threads for torch (default: torch's choice)")
    seed: int = option(1337, "random seed of weights and data")
    out: str | None = option(None, "JSON file, its figure written beside it (default: figures/bench_WHICH_DEVICE.json)")

    def resolve(self, device: torch.device) -> BenchSettings:
        """A copy with the preset and batch filled for `device` (the 124M model with 16 x 1,024 on CUDA), after
        refusing settings that cannot run."""
        on_gpu = device.type == "cuda"
        resolved = BenchSettings(**asdict(self))
        resolved.preset = self.preset or ("gpt2" if on_gpu else "small")
        resolved.batch_size = self.batch_size or (16 if on_gpu else 8)
        for name in ("batch_size", "steps", "grad_accum", "new_tokens", "prompt_len", "rounds"):
            check_at_least(name, getattr(resolved, name), 1)
        check_at_least("warmup", resolved.warmup, 0)
        block_size = resolved.model_config().block_size
        if resolved.seq_len is not None and not 1 <= resolved.seq_len <= block_size:
            raise ShakeGPTError(f"{setting('seq_len')} must be in 1..{block_size} for this model, not {self.seq_len}.")
        return resolved

    def model_config(self, **changes) -> GPTConfig:
        """The preset's config with the shape overrides (n_layer, n_head, n_embd) and `changes` applied."""
        shape = {name: getattr(self, name) for name in ("n_layer", "n_head", "n_embd") if getattr(self, name)}
        return GPTConfig.preset(self.preset, **shape, **changes)

    @property
    def seq_len_or_context(self) -> int:
        return self.seq_len or self.model_config().block_size


def resolve_for_device(settings: BenchSettings | None) -> tuple[BenchSettings, torch.device]:
    """The settings (the defaults when None) resolved for the device they name, and that device."""
    settings = settings or BenchSettings()
    device = get_device(settings.device)
    return settings.resolve(device), device


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


def fixed_batches(vocab: int, batch_size: int, seq_len: int, seed: int) -> TokenBatches:
    """Batches cut from one seeded stream of random tokens: no corpus needed, and every rung sees the same data."""
    generator = np.random.default_rng(seed)
    tokens = generator.integers(0, vocab, size=batch_size * (seq_len + 1) * 4, dtype=np.int64)
    return TokenBatches(tokens.astype(np.uint16), batch_size, seq_len, shuffle=False)


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
