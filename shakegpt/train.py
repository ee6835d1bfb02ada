"""Training, taught in notebook 06: the settings, one optimizer step, evaluation, and the run itself with its logs,
checkpoints, exact resume and multi-process (DistributedDataParallel) support. `train_loop` is the loop to read."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import capture_rng, load_checkpoint, restore_rng, resume_training, save_checkpoint
from .config import (
    GPT2_VOCAB_SIZE,
    PADDED_VOCAB_SIZE,
    GPTConfig,
    ShakeGPTError,
    check_at_least,
    check_choice,
    check_fraction,
    first_line,
    option,
    setting,
)
from .data import (
    TokenBatches,
    evaluation_windows,
    fixed_batches,
    get_corpus,
    load_tokens,
    read_text_file,
    split_tokens,
    text_name,
)
from .hardware import (
    Precision,
    attention_kernel,
    compile_problem,
    describe_device,
    enable_tf32,
    get_device,
    get_precision,
    keep_freed_memory,
    peak_flops,
    set_seed,
    synchronize,
    use_threads,
    versions,
)
from .memory import MemoryFit, fit_micro_batch, memory_of, out_of_memory_advice
from .model import GPT
from .optim import OPTIMIZERS, SCHEDULES, configure_optimizer, estimate_mfu, get_lr
from .plots import plot_loss_curves, save_figure
from .progress import progress_bar
from .sampling import sample_text


@dataclass
class TrainConfig:
    """Every setting of a training run; each field is also a `python -m shakegpt_utils train --flag`.
    None means "choose for this machine and preset" (see `resolve`)."""

    preset: str | None = option(None, "model size: gpt2 (124M), small or tiny; default gpt2 on a GPU, small elsewhere")
    n_layer: int | None = option(None, "layers, instead of the preset's")
    n_head: int | None = option(None, "attention heads, instead of the preset's")
    n_embd: int | None = option(None, "width, instead of the preset's")
    corpus: str = option("tinyshakespeare", "tinyshakespeare or complete")
    text_file: str | None = option(None, "train on this UTF-8 text file instead of the corpus")
    train_tokens: int | None = option(None, "train on the first N tokens of the training split only (validation stays)")
    batch_size: int | None = option(None, "sequences per micro-step per process")
    seq_len: int | None = option(None, "tokens per sequence (at most the model's context)")
    grad_accum: int = option(1, "micro-steps per optimizer step")
    total_batch: int | None = option(None, "tokens per optimizer step, all processes (e.g. 524288); sets grad_accum")
    max_steps: int | None = option(None, "optimizer steps (the schedule's length)")
    lr: float | None = option(None, "peak learning rate")
    min_lr: float | None = option(None, "final learning rate (default lr/10)")
    warmup_steps: int | None = option(None, "steps of linear warmup")
    weight_decay: float = option(0.1, "weight decay of the matrices (AdamW's and Muon's)")
    optimizer: str = option("adamw", "adamw, or muon (torch.optim.Muon for the blocks' matrices, AdamW for the rest)")
    schedule: str = option("cosine", "after warmup: cosine, or wsd (hold the peak, decay over the last decay_fraction)")
    decay_fraction: float = option(0.2, "with --schedule wsd: the fraction of the steps over which the rate decays")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: off)")
    dropout: float = option(0.0, "dropout probability")
    loss: str | None = option(None, "output-layer loss: full or chunked; default full on CUDA, chunked elsewhere")
    pad_vocab: bool = option(True, "pad the vocabulary to 50304 (faster matrix kernels)")
    dtype: str = option("auto", "auto, bf16, fp16 or fp32")
    compile: bool | None = option(None, "torch.compile the model (default: on for CUDA)")
    fit_memory: bool = option(
        True, "on a GPU, shrink the micro-batch until a step fits its memory, accumulating to keep the tokens per step"
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    threads: int | None = option(None, "CPU threads for torch (default: torch's choice)")
    seed: int = option(1337, "random seed: initialisation, data order, dropout")
    eval_interval: int | None = option(None, "steps between validation evaluations")
    eval_batches: int = option(20, "validation batches (of batch_size sequences per process) per evaluation")
    sample_interval: int | None = option(None, "steps between text samples (0: none)")
    sample_prompt: str = option("ROMEO:", "prompt for the samples written during training")
    sample_tokens: int = option(100, "tokens per sample written during training")
    log_interval: int | None = option(None, "steps between log lines")
    ckpt_interval: int | None = option(
        None, "steps between writes of last.pt (0: only at the end, with best.pt kept in GPU memory until then)"
    )
    target_loss: float | None = option(None, "stop once the mean training loss of a log window is below this")
    early_stop: int | None = option(None, "stop after this many evaluations without a better validation loss")
    out: str = option("runs/shakespeare", "output folder")
    resume: bool = option(False, "continue from OUT/last.pt")
    tensorboard: bool = option(True, "write TensorBoard event files")
    progress: bool = option(True, "show progress: a bar in a terminal, one line in a notebook, none in a file or pipe")

    def resolve(self, device: torch.device | str = "cpu", world_size: int = 1) -> TrainConfig:
        """A copy with every None filled for this device and preset, and the gradient accumulation that a
        --total-batch asks for over `world_size` processes. Raises ShakeGPTError on settings that cannot work."""
        on_gpu = torch.device(device).type == "cuda"
        preset = self.preset or ("gpt2" if on_gpu else "small")
        check_choice("preset", preset, RUN_DEFAULTS)
        values = asdict(self)
        if self.text_file:  # read now, so that a missing, empty or non-UTF-8 file is refused before anything is built
            read_text_file(self.text_file)
            values["text_file"] = str(Path(self.text_file).expanduser().resolve())  # found from any folder later
        else:
            get_corpus(self.corpus)
        for name, value in RUN_DEFAULTS[preset].items():
            if values[name] is None:
                values[name] = value
        values["preset"] = preset
        values["min_lr"] = values["lr"] / 10 if self.min_lr is None else self.min_lr
        values["compile"] = on_gpu if self.compile is None else self.compile
        values["loss"] = self.loss or default_loss(device)
        check_choice("loss", values["loss"], ("full", "chunked"))
        cfg = replace(self, **values)
        cfg.seq_len = cfg.model_config().block_size if self.seq_len is None else self.seq_len
        cfg.check()
        if cfg.total_batch is not None:
            cfg.grad_accum = accumulation_for(cfg.total_batch, cfg.batch_size * cfg.seq_len * world_size)
        return cfg

    def check(self) -> None:
        for name in ("batch_size", "seq_len", "grad_accum", "max_steps", "eval_interval", "log_interval"):
            check_at_least(name, getattr(self, name), 1)
        check_at_least("ckpt_interval", self.ckpt_interval, 0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_fraction("decay_fraction", self.decay_fraction)
        check_at_least("eval_batches", self.eval_batches, 1)
        for name in ("train_tokens", "threads"):
            if getattr(self, name) is not None:
                check_at_least(name, getattr(self, name), 1)
        block_size = self.model_config().block_size
        if self.seq_len > block_size:
            raise ShakeGPTError(
                f"{setting('seq_len')} {self.seq_len} is above the {self.preset} model's context of {block_size}."
            )
        if not 0 <= self.dropout < 1:
            raise ShakeGPTError(f"{setting('dropout')} must be in [0, 1), not {self.dropout}.")
        if self.lr <= 0 or self.min_lr < 0:
            raise ShakeGPTError(f"{setting('lr')} must be positive and {setting('min_lr')} not negative.")

    def model_config(self, **changes) -> GPTConfig:
        """The preset's config with the shape set here (n_layer, n_head, n_embd) and `changes` applied."""
        shape = {
            name: getattr(self, name) for name in ("n_layer", "n_head", "n_embd") if getattr(self, name) is not None
        }
        return GPTConfig.preset(self.preset, **shape, **changes)


def default_loss(device: torch.device | str) -> str:
    """The output layer's loss for training on `device`: on CUDA full logits and F.cross_entropy, which
    torch.compile fuses (the fastest there); elsewhere the chunked loss, which wins by far on CPUs (notebook 05)."""
    return "full" if torch.device(device).type == "cuda" else "chunked"


def accumulation_for(total_batch: int, tokens_per_micro_step: int) -> int:
    """Micro-steps per optimizer step for `total_batch` tokens per step; like nanoGPT, the batch counts tokens."""
    if total_batch % tokens_per_micro_step:
        raise ShakeGPTError(
            f"{setting('total_batch')} {total_batch:,} tokens is not divisible by batch_size x seq_len x "
            f"processes = {tokens_per_micro_step:,} tokens per micro-step."
        )
    return max(1, total_batch // tokens_per_micro_step)


# What None resolves to, by preset: gpt2 is the reference run (a GPU's work); small and tiny train in minutes on a CPU.
SMALL_MODEL_RUN = dict(
    batch_size=8, max_steps=400, lr=1e-3, warmup_steps=30, eval_interval=50, sample_interval=200, log_interval=10,
    ckpt_interval=100,
)  # fmt: skip
RUN_DEFAULTS = {
    "gpt2": dict(
        batch_size=16, max_steps=3000, lr=6e-4, warmup_steps=100, eval_interval=100, sample_interval=500,
        log_interval=10, ckpt_interval=250,
    ),
    "small": SMALL_MODEL_RUN,
    "tiny": SMALL_MODEL_RUN,
}  # fmt: skip


# Memorising a slice on a CPU (notebook 07): the small model reads the first 8,000 training tokens (31 windows of
# 256) until its training loss is below 0.1, evaluated often enough that the validation minimum and the rise after
# it show (notebook 07 measures where, and how long it takes).
MEMORISATION_RUN = dict(
    preset="small", train_tokens=8000, batch_size=8, seq_len=256, max_steps=500, lr=2e-3, warmup_steps=20,
    eval_interval=10, log_interval=10, ckpt_interval=500, sample_interval=0, target_loss=0.1,
)  # fmt: skip


# ---- distributed set-up ----------------------------------------------------------------------------------------


@dataclass
class Distributed:
    """Where this process stands: rank 0 of 1 when run alone; under torchrun (any number of processes, one
    included) a member of a process group, whose model DistributedDataParallel wraps."""

    rank: int = 0
    world_size: int = 1
    in_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(requested_device: str) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes in RANK/LOCAL_RANK/WORLD_SIZE (NCCL on CUDA, gloo on CPU), or run
    alone when not started by torchrun."""
    device = get_device(requested_device)
    if "RANK" not in os.environ:
        return Distributed(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), in_group=True), device


def in_process_group() -> bool:
    """Whether this process is one of several (or one) that torchrun started and that joined a process group."""
    return dist.is_available() and dist.is_initialized()


def sum_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The sum of `value` over all processes (itself when running alone)."""
    if in_process_group():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


# ---- one step ----------------------------------------------------------------------------------------------------


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a batch to the device; on CUDA through pinned memory, so the copy overlaps with compute."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: TokenBatches,
    grad_accum: int,
    precision: Precision,
    device: torch.device,
    grad_clip: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over `grad_accum` micro-batches. Returns (mean loss, gradient norm) as device tensors,
    without waiting for the GPU. Under DDP gradients are only averaged across processes on the last micro-step."""
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=device)
    for micro in range(grad_accum):
        x, y = to_device(*batches.next_batch(), device)
        last = micro == grad_accum - 1
        no_sync = isinstance(model, DistributedDataParallel) and not last
        with model.no_sync() if no_sync else contextlib.nullcontext():
            with precision.autocast():
                _, loss = model(x, y)
            loss = loss / grad_accum  # the gradients add up over micro-steps: scale so they average
            loss_sum += loss.detach()
            (precision.scaler.scale(loss) if precision.scaler else loss).backward()
    if precision.scaler:
        precision.scaler.unscale_(optimizer)
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    if precision.scaler:
        precision.scaler.step(optimizer)
        precision.scaler.update()
    else:
        optimizer.step()
    world_size = dist.get_world_size() if in_process_group() else 1
    return sum_over_processes(loss_sum) / world_size, norm


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], precision: Precision, device: torch.device
) -> float:
    """Mean loss per token over `batches` (see data.evaluation_windows) and over all processes: equal to one
    process evaluating all their windows, whatever the batch size and the number of processes."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, device=device)  # summed loss, tokens
    for x, y in batches:
        x, y = to_device(x, y, device)
        with precision.autocast():
            _, loss = model(x, y)
        totals += torch.stack([loss.float() * y.numel(), torch.tensor(float(y.numel()), device=device)])
    model.train(was_training)
    loss_sum, tokens = sum_over_processes(totals).tolist()
    return loss_sum / tokens


# ---- logging -----------------------------------------------------------------------------------------------------


class RunLog:
    """What the main process writes while training: metrics.jsonl, TensorBoard events, samples and log lines."""

    def __init__(self, out: Path, cfg: TrainConfig, start_step: int, enabled: bool):
        self.enabled = enabled
        self.metrics_path = out / "metrics.jsonl"
        self.samples_path = out / "samples.txt"
        self.writer = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        keep_metrics_until(self.metrics_path, start_step)
        if cfg.tensorboard:
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

    def sample(self, step: int, text: str) -> None:
        if not self.enabled:
            return
        with self.samples_path.open("a") as f:
            f.write(f"=== step {step} ===\n{text}\n\n")
        if self.writer:
            self.writer.add_text("sample", "    " + text.replace("\n", "\n    "), step)  # indented: verbatim
        self.print(f"sample at step {step}:\n{text}\n")

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


# ---- the run -----------------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """How far a run has come; checkpoints carry it (the step itself is the checkpoint's own `step`)."""

    step: int = 0
    warmup_s: float = 0.0  # the first step after each start, compilation included
    elapsed_s: float = 0.0  # wall-clock seconds since the end of the first step (warm-up excluded)
    train_s: float = 0.0  # of those, the seconds in training steps: no evaluation, sampling or checkpoint writing
    timed_steps: int = 0
    checkpoint_s: float = 0.0
    best_val_loss: float = math.inf
    best_val_step: int | None = None
    target_step: int | None = None
    time_to_target_s: float | None = None  # elapsed_s when the training loss first fell below the target
    evals_without_improvement: int = 0

    def saved(self) -> dict:
        """What a checkpoint stores of the state: all of it but the step."""
        return {k: v for k, v in asdict(self).items() if k != "step"}


@dataclass
class Run:
    """Everything a training run works with, built once by `start_run`."""

    cfg: TrainConfig
    dist: Distributed
    device: torch.device
    precision: Precision
    model: GPT  # the plain model: checkpoints, samples
    runnable: nn.Module  # what trains: the model, maybe compiled, maybe wrapped in DistributedDataParallel
    optimizer: torch.optim.Optimizer
    train_batches: TokenBatches
    val_tokens: np.ndarray
    state: TrainState
    log: RunLog
    tokens_per_step: int
    tf32: bool
    attention: str  # the kernel scaled_dot_product_attention runs here (see hardware.attention_kernel)
    compiled: bool  # whether the runnable model is compiled (asked for, and the compiler works here)
    compile_problem: str | None = None  # why it is not, when it was asked for
    memory_fit: MemoryFit | None = None  # the micro-batch chosen for the GPU's memory, where one was chosen
    latest_sample: tuple[int | None, str] = (None, "")
    best_weights: dict[str, torch.Tensor] | None = None  # with ckpt_interval 0: best.pt's weights, written at the end
    compile_checked: bool = False  # a compiled step has run since this start

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    def save(self, name: str) -> None:
        """Write OUT/name (last.pt or best.pt) from the main process, and count the time it took."""
        if not self.dist.is_main:
            return
        started = time.perf_counter()
        scaler = self.precision.scaler.state_dict() if self.precision.scaler else None
        extra = {"state": self.state.saved(), "scaler": scaler}
        data = self.train_batches.state_dict()
        save_checkpoint(self.out / name, self.model, self.optimizer, self.state.step, data, asdict(self.cfg), extra)
        self.state.checkpoint_s += time.perf_counter() - started

    def keep_best(self) -> None:
        """The validation loss is the best so far: write best.pt now, or, with ckpt_interval 0, copy the weights
        within the device's memory (no wait, no disk write while the run is timed) for `save_kept_best`."""
        if self.cfg.ckpt_interval:
            self.save("best.pt")
        elif self.dist.is_main:
            self.best_weights = {name: w.detach().clone() for name, w in self.model.state_dict().items()}

    def save_kept_best(self) -> None:
        """Write best.pt from the weights `keep_best` copied: the model at the best validation step, without the
        optimizer (resuming reads last.pt)."""
        if self.best_weights is None:
            return
        started = time.perf_counter()
        extra = {"state": self.state.saved(), "scaler": None}
        best_step, config = self.state.best_val_step, asdict(self.cfg)
        save_checkpoint(self.out / "best.pt", self.model, None, best_step, None, config, extra, self.best_weights)
        self.best_weights = None
        self.state.checkpoint_s += time.perf_counter() - started

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step (train_step). The first compiled step after a start may fail to compile (no kernels
        for this GPU, an Inductor error): the run then goes on without compiling, from the same batch and random
        state, and says so once."""
        cfg = self.cfg
        args = (self.optimizer, self.train_batches, cfg.grad_accum, self.precision, self.device, cfg.grad_clip)
        if not self.compiled or self.compile_checked:
            return train_step(self.runnable, *args)
        data, rng = self.train_batches.state_dict(), capture_rng()
        try:
            result = train_step(self.runnable, *args)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # noqa: BLE001  (the compiler raises many types; the eager step shows real bugs)
            self.stop_compiling(f"torch.compile failed at the first step: {type(error).__name__}: {first_line(error)}")
            self.train_batches.load_state_dict(data)
            restore_rng(rng)
            return train_step(self.runnable, *args)
        self.compile_checked = True
        return result

    def stop_compiling(self, problem: str) -> None:
        """Train the plain model from now on, and say why in one line."""
        torch._dynamo.reset()
        self.compiled, self.compile_problem = False, problem
        self.runnable = self.wrap(self.model)
        self.log.print(f"warning: {problem}; training goes on without compiling.")

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` as this process trains it: inside DistributedDataParallel when in a process group."""
        if not self.dist.in_group:
            return model
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    @property
    def eval_windows(self) -> int:
        """How many validation windows every evaluation reads: eval_batches x batch_size x processes, with the batch
        size asked for (a micro-batch fitted to the GPU's memory changes how many go through at once, not which)."""
        batch_size = self.memory_fit.requested if self.memory_fit else self.cfg.batch_size
        return self.cfg.eval_batches * batch_size * self.dist.world_size

    def evaluate(self) -> float:
        """The validation loss on the same `eval_windows` windows every time."""
        cfg, world = self.cfg, self.dist.world_size
        windows = evaluation_windows(
            self.val_tokens, cfg.batch_size, cfg.seq_len, self.eval_windows, self.dist.rank, world
        )
        # The plain model: the compiled one would compile again for eval mode without gradients (tens of seconds
        # on a GPU, at every evaluation whose shapes differ), and DDP has nothing to synchronise here.
        return evaluate(self.model, windows, self.precision, self.device)

    def sample(self) -> None:
        """Write a sample of the model as it is now (main process only)."""
        cfg = self.cfg
        text = sample_text(self.model, cfg.sample_prompt, cfg.sample_tokens, seed=cfg.seed)[0]
        self.latest_sample = (self.state.step, text)
        self.log.sample(self.state.step, text)

    def out_of_memory(self) -> ShakeGPTError:
        """Running out of GPU memory, as one sentence: where, which setting to lower and to what, and what is kept."""
        cfg, checkpoint = self.cfg, self.out / "last.pt"
        kept = f"the last checkpoint is kept at {checkpoint}" if checkpoint.exists() else "no checkpoint is written yet"
        return ShakeGPTError(
            f"out of memory on {self.device} after step {self.state.step}, with micro-batches of {cfg.batch_size} x "
            f"{cfg.seq_len:,} tokens; {kept}. To fit, "
            + out_of_memory_advice(cfg.batch_size, cfg.grad_accum, cfg.seq_len, self.memory_fit)
        )


def build_model(cfg: TrainConfig) -> GPT:
    """The model a TrainConfig asks for (its preset and shape, dropout and vocabulary padding)."""
    overrides = {"dropout": cfg.dropout, "loss_impl": cfg.loss}
    if cfg.pad_vocab:
        overrides["vocab_size"] = PADDED_VOCAB_SIZE
    return GPT(cfg.model_config(**overrides))


def steps_at_any_batch(
    model: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision, device: torch.device, seq_len: int
) -> Callable[[int], float]:
    """A function that runs one optimizer step of `model` on a given number of sequences of random tokens and returns
    its loss: what fitting a micro-batch to a GPU's memory measures."""

    def step(batch_size: int) -> float:
        batches = fixed_batches(GPT2_VOCAB_SIZE, batch_size, seq_len, seed=0)
        return train_step(model, optimizer, batches, 1, precision, device)[0].item()

    return step


def fit_to_memory(cfg: TrainConfig, device: torch.device) -> tuple[TrainConfig, MemoryFit | None]:
    """`cfg` with the largest micro-batch that fits the GPU's memory (a divisor of the one asked for) and the
    accumulation that keeps the tokens per optimizer step, and the fit that chose it; `cfg` unchanged, with None, off
    CUDA or with fit_memory off. Every process of a group takes the smallest micro-batch any of them chose."""
    memory = memory_of(device)
    if memory is None or not cfg.fit_memory:
        return cfg, None
    model = build_model(cfg).to(device)  # a fresh one, freed after the fit; uncompiled: compiling only saves memory
    optimizer = configure_optimizer(model, cfg.weight_decay, cfg.lr, device_type=device.type, kind=cfg.optimizer)
    step = steps_at_any_batch(model, optimizer, get_precision(device, cfg.dtype), device, cfg.seq_len)
    fit = fit_micro_batch(step, cfg.batch_size, cfg.seq_len, memory)
    batch_size = fit.batch_size
    if in_process_group():
        smallest = torch.tensor(batch_size, device=device)
        dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
        batch_size = int(smallest)
    return replace(cfg, batch_size=batch_size, grad_accum=cfg.grad_accum * cfg.batch_size // batch_size), fit


def start_run(requested: TrainConfig, dist_info: Distributed, device: torch.device) -> Run:
    """Resolve the settings, fit the micro-batch to the GPU's memory, load the data, build model and optimizer,
    resume if asked, and print the banner."""
    cfg, memory_fit = fit_to_memory(requested.resolve(device, dist_info.world_size), device)
    use_threads(cfg.threads)
    if device.type == "cpu":
        keep_freed_memory()
    precision = get_precision(device, cfg.dtype)
    tf32 = enable_tf32(device)
    problem = compile_problem(device) if cfg.compile else None
    set_seed(cfg.seed)
    train_tokens, val_tokens = training_split(cfg)
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * dist_info.world_size
    if tokens_per_step > 2 * len(train_tokens):
        raise ShakeGPTError(
            f"one step of {tokens_per_step:,} tokens is more than two epochs of the {len(train_tokens):,}-token "
            f"training split; use a smaller {setting('total_batch')}, {setting('grad_accum')} or "
            f"{setting('batch_size')}."
        )
    rank, world = dist_info.rank, dist_info.world_size
    train_batches = TokenBatches(train_tokens, cfg.batch_size, cfg.seq_len, rank, world, shuffle=True, seed=cfg.seed)
    model = build_model(cfg).to(device)
    optimizer = configure_optimizer(model, cfg.weight_decay, cfg.lr, device_type=device.type, kind=cfg.optimizer)
    state, checkpoint_path = TrainState(), Path(cfg.out) / "last.pt"
    if cfg.resume and checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path, map_location=device)
        state = TrainState(step=checkpoint["step"], **checkpoint["extra"]["state"])
        resume_training(checkpoint, model, optimizer, train_batches, precision.scaler)
    compiled = cfg.compile and problem is None
    run = Run(
        cfg=cfg,
        dist=dist_info,
        device=device,
        precision=precision,
        model=model,
        runnable=model,
        optimizer=optimizer,
        train_batches=train_batches,
        val_tokens=val_tokens,
        state=state,
        log=RunLog(Path(cfg.out), cfg, state.step, enabled=dist_info.is_main),
        tokens_per_step=tokens_per_step,
        tf32=tf32,
        attention=attention_kernel(device, precision.dtype, model.config.n_head, model.config.head_size, cfg.seq_len),
        compiled=compiled,
        compile_problem=problem,
        memory_fit=memory_fit,
    )
    run.runnable = run.wrap(torch.compile(model) if compiled else model)
    print_banner(run, requested, len(train_tokens), resumed=state.step > 0)
    return run


def training_split(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation tokens of the corpus, or of the text file; with train_tokens, the training part is
    its first N tokens (a slice a small model can memorise), while validation stays the whole held-out 10%, which
    must hold at least one sequence."""
    name, tokens = text_name(cfg.corpus, cfg.text_file), load_tokens(cfg.corpus, text_file=cfg.text_file)
    train_tokens, val_tokens = split_tokens(tokens)
    if len(val_tokens) <= cfg.seq_len:  # a sequence of seq_len inputs needs one token more for its last target
        raise ShakeGPTError(
            f"{name} is too short for one sequence of {cfg.seq_len} tokens in its validation split: its "
            f"{len(tokens):,} tokens leave {len(val_tokens):,} in the last 10%; use a longer text or a smaller "
            f"{setting('seq_len')}."
        )
    if cfg.train_tokens is not None:
        if cfg.train_tokens > len(train_tokens):
            raise ShakeGPTError(
                f"{setting('train_tokens')} {cfg.train_tokens:,} is more than the {len(train_tokens):,} tokens of the "
                f"{name} training split."
            )
        train_tokens = train_tokens[: cfg.train_tokens]
    return train_tokens, val_tokens


def print_banner(run: Run, requested: TrainConfig, n_train_tokens: int, resumed: bool) -> None:
    cfg, world, log = run.cfg, run.dist.world_size, run.log
    if resumed:
        log.print(f"resumed from {run.out / 'last.pt'} at step {run.state.step}.")
    elif cfg.resume:
        log.print(f"--resume: no checkpoint at {run.out / 'last.pt'}, starting from scratch.")
    processes = f"{world} process(es)" + (" with DistributedDataParallel" if run.dist.in_group else "")
    compiled = " + compile" if run.compiled else ""
    log.print(
        f"training {cfg.preset} ({run.model.num_params() / 1e6:.1f}M parameters) on "
        f"{text_name(cfg.corpus, cfg.text_file)} | "
        f"{describe_device(run.device)} | {run.precision.name}{' + TF32' if run.tf32 else ''}"
        f" | attention: {run.attention}{compiled} | {processes} | {run.tokens_per_step:,} tokens per step "
        f"({cfg.batch_size} x {cfg.seq_len} x {cfg.grad_accum} x {world}) | {cfg.max_steps} steps | "
        f"{n_train_tokens:,} train / {len(run.val_tokens):,} val tokens"
    )
    if run.compile_problem:
        log.print(f"warning: {run.compile_problem}; training goes on without compiling.")
    if run.memory_fit is not None:
        log.print(run.memory_fit.line(cfg.grad_accum))
    if requested.preset is None and run.device.type != "cuda":
        log.print(
            f"no CUDA GPU here: training the {cfg.preset} preset, which finishes in minutes; on a GPU the default is "
            "the 124M GPT-2 (--preset gpt2)."
        )


def train(cfg: TrainConfig) -> dict:
    """Train a GPT on Shakespeare as `cfg` says and return the run's summary (also written to OUT/summary.json).
    Running out of GPU memory ends the run with one sentence saying which setting to lower (ShakeGPTError)."""
    dist_info, device = setup_distributed(cfg.device)
    run = None
    try:
        run = start_run(cfg, dist_info, device)
        return finish_run(run, train_loop(run))
    except torch.OutOfMemoryError:
        pass  # reported below, outside this block: the tensors its traceback holds are freed first
    finally:
        if run is not None:
            run.log.close()
        if in_process_group():
            dist.destroy_process_group()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # a notebook goes on in the same process
    if run is None:  # building the model or the optimizer
        raise ShakeGPTError(
            f"out of memory on {device} before training started: free the GPU memory other objects hold (a model "
            f"of an earlier cell?) or use a smaller {setting('preset')}."
        )
    raise run.out_of_memory()


def train_loop(run: Run) -> str:
    """Step until max_steps, the target loss or early stopping; log, evaluate, sample and checkpoint on the way.
    Returns why it stopped. The device is waited for once per log window, never per step, and the first step
    (which compiles) is timed apart from the others."""
    cfg, state, device = run.cfg, run.state, run.device
    progress = progress_bar(cfg.max_steps, state.step) if run.dist.is_main and cfg.progress else None
    peak, n_params = peak_flops(device, run.precision.dtype), run.model.num_params()
    window: list[torch.Tensor] = []
    first_step, window_start, timed_in_window = state.step + 1, time.perf_counter(), 0
    run.runnable.train()
    try:
        for step in range(first_step, cfg.max_steps + 1):
            lr = get_lr(step - 1, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps, cfg.schedule, cfg.decay_fraction)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            loss, norm = run.step()
            window.append(loss)
            if progress:
                progress.update(1)
            if step == first_step:
                synchronize(device)
                warmup_s = time.perf_counter() - window_start
                state.warmup_s += warmup_s
                window_start = time.perf_counter()
                timed_start = window_start - state.elapsed_s  # the clock of time_to_target_s goes on after a resume
            else:
                timed_in_window += 1
            is_eval = step % cfg.eval_interval == 0 or step == cfg.max_steps
            is_ckpt = (cfg.ckpt_interval and step % cfg.ckpt_interval == 0) or step == cfg.max_steps
            if not (step % cfg.log_interval == 0 or is_eval or is_ckpt):
                continue
            # A log window ends: wait for the device once, check every loss in it, then log and evaluate.
            synchronize(device)
            now = time.perf_counter()
            losses = torch.stack(window).tolist()
            check_finite(losses, first_step=step - len(losses) + 1, checkpoint=run.out / "last.pt")
            dt = (now - window_start) / timed_in_window if timed_in_window else warmup_s
            state.step, state.elapsed_s = step, now - timed_start
            state.train_s, state.timed_steps = state.train_s + now - window_start, state.timed_steps + timed_in_window
            row = {
                "step": step,
                "tokens": step * run.tokens_per_step,
                "loss": sum(losses) / len(losses),
                "lr": lr,
                "grad_norm": float(norm),
                "dt_ms": 1000 * dt,
                "tok_per_s": run.tokens_per_step / dt,
                "mfu": estimate_mfu(n_params, run.model.config, cfg.seq_len, run.tokens_per_step / dt, peak),
                "elapsed_s": state.warmup_s + state.elapsed_s,
            }
            if is_eval:
                row["val_loss"] = run.evaluate()
                if row["val_loss"] < state.best_val_loss:
                    state.best_val_loss, state.best_val_step, state.evals_without_improvement = row["val_loss"], step, 0
                    run.keep_best()
                else:
                    state.evals_without_improvement += 1
            reached = cfg.target_loss is not None and row["loss"] < cfg.target_loss
            if reached and state.target_step is None:
                state.target_step, state.time_to_target_s = step, state.elapsed_s
            run.log.record(row)
            run.log.print(log_line(row, cfg.max_steps))
            if cfg.sample_interval and step % cfg.sample_interval == 0 and run.dist.is_main:
                run.sample()
            early = cfg.early_stop is not None and state.evals_without_improvement >= cfg.early_stop
            if is_ckpt or reached or early:
                run.save("last.pt")
            if reached or early:
                return "target_loss" if reached else "early_stop"
            window, window_start, timed_in_window = [], time.perf_counter(), 0
    finally:
        if progress:
            progress.close()
    return "max_steps"


def check_finite(losses: list[float], first_step: int, checkpoint: Path) -> None:
    """Stop the run, naming the step, at the first loss that is NaN or infinite; last.pt is left as it was."""
    for offset, value in enumerate(losses):
        if not math.isfinite(value):
            raise ShakeGPTError(
                f"the loss became {value} at step {first_step + offset}; stopped. The last good checkpoint is kept at "
                f"{checkpoint}. Try a lower --lr, --grad-clip 1, or --dtype fp32."
            )


def finish_run(run: Run, stop_reason: str) -> dict:
    """The run's summary; the main process also writes a last sample, summary.json and the loss figure."""
    cfg, state = run.cfg, run.state
    run.save_kept_best()
    metrics = read_metrics(run.log.metrics_path) if run.dist.is_main else []
    summary = {
        "steps": state.step,
        "tokens": state.step * run.tokens_per_step,
        "wall_time_s": state.warmup_s + state.elapsed_s,
        "warmup_s": state.warmup_s,
        "checkpoint_s": state.checkpoint_s,
        "stop_reason": stop_reason,
        "target_loss": cfg.target_loss,
        "target_step": state.target_step,
        "time_to_target_s": state.time_to_target_s,
        "best_val_loss": state.best_val_loss if math.isfinite(state.best_val_loss) else None,
        "best_val_step": state.best_val_step,
        "eval_windows": run.eval_windows,
        "final_train_loss": metrics[-1]["loss"] if metrics else None,
        "mean_tok_per_s": state.timed_steps * run.tokens_per_step / state.train_s if state.train_s else None,
        "n_params": run.model.num_params(),
        "device": describe_device(run.device),
        "processes": run.dist.world_size,
        "train_tokens": len(run.train_batches.tokens),
        "dtype": run.precision.name,
        "tf32": run.tf32,
        "compile": run.compiled,
        "compile_problem": run.compile_problem,
        "attention_kernel": run.attention,
        "memory_fit": run.memory_fit.line(cfg.grad_accum) if run.memory_fit else None,
        "versions": versions(),
        "config": asdict(cfg),
        "model_config": run.model.config.to_dict(),
    }
    if run.dist.is_main:
        if run.latest_sample[0] != state.step:
            run.sample()
        summary["sample"] = run.latest_sample[1]
        (run.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        figure = plot_loss_curves(metrics, cfg.target_loss)
        save_figure(figure, "loss", folder=run.out)
        plt.close(figure)  # saved to disk; a notebook calling train() should not show it a second time
    return summary
