"""The settings of a training run, taught in notebook 06: every field of TrainConfig is also a flag of
`python -m shakegpt_utils train`; what a None becomes depends on the preset and the device (`resolve`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .basics import ShakeGPTError, check_at_least, check_choice, check_fraction, option, setting
from .data import get_corpus, read_text_file
from .model import GPTConfig
from .optim import OPTIMIZERS, SCHEDULES


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
    loss_impl: str | None = option(None, "output-layer loss: full or chunked; default full on CUDA, chunked elsewhere")
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
        values["loss_impl"] = self.loss_impl or default_loss(device)
        check_choice("loss_impl", values["loss_impl"], ("full", "chunked"))
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


# What None resolves to, by preset: gpt2 is the reference run (a GPU's work); CPU_RUN trains small or tiny in minutes.
CPU_RUN = dict(
    batch_size=8, max_steps=400, lr=1e-3, warmup_steps=30, eval_interval=50, sample_interval=200, log_interval=10,
    ckpt_interval=100,
)  # fmt: skip
RUN_DEFAULTS = {
    "gpt2": dict(
        batch_size=16, max_steps=3000, lr=6e-4, warmup_steps=100, eval_interval=100, sample_interval=500,
        log_interval=10, ckpt_interval=250,
    ),
    "small": CPU_RUN,
    "tiny": CPU_RUN,
}  # fmt: skip


# Memorising a slice on a CPU (notebook 07): the small model reads the first 8,000 training tokens (31 windows of
# 256) until its training loss is below 0.1, evaluated often enough that the validation minimum and the rise after
# it show (notebook 07 measures where, and how long it takes).
MEMORISATION_RUN = dict(
    preset="small", train_tokens=8000, batch_size=8, seq_len=256, max_steps=500, lr=2e-3, warmup_steps=20,
    eval_interval=10, log_interval=10, ckpt_interval=500, sample_interval=0, target_loss=0.1,
)  # fmt: skip
