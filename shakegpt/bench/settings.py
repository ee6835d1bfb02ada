"""What every benchmark is given and what it writes (notebook 05 and `python -m shakegpt_utils bench`): its
settings, resolved for the device, and the result file with its figure beside it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from ..basics import check_at_least, option
from ..hardware import describe_device, get_device, get_precision, use_threads, versions
from ..plots import figures_dir, save_figure
from ..train_settings import TrainConfig

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
        return list(dict.fromkeys(("fp32", get_precision(device, self.dtype).name)))

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
