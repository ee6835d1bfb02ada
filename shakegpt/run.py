"""A training run's parts, built once before the loop (notebook 06): the settings resolved for the device, the data,
the model and its optimizer (resumed from last.pt when asked), the log, and where the run stands (TrainState, saved
in every checkpoint)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .basics import ShakeGPTError, setting
from .checkpoint import load_checkpoint, resume_training, save_checkpoint
from .data import TokenBatches, load_tokens, split_tokens, text_name
from .distributed import Distributed
from .hardware import (
    Precision,
    attention_kernel,
    compile_problem,
    describe_device,
    enable_tf32,
    get_precision,
    peak_flops,
    set_seed,
)
from .memory import MemoryFit, out_of_memory_advice
from .model import GPT, PADDED_VOCAB_SIZE
from .optim import configure_optimizer
from .run_log import RunLog
from .train_settings import TrainConfig


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

    def for_checkpoint(self) -> dict:
        """What a checkpoint stores of the state: all of it but the step, which is the checkpoint's own."""
        return {k: v for k, v in asdict(self).items() if k != "step"}


@dataclass
class Run:
    """Everything a training run works with, built once by `start_run`."""

    cfg: TrainConfig
    process: Distributed  # this process's rank among those training together
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
    peak_flops: float | None  # of this device at this precision, for the MFU (None: unknown)
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

    def write_checkpoint(self, name: str, kept_weights: dict[str, torch.Tensor] | None = None) -> None:
        """Write OUT/name from the main process, and count the time it took: the run as it is now (last.pt, best.pt),
        or the `kept_weights` of its best validation step without optimizer or data (resuming reads last.pt)."""
        if not self.process.is_main:
            return
        started = time.perf_counter()
        state, config = self.state.for_checkpoint(), asdict(self.cfg)
        if kept_weights is None:
            scaler = self.precision.scaler.state_dict() if self.precision.scaler else None
            data = self.train_batches.state_dict()
            save_checkpoint(self.out / name, self.model, self.optimizer, self.state.step, data, config, state, scaler)
        else:
            best_step = self.state.best_val_step
            save_checkpoint(self.out / name, self.model, None, best_step, None, config, state, weights=kept_weights)
        self.state.checkpoint_s += time.perf_counter() - started

    def keep_best(self) -> None:
        """The validation loss is the best so far: write best.pt now, or, with ckpt_interval 0, copy the weights
        within the device's memory (no wait, no disk write while the run is timed) for `save_kept_best`."""
        if self.cfg.ckpt_interval:
            self.write_checkpoint("best.pt")
        elif self.process.is_main:
            self.best_weights = {name: w.clone() for name, w in self.model.state_dict().items()}  # detached already

    def save_kept_best(self) -> None:
        """Write best.pt from the weights `keep_best` copied, if it copied any."""
        if self.best_weights is not None:
            self.write_checkpoint("best.pt", self.best_weights)
            self.best_weights = None

    def stop_compiling(self, problem: str) -> None:
        """Train the plain model from now on, and say why in one line."""
        torch._dynamo.reset()
        self.compiled, self.compile_problem = False, problem
        self.runnable = self.wrap(self.model)
        self.log.print(f"warning: {problem}; training goes on without compiling.")

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` as this process trains it: inside DistributedDataParallel when in a process group."""
        if not self.process.in_group:
            return model
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    @property
    def eval_windows(self) -> int:
        """How many validation windows every evaluation reads: eval_batches x batch_size x processes, with the batch
        size asked for (a micro-batch fitted to the GPU's memory changes how many go through at once, not which)."""
        batch_size = self.memory_fit.requested if self.memory_fit else self.cfg.batch_size
        return self.cfg.eval_batches * batch_size * self.process.world_size

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
    overrides = {"dropout": cfg.dropout, "loss_impl": cfg.loss_impl}
    if cfg.pad_vocab:
        overrides["vocab_size"] = PADDED_VOCAB_SIZE
    return GPT(cfg.model_config(**overrides))


def start_run(cfg: TrainConfig, memory_fit: MemoryFit | None, process: Distributed, device: torch.device) -> Run:
    """Everything a run of the resolved settings `cfg` works with: the data, the model and its optimizer (resumed from
    last.pt if asked), the precision, TF32, the device's peak FLOP/s, whether compiling works here."""
    precision = get_precision(device, cfg.dtype)
    tf32 = enable_tf32(device)
    problem = compile_problem(device) if cfg.compile else None
    set_seed(cfg.seed)
    train_tokens, val_tokens = training_split(cfg)
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * process.world_size
    if tokens_per_step > 2 * len(train_tokens):
        raise ShakeGPTError(
            f"one step of {tokens_per_step:,} tokens is more than two epochs of the {len(train_tokens):,}-token "
            f"training split; use a smaller {setting('total_batch')}, {setting('grad_accum')} or "
            f"{setting('batch_size')}."
        )
    rank, world = process.rank, process.world_size
    train_batches = TokenBatches(train_tokens, cfg.batch_size, cfg.seq_len, rank, world, shuffle=True, seed=cfg.seed)
    model = build_model(cfg).to(device)
    optimizer = configure_optimizer(model, cfg.weight_decay, cfg.lr, device_type=device.type, kind=cfg.optimizer)
    state, checkpoint_path = TrainState(), Path(cfg.out) / "last.pt"
    if cfg.resume and checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path, map_location=device)
        state = TrainState(step=checkpoint["step"], **checkpoint["train_state"])
        resume_training(checkpoint, model, optimizer, train_batches, precision.scaler)
    compiled = cfg.compile and problem is None
    run = Run(
        cfg=cfg,
        process=process,
        device=device,
        precision=precision,
        model=model,
        runnable=model,
        optimizer=optimizer,
        train_batches=train_batches,
        val_tokens=val_tokens,
        state=state,
        log=RunLog(Path(cfg.out), cfg.tensorboard, state.step, enabled=process.is_main),
        tokens_per_step=tokens_per_step,
        tf32=tf32,
        peak_flops=peak_flops(device, precision.dtype),
        attention=attention_kernel(device, precision.dtype, model.config.n_head, model.config.head_size, cfg.seq_len),
        compiled=compiled,
        compile_problem=problem,
        memory_fit=memory_fit,
    )
    run.runnable = run.wrap(torch.compile(model) if compiled else model)
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


def print_banner(run: Run, requested: TrainConfig) -> None:
    """The run's first lines: what trains, on what, how, and anything it changed or could not do."""
    cfg, world, log = run.cfg, run.process.world_size, run.log
    if run.state.step > 0:  # resumed
        log.print(f"resumed from {run.out / 'last.pt'} at step {run.state.step}.")
    elif cfg.resume:
        log.print(f"--resume: no checkpoint at {run.out / 'last.pt'}, starting from scratch.")
    processes = f"{world} process(es)" + (" with DistributedDataParallel" if run.process.in_group else "")
    compiled = " + compile" if run.compiled else ""
    log.print(
        f"training {cfg.preset} ({run.model.num_params() / 1e6:.1f}M parameters) on "
        f"{text_name(cfg.corpus, cfg.text_file)} | "
        f"{describe_device(run.device)} | {run.precision.name}{' + TF32' if run.tf32 else ''}"
        f" | attention: {run.attention}{compiled} | {processes} | {run.tokens_per_step:,} tokens per step "
        f"({cfg.batch_size} x {cfg.seq_len} x {cfg.grad_accum} x {world}) | {cfg.max_steps} steps | "
        f"{len(run.train_batches.tokens):,} train / {len(run.val_tokens):,} val tokens"
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
