"""Section 7 — training: the settings, one optimizer step, evaluation, and the whole run with its logs,
checkpoints, exact resume and multi-process (DistributedDataParallel) support."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import load_checkpoint, restore_rng, save_checkpoint
from .config import PADDED_VOCAB_SIZE, PRESETS, GPTConfig, ShakeGPTError
from .data import CORPORA, TokenBatches, load_tokens, split_tokens
from .hardware import (
    Precision,
    describe_device,
    enable_tf32,
    get_device,
    get_precision,
    peak_flops,
    set_seed,
    synchronize,
    versions,
)
from .model import GPT
from .optim import configure_optimizer, estimate_mfu, get_lr
from .plots import plot_loss_curves, save_figure
from .sampling import sample_text


def option(default, help: str, **extra):
    """A TrainConfig field with its command-line help text (the CLI is generated from these fields)."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Every setting of a training run; each field is also a `python -m shakegpt_utils train --flag`.
    None means "choose for this machine" (see `resolve`)."""

    preset: str | None = option(None, "model size: gpt2 (124M), small or tiny; default gpt2 on a GPU, small on a CPU")
    corpus: str = option("tinyshakespeare", "tinyshakespeare or complete")
    batch_size: int | None = option(None, "sequences per micro-step per process")
    seq_len: int | None = option(None, "tokens per sequence (at most the model's context)")
    grad_accum: int = option(1, "micro-steps per optimizer step")
    total_batch: int | None = option(None, "sequences per optimizer step over all processes; sets --grad-accum")
    max_steps: int | None = option(None, "optimizer steps (the schedule's length)")
    lr: float | None = option(None, "peak learning rate")
    min_lr: float | None = option(None, "final learning rate (default lr/10)")
    warmup_steps: int | None = option(None, "steps of linear warmup")
    weight_decay: float = option(0.1, "AdamW weight decay (matrices only)")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: off)")
    dropout: float = option(0.0, "dropout probability")
    pad_vocab: bool = option(True, "pad the vocabulary to 50304 (faster matrix kernels)")
    dtype: str = option("auto", "auto, bf16, fp16 or fp32")
    compile: bool | None = option(None, "torch.compile the model (default: on for CUDA)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    seed: int = option(1337, "random seed: initialisation, data order, dropout")
    eval_interval: int | None = option(None, "steps between validation evaluations")
    eval_batches: int = option(20, "validation batches per evaluation")
    sample_interval: int | None = option(None, "steps between text samples (0: none)")
    sample_prompt: str = option("ROMEO:", "prompt for the samples written during training")
    sample_tokens: int = option(100, "tokens per sample written during training")
    log_interval: int | None = option(None, "steps between log lines")
    ckpt_interval: int | None = option(None, "steps between writes of last.pt")
    target_loss: float | None = option(None, "stop once the mean training loss of a log window is below this")
    early_stop: int | None = option(None, "stop after this many evaluations without a better validation loss")
    out: str = option("runs/shakespeare", "output folder")
    resume: bool = option(False, "continue from OUT/last.pt")
    tensorboard: bool = option(True, "write TensorBoard event files")
    progress: bool = option(True, "show a progress bar")

    def resolve(self, device: torch.device) -> TrainConfig:
        """Fill the None fields with what suits the device: the 124M model on a GPU, a small one that finishes in
        a few minutes on a CPU. Raises ShakeGPTError on settings that cannot work."""
        on_gpu = device.type == "cuda"
        values = asdict(self)
        preset = self.preset or ("gpt2" if on_gpu else "small")
        if preset not in PRESETS:
            raise ShakeGPTError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
        if self.corpus not in CORPORA:
            raise ShakeGPTError(f"unknown corpus {self.corpus!r}; choose one of {', '.join(CORPORA)}.")
        block_size = GPTConfig.preset(preset).block_size
        defaults = GPU_DEFAULTS if preset == "gpt2" else CPU_DEFAULTS
        for name, value in defaults.items():
            if values[name] is None:
                values[name] = value
        values.update(preset=preset, seq_len=self.seq_len or block_size)
        values["batch_size"] = values["batch_size"] or (16 if preset == "gpt2" else 8)
        values["min_lr"] = values["min_lr"] if values["min_lr"] is not None else values["lr"] / 10
        values["compile"] = on_gpu if self.compile is None else self.compile
        cfg = TrainConfig(**values)
        cfg.check(block_size)
        return cfg

    def check(self, block_size: int) -> None:
        positive = (
            "batch_size",
            "seq_len",
            "grad_accum",
            "max_steps",
            "eval_interval",
            "log_interval",
            "ckpt_interval",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ShakeGPTError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}.")
        if self.seq_len > block_size:
            raise ShakeGPTError(f"--seq-len {self.seq_len} is above the {self.preset} model's context of {block_size}.")
        if not 0 <= self.dropout < 1:
            raise ShakeGPTError(f"--dropout must be in [0, 1), not {self.dropout}.")
        if self.lr <= 0 or self.min_lr < 0:
            raise ShakeGPTError("--lr must be positive and --min-lr not negative.")


# What None resolves to: the reference run on a GPU; minutes on a laptop CPU.
GPU_DEFAULTS = dict(
    max_steps=3000,
    lr=6e-4,
    warmup_steps=100,
    eval_interval=100,
    sample_interval=500,
    log_interval=10,
    ckpt_interval=250,
)
CPU_DEFAULTS = dict(
    max_steps=400, lr=1e-3, warmup_steps=30, eval_interval=50, sample_interval=200, log_interval=10, ckpt_interval=100
)


# ---- distributed set-up ----------------------------------------------------------------------------------------


@dataclass
class Distributed:
    """Where this process stands among those torchrun started (a single process is rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(requested_device: str) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes in RANK/WORLD_SIZE (NCCL on CUDA, gloo on CPU), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), get_device(requested_device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = get_device(requested_device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, local_rank, world_size), device


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The average of `value` over all processes (itself when running alone)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
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
    return mean_over_processes(loss_sum), norm


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: TokenBatches, n_batches: int, precision: Precision, device: torch.device
) -> float:
    """Mean loss over the first `n_batches` validation batches (the same ones every time), over all processes."""
    was_training = model.training
    model.eval()
    batches.load_state_dict({"epoch": 0, "position": 0})
    n_batches = min(n_batches, max(1, batches.steps_per_epoch()))
    total = torch.zeros((), device=device)
    for _ in range(n_batches):
        x, y = to_device(*batches.next_batch(), device)
        with precision.autocast():
            _, loss = model(x, y)
        total += loss.float()
    model.train(was_training)
    return mean_over_processes(total / n_batches).item()


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

            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None)

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


# ---- the run -----------------------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig) -> GPT:
    """The model a TrainConfig asks for (its preset, dropout and vocabulary padding)."""
    overrides = {"dropout": cfg.dropout}
    if cfg.pad_vocab:
        overrides["vocab_size"] = PADDED_VOCAB_SIZE
    return GPT(GPTConfig.preset(cfg.preset, **overrides))


def train(cfg: TrainConfig) -> dict:
    """Train a GPT on Shakespeare as `cfg` says and return the run's summary (also written to OUT/summary.json)."""
    dist_info, device = setup_distributed(cfg.device)
    try:
        return run_training(cfg, dist_info, device)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run_training(requested: TrainConfig, dist_info: Distributed, device: torch.device) -> dict:
    cfg = requested.resolve(device)
    if cfg.total_batch is not None:
        per_micro_step = cfg.batch_size * dist_info.world_size
        if cfg.total_batch % per_micro_step:
            raise ShakeGPTError(
                f"--total-batch {cfg.total_batch} is not divisible by batch-size x processes = {per_micro_step}."
            )
        cfg.grad_accum = cfg.total_batch // per_micro_step
    out = Path(cfg.out)
    precision = get_precision(device, cfg.dtype)
    tf32 = enable_tf32(device)
    set_seed(cfg.seed)

    train_tokens, val_tokens = split_tokens(load_tokens(cfg.corpus))
    rank, world = dist_info.rank, dist_info.world_size
    train_batches = TokenBatches(train_tokens, cfg.batch_size, cfg.seq_len, rank, world, shuffle=True, seed=cfg.seed)
    val_batches = TokenBatches(val_tokens, cfg.batch_size, cfg.seq_len, rank, world, shuffle=False)

    model = build_model(cfg).to(device)
    optimizer = configure_optimizer(model, cfg.weight_decay, cfg.lr, device_type=device.type)
    state = {
        "step": 0,
        "elapsed": 0.0,
        "best_val_loss": math.inf,
        "best_val_step": None,
        "target_step": None,
        "time_to_target": None,
        "bad_evals": 0,
    }
    checkpoint_path, best_path = out / "last.pt", out / "best.pt"
    resumed = False
    if cfg.resume and checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path, map_location=device)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        train_batches.load_state_dict(checkpoint["data"])
        state.update(checkpoint["extra"]["state"])
        if precision.scaler and checkpoint["extra"].get("scaler"):
            precision.scaler.load_state_dict(checkpoint["extra"]["scaler"])
        restore_rng(checkpoint["rng"])
        resumed = True
    log = RunLog(out, cfg, state["step"], enabled=dist_info.is_main)
    if cfg.resume and not resumed:
        log.print(f"--resume: no checkpoint at {checkpoint_path}, starting from scratch.")
    elif resumed:
        log.print(f"resumed from {checkpoint_path} at step {state['step']}.")

    plain_model = model
    n_params = plain_model.num_params()
    if cfg.compile:
        model = torch.compile(model)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * world
    peak = peak_flops(device, precision.dtype)
    log.print(
        f"training {cfg.preset} ({n_params / 1e6:.1f}M parameters) on {cfg.corpus} | {describe_device(device)} | "
        f"{precision.name}{' + TF32' if tf32 else ''}{' + compile' if cfg.compile else ''} | {world} process(es) | "
        f"{tokens_per_step:,} tokens per step ({cfg.batch_size} x {cfg.seq_len} x {cfg.grad_accum} x {world}) | "
        f"{cfg.max_steps} steps | {len(train_tokens):,} train / {len(val_tokens):,} val tokens"
    )
    if requested.preset is None and device.type != "cuda":
        log.print(
            f"no CUDA GPU here: training the {cfg.preset} preset, which finishes in minutes; on a GPU the default is "
            "the 124M GPT-2 (--preset gpt2)."
        )

    def save(path: Path, step: int) -> None:
        extra = {"state": dict(state), "scaler": precision.scaler.state_dict() if precision.scaler else None}
        save_checkpoint(path, plain_model, optimizer, step, train_batches.state_dict(), asdict(cfg), extra)

    model.train()
    progress = None
    if dist_info.is_main and cfg.progress:
        from tqdm import tqdm

        progress = tqdm(total=cfg.max_steps, initial=state["step"], unit="step", dynamic_ncols=True, file=sys.stdout)
    window: list[torch.Tensor] = []
    window_start, window_first_step = time.perf_counter(), state["step"] + 1
    run_start = time.perf_counter() - state["elapsed"]
    stop_reason = "max_steps"
    last_loss, latest_sample = None, (None, "")
    try:
        for step in range(state["step"] + 1, cfg.max_steps + 1):
            lr = get_lr(step - 1, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, norm = train_step(model, optimizer, train_batches, cfg.grad_accum, precision, device, cfg.grad_clip)
            window.append(loss)
            if progress:
                progress.update(1)
            is_eval = step % cfg.eval_interval == 0 or step == cfg.max_steps
            is_ckpt = step % cfg.ckpt_interval == 0 or step == cfg.max_steps
            if not (step % cfg.log_interval == 0 or is_eval or is_ckpt):
                continue
            # A log window ends: wait for the device once, check every loss in it, then log and evaluate.
            synchronize(device)
            now = time.perf_counter()
            losses = torch.stack(window).tolist()
            for offset, value in enumerate(losses):
                if not math.isfinite(value):
                    bad = window_first_step + offset
                    raise ShakeGPTError(
                        f"the loss became {value} at step {bad}; stopped. The last good checkpoint is kept at "
                        f"{checkpoint_path}. Try a lower --lr, --grad-clip 1, or --dtype fp32."
                    )
            steps_done = len(losses)
            dt = (now - window_start) / steps_done
            last_loss = sum(losses) / steps_done
            row = {
                "step": step,
                "tokens": step * tokens_per_step,
                "loss": last_loss,
                "lr": lr,
                "grad_norm": float(norm),
                "dt_ms": 1000 * dt,
                "tok_per_s": tokens_per_step / dt,
                "mfu": estimate_mfu(n_params, plain_model.config, cfg.seq_len, tokens_per_step / dt, peak),
                "elapsed_s": now - run_start,
            }
            if is_eval:
                row["val_loss"] = evaluate(model, val_batches, cfg.eval_batches, precision, device)
                if row["val_loss"] < state["best_val_loss"]:
                    state.update(best_val_loss=row["val_loss"], best_val_step=step, bad_evals=0)
                    if dist_info.is_main:
                        save(best_path, step)
                else:
                    state["bad_evals"] += 1
            reached = cfg.target_loss is not None and last_loss < cfg.target_loss and state["target_step"] is None
            if reached:
                state.update(target_step=step, time_to_target=now - run_start)
            log.record(row)
            log.print(format_row(row, cfg.max_steps))
            state.update(step=step, elapsed=now - run_start)
            if cfg.sample_interval and step % cfg.sample_interval == 0 and dist_info.is_main:
                latest_sample = (step, sample_text(plain_model, cfg.sample_prompt, cfg.sample_tokens, seed=cfg.seed)[0])
                log.sample(*latest_sample)
            early = cfg.early_stop is not None and state["bad_evals"] >= cfg.early_stop
            if reached:
                stop_reason = "target_loss"
            elif early:
                stop_reason = "early_stop"
            if dist_info.is_main and (is_ckpt or reached or early):
                save(checkpoint_path, step)
            window, window_start, window_first_step = [], time.perf_counter(), step + 1
            if reached or early:
                break
    finally:
        if progress:
            progress.close()
    summary = {
        "steps": state["step"],
        "tokens": state["step"] * tokens_per_step,
        "wall_time_s": time.perf_counter() - run_start,
        "stop_reason": stop_reason,
        "target_loss": cfg.target_loss,
        "target_step": state["target_step"],
        "time_to_target_s": state["time_to_target"],
        "best_val_loss": state["best_val_loss"] if math.isfinite(state["best_val_loss"]) else None,
        "best_val_step": state["best_val_step"],
        "final_train_loss": last_loss,
        "mean_tok_per_s": state["step"] * tokens_per_step / max(state["elapsed"], 1e-9),
        "n_params": n_params,
        "device": describe_device(device),
        "processes": world,
        "dtype": precision.name,
        "tf32": tf32,
        "compile": cfg.compile,
        "versions": versions(),
        "config": asdict(cfg),
        "model_config": plain_model.config.to_dict(),
    }
    if dist_info.is_main:
        if latest_sample[0] != state["step"]:
            latest_sample = (
                state["step"],
                sample_text(plain_model, cfg.sample_prompt, cfg.sample_tokens, seed=cfg.seed)[0],
            )
            log.sample(*latest_sample)
        summary["sample"] = latest_sample[1]
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        figure = plot_loss_curves(read_metrics(log.metrics_path), cfg.target_loss)
        save_figure(figure, "loss", folder=out)
        plt.close(figure)  # saved to disk; a notebook calling train() should not show it a second time
    log.close()
    return summary


def format_row(row: dict, max_steps: int) -> str:
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


def train_config_fields() -> list:
    """The TrainConfig fields, for building the command line."""
    return list(fields(TrainConfig))
