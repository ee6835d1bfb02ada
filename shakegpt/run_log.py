"""What a training run writes as it goes, taught in notebook 06: log lines, metrics.jsonl, TensorBoard events and
samples, the clock that times its steps, and its loss figure at the end."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import torch

from .hardware import synchronize
from .plots import plot_loss_curves, save_figure

if TYPE_CHECKING:  # run.py builds its RunLog from this module: the type alone, to read
    from .run import TrainState


class RunLog:
    """What the main process writes while training: metrics.jsonl, TensorBoard events, samples and log lines."""

    def __init__(self, out: Path, tensorboard: bool, start_step: int, enabled: bool):
        self.enabled = enabled
        self.metrics_path = out / "metrics.jsonl"
        self.samples_path = out / "samples.txt"
        self.writer = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        keep_metrics_until(self.metrics_path, start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            events = out / "tensorboard"
            if not start_step:  # a fresh run replaces the last one's curves, as it replaces its metrics.jsonl
                for old in events.glob("events.out.tfevents.*"):
                    old.unlink()
            self.writer = SummaryWriter(str(events), purge_step=start_step + 1 if start_step else None)

    def print(self, message: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stdout)

    def record(self, row: dict) -> None:
        """Append one row to metrics.jsonl and its numbers to TensorBoard."""
        if not self.enabled:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer:
            names = {"loss": "loss/train", "val_loss": "loss/val", "lr": "lr", "tok_per_s": "tokens_per_second"}
            for key, tag in names.items():
                if row.get(key) is not None:
                    self.writer.add_scalar(tag, row[key], row["step"])

    def record_sample(self, step: int, text: str) -> None:
        """Append a sample to samples.txt and TensorBoard, and print it."""
        if not self.enabled:
            return
        with self.samples_path.open("a") as f:
            f.write(f"=== step {step} ===\n{text}\n\n")
        if self.writer:
            self.writer.add_text("sample", "    " + text.replace("\n", "\n    "), step)  # indented: verbatim
        self.print(f"sample at step {step}:\n{text}\n")

    def draw_loss_curves(self, metrics: list[dict], target_loss: float | None) -> None:
        """loss.png and loss.svg in the run's folder, from the rows of its metrics.jsonl."""
        figure = plot_loss_curves(metrics, target_loss)
        save_figure(figure, "loss", folder=self.metrics_path.parent)
        plt.close(figure)  # saved to disk; a notebook calling train() should not show it a second time

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def keep_metrics_until(path: Path, step: int) -> None:
    """On resume, drop metric rows logged after the checkpoint we continue from (the run will log them again)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def log_line(row: dict, max_steps: int) -> str:
    """A log line: step, loss, lr, gradient norm, time per step, throughput, MFU (and validation loss)."""
    line = (
        f"step {row['step']:>5}/{max_steps} | loss {row['loss']:.4f} | lr {row['lr']:.2e} | norm {row['grad_norm']:.2f}"
        f" | {row['dt_ms']:.1f} ms | {row['tok_per_s']:,.0f} tok/s"
    )
    if row.get("mfu") is not None:
        line += f" | MFU {100 * row['mfu']:.1f}%"
    if "val_loss" in row:
        line += f" | val {row['val_loss']:.4f}"
    return line


class StepClock:
    """The clocks of a run's steps. The first step after each start (which compiles and allocates memory) is timed
    alone as warm-up; then each log window's steps together, waiting for the device once per window, never per step.
    Its times add up in the run's TrainState, across resumes."""

    def __init__(self, state: TrainState, device: torch.device):
        self.state, self.device = state, device
        self.window_start, self.steps_in_window = time.perf_counter(), 0
        self.first_step_s: float | None = None  # the warm-up step of this start, once taken
        self.timed_start = 0.0  # elapsed_s counts from here: the end of the warm-up, less the time before a resume

    def step_taken(self) -> None:
        """After each step: the first one is the warm-up, the others are timed in their window."""
        if self.first_step_s is not None:
            self.steps_in_window += 1
            return
        synchronize(self.device)
        now = time.perf_counter()
        self.first_step_s = now - self.window_start
        self.state.warmup_s += self.first_step_s
        self.window_start, self.timed_start = now, now - self.state.elapsed_s

    def end_window(self, step: int) -> float:
        """Wait for the device, add the window to the state's times; the mean seconds of its timed steps (the warm-up
        step's, for a window that holds only that)."""
        synchronize(self.device)
        now, state = time.perf_counter(), self.state
        window_s = now - self.window_start
        state.step, state.elapsed_s = step, now - self.timed_start
        state.train_s, state.timed_steps = state.train_s + window_s, state.timed_steps + self.steps_in_window
        return window_s / self.steps_in_window if self.steps_in_window else self.first_step_s

    def start_window(self) -> None:
        """After the log, evaluation, sample and checkpoint of a window: the next window's steps start now."""
        self.window_start, self.steps_in_window = time.perf_counter(), 0
