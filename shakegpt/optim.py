"""The optimizer and its schedule, taught in notebooks 05 and 06: AdamW with decoupled weight decay, warmup and a
cosine decay, and model FLOPs utilisation."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import GPTConfig


def configure_optimizer(
    model: nn.Module,
    weight_decay: float = 0.1,
    lr: float = 6e-4,
    betas: tuple[float, float] = (0.9, 0.95),
    device_type: str = "cpu",
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW that decays only matrices (weights of linear layers and embeddings), never biases or LayerNorm
    gains; fused into one kernel on CUDA unless `fused` says otherwise."""
    if fused is None:
        fused = device_type == "cuda"
    return torch.optim.AdamW(decay_groups(model, weight_decay), lr=lr, betas=betas, eps=1e-8, fused=fused)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The model's trained parameters in two groups for AdamW: matrices decayed by `weight_decay`, biases and
    LayerNorm gains not at all (shrinking them towards zero would only fight the normalisation)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def get_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup from max_lr/warmup_steps to max_lr, then a cosine decay to min_lr at max_steps, then flat."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def flops_per_token(n_params: int, config: GPTConfig, seq_len: int) -> int:
    """Training FLOPs per token: 6N for the weights (forward 2N, backward 4N) plus 12·L·H·Q·T for attention."""
    head_size = config.n_embd // config.n_head
    return 6 * n_params + 12 * config.n_layer * config.n_head * head_size * seq_len


def estimate_mfu(
    n_params: int, config: GPTConfig, seq_len: int, tokens_per_second: float, peak: float | None
) -> float | None:
    """Model FLOPs utilisation: the fraction of the device's peak FLOP/s that training actually uses."""
    if not peak:
        return None
    return flops_per_token(n_params, config, seq_len) * tokens_per_second / peak
