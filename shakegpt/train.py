"""Training, taught in notebook 06: one optimizer step, evaluation, the loop and `train`, which runs it all. The
settings are in train_settings.py, the run's parts in run.py, what it writes in run_log.py and several processes
in distributed.py."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .basics import ShakeGPTError, first_line, setting
from .checkpoint import capture_rng, restore_rng
from .data import TokenBatches, evaluation_windows, fixed_batches
from .distributed import Distributed, leave_process_group, setup_distributed, sum_over_processes
from .hardware import (
    Precision,
    describe_device,
    get_precision,
    keep_freed_memory,
    use_threads,
    versions,
)
from .memory import MemoryFit, fit_micro_batch, memory_of
from .optim import configure_optimizer, estimate_mfu, get_lr
from .progress import progress_bar
from .run import Run, build_model, print_banner, start_run
from .run_log import StepClock, log_line, read_metrics
from .sampling import sample_text
from .tokenizer import GPT2_VOCAB_SIZE
from .train_settings import TrainConfig

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
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    if precision.scaler:
        precision.scaler.step(optimizer)
        precision.scaler.update()
    else:
        optimizer.step()
    return sum_over_processes(loss_sum) / Distributed.current().world_size, norm


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


# ---- the micro-batch that fits the GPU ---------------------------------------------------------------------------


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
    if Distributed.current().in_group:
        smallest = torch.tensor(batch_size, device=device)
        dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
        batch_size = int(smallest)
    return replace(cfg, batch_size=batch_size, grad_accum=cfg.grad_accum * cfg.batch_size // batch_size), fit


# ---- the run -----------------------------------------------------------------------------------------------------


def take_step(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step of the run (train_step). The first compiled step after a start may fail to compile (no
    kernels for this GPU, an Inductor error): the run then goes on without compiling, from the same batch and random
    state, and says so once."""
    cfg = run.cfg
    args = (run.optimizer, run.train_batches, cfg.grad_accum, run.precision, run.device, cfg.grad_clip)
    if not run.compiled or run.compile_checked:
        return train_step(run.runnable, *args)
    data, rng = run.train_batches.state_dict(), capture_rng()
    try:
        result = train_step(run.runnable, *args)
    except torch.OutOfMemoryError:
        raise
    except Exception as error:  # noqa: BLE001  (the compiler raises many types; the eager step shows real bugs)
        run.stop_compiling(f"torch.compile failed at the first step: {type(error).__name__}: {first_line(error)}")
        run.train_batches.load_state_dict(data)
        restore_rng(rng)
        return train_step(run.runnable, *args)
    run.compile_checked = True
    return result


def validation_loss(run: Run) -> float:
    """The validation loss on the same `run.eval_windows` windows every time. The plain model evaluates: the compiled
    one would compile again for eval mode without gradients, and DDP has nothing to synchronise here."""
    cfg, process = run.cfg, run.process
    windows = evaluation_windows(
        run.val_tokens, cfg.batch_size, cfg.seq_len, run.eval_windows, process.rank, process.world_size
    )
    return evaluate(run.model, windows, run.precision, run.device)


def write_sample(run: Run) -> None:
    """Write a sample of the model as it is now (main process only)."""
    cfg = run.cfg
    text = sample_text(run.model, cfg.sample_prompt, cfg.sample_tokens, seed=cfg.seed)[0]
    run.latest_sample = (run.state.step, text)
    run.log.record_sample(run.state.step, text)


def train(cfg: TrainConfig) -> dict:
    """Train a GPT on Shakespeare as `cfg` says and return the run's summary (also written to OUT/summary.json).
    Running out of GPU memory ends the run with one sentence saying which setting to lower (ShakeGPTError); an
    interruption (Ctrl-C, or SIGINT from a time limit) writes the summary of what ran before it goes on."""
    process, device = setup_distributed(cfg.device)
    run = None
    try:
        resolved, memory_fit = fit_to_memory(cfg.resolve(device, process.world_size), device)
        use_threads(resolved.threads)
        if device.type == "cpu":
            keep_freed_memory()  # glibc would hand a step's freed memory back to the OS, then fault it in again
        run = start_run(resolved, memory_fit, process, device)
        print_banner(run, cfg)
        try:
            stop_reason = train_loop(run)
        except KeyboardInterrupt:
            finish_run(run, "interrupted")
            raise
        return finish_run(run, stop_reason)
    except torch.OutOfMemoryError:
        pass  # reported below, outside this block: the tensors its traceback holds are freed first
    finally:
        if run is not None:
            run.log.close()
        leave_process_group()
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
    Returns why it stopped. The device is waited for once per log window, never per step (see StepClock)."""
    cfg, state = run.cfg, run.state
    progress = progress_bar(cfg.max_steps, state.step) if run.process.is_main and cfg.progress else None
    clock, losses = StepClock(state, run.device), []
    run.runnable.train()
    try:
        for step in range(state.step + 1, cfg.max_steps + 1):
            lr = get_lr(step - 1, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps, cfg.schedule, cfg.decay_fraction)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            loss, norm = take_step(run)
            losses.append(loss)
            clock.step_taken()
            if progress:
                progress.update(1)
            evaluating = step % cfg.eval_interval == 0 or step == cfg.max_steps
            checkpointing = (cfg.ckpt_interval and step % cfg.ckpt_interval == 0) or step == cfg.max_steps
            if not (step % cfg.log_interval == 0 or evaluating or checkpointing):
                continue
            row = window_row(run, step, lr, norm, torch.stack(losses).tolist(), clock.end_window(step))
            if evaluating:
                record_validation(run, row)
            reached = cfg.target_loss is not None and row["loss"] < cfg.target_loss
            if reached and state.target_step is None:
                state.target_step, state.time_to_target_s = step, state.elapsed_s
            run.log.record(row)
            run.log.print(log_line(row, cfg.max_steps))
            if cfg.sample_interval and step % cfg.sample_interval == 0 and run.process.is_main:
                write_sample(run)
            early = cfg.early_stop is not None and state.evals_without_improvement >= cfg.early_stop
            if checkpointing or reached or early:
                run.write_checkpoint("last.pt")
            if reached or early:
                return "target_loss" if reached else "early_stop"
            losses = []
            clock.start_window()
    finally:
        if progress:
            progress.close()
    return "max_steps"


def window_row(run: Run, step: int, lr: float, norm: torch.Tensor, losses: list[float], step_s: float) -> dict:
    """The metrics row of a log window that ends at `step`, after checking every loss in it."""
    check_finite(losses, first_step=step - len(losses) + 1, checkpoint=run.out / "last.pt")
    tok_per_s = run.tokens_per_step / step_s
    return {
        "step": step,
        "tokens": step * run.tokens_per_step,
        "loss": sum(losses) / len(losses),
        "lr": lr,
        "grad_norm": float(norm),
        "dt_ms": 1000 * step_s,
        "tok_per_s": tok_per_s,
        "mfu": estimate_mfu(run.model.num_params(), run.model.config, run.cfg.seq_len, tok_per_s, run.peak_flops),
        "elapsed_s": run.state.warmup_s + run.state.elapsed_s,
    }


def record_validation(run: Run, row: dict) -> None:
    """Add the validation loss to `row`; a new best is kept (best.pt), a worse one counts towards early stopping."""
    state = run.state
    row["val_loss"] = validation_loss(run)
    if row["val_loss"] < state.best_val_loss:
        state.best_val_loss, state.best_val_step, state.evals_without_improvement = row["val_loss"], row["step"], 0
        run.keep_best()
    else:
        state.evals_without_improvement += 1


def check_finite(losses: list[float], first_step: int, checkpoint: Path) -> None:
    """Stop the run, naming the step, at the first loss that is NaN or infinite; last.pt is left as it was."""
    for offset, value in enumerate(losses):
        if not math.isfinite(value):
            raise ShakeGPTError(
                f"the loss became {value} at step {first_step + offset}; stopped. The last good checkpoint is kept at "
                f"{checkpoint}. Try a lower --lr, --grad-clip 1, or --dtype fp32."
            )


def finish_run(run: Run, stop_reason: str) -> dict:
    """The run's summary; the main process also writes best.pt if it was kept in memory, a last sample,
    summary.json and the loss figure."""
    cfg, state = run.cfg, run.state
    run.save_kept_best()
    metrics = read_metrics(run.log.metrics_path) if run.process.is_main and run.log.metrics_path.exists() else []
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
        "processes": run.process.world_size,
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
    if run.process.is_main:
        if run.latest_sample[0] != state.step:
            write_sample(run)
        summary["sample"] = run.latest_sample[1]
        (run.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if metrics:
            run.log.draw_loss_curves(metrics, cfg.target_loss)
    return summary
