"""The optimizer and its schedule, taught in notebooks 05 and 06: AdamW with decoupled weight decay (or Muon for
the hidden matrices), warmup and a cosine or warmup-stable-decay schedule, and model FLOPs utilisation."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn

from .basics import ShakeGPTError, check_choice, first_line
from .model import GPTConfig

OPTIMIZERS = ("adamw", "muon")


def configure_optimizer(
    model: nn.Module,
    weight_decay: float = 0.1,
    lr: float = 6e-4,
    betas: tuple[float, float] = (0.9, 0.95),
    device_type: str = "cpu",
    fused: bool | None = None,
    kind: str = "adamw",
) -> torch.optim.Optimizer | MuonWithAdamW:
    """AdamW that decays only matrices (weights of linear layers and embeddings), never biases or LayerNorm
    gains; fused into one kernel on CUDA unless `fused` says otherwise. kind="muon": Muon for the hidden matrices
    (see MuonWithAdamW), this AdamW for the rest."""
    check_choice("optimizer", kind, OPTIMIZERS)
    if fused is None:
        fused = device_type == "cuda"
    if kind == "muon":
        return MuonWithAdamW(model, weight_decay, lr, betas, fused)
    return torch.optim.AdamW(decay_groups(model, weight_decay), lr=lr, betas=betas, eps=1e-8, fused=fused)


def decay_groups(model: nn.Module, weight_decay: float, leave_out: Iterable[nn.Parameter] = ()) -> list[dict]:
    """The model's trained parameters (but those in `leave_out`) in two groups for AdamW: matrices decayed by
    `weight_decay`, biases and LayerNorm gains not at all (shrinking them towards zero would only fight the
    normalisation)."""
    left_out = {id(p) for p in leave_out}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in left_out]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the linear layers between the embeddings and the output layer (attention and MLP): what Muon
    updates. The embeddings and the output layer (tied to the token embedding) read or write single tokens."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [
        m.weight
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and id(m.weight) not in embeddings and not name.endswith("lm_head")
    ]


def muon_problem() -> str | None:
    """Why this torch cannot train with Muon, or None."""
    if hasattr(torch.optim, "Muon"):
        return None
    return f"torch {torch.__version__} has no torch.optim.Muon (it came in torch 2.9)"


def fused_adamw_problem(device: torch.device) -> str | None:
    """Why torch's fused AdamW cannot run on this device, or None when one step of it works."""
    try:
        weight = torch.zeros(2, device=device, requires_grad=True)
        weight.grad = torch.ones_like(weight)
        torch.optim.AdamW([weight], fused=True).step()
    except (RuntimeError, ValueError) as error:
        return f"torch {torch.__version__} has no fused AdamW for {device.type}: {first_line(error)}"
    return None


class MuonWithAdamW:
    """Muon, the optimizer of the fastest GPT-2 training runs, for the hidden matrices: it replaces each matrix's
    momentum by the nearest orthogonal matrix (a few Newton-Schulz iterations), so every direction moves as much.
    Its step is scaled to match AdamW's size (adjust_lr_fn="match_rms_adamw"), so the learning rate, weight decay and
    schedule stay AdamW's. Embeddings, biases and LayerNorm gains keep AdamW. One optimizer to the loop, the
    gradient scaler and the checkpoint."""

    def __init__(self, model: nn.Module, weight_decay: float, lr: float, betas: tuple[float, float], fused: bool):
        if problem := muon_problem():
            raise ShakeGPTError(f"{problem}: upgrade torch, or train with --optimizer adamw.")
        matrices = hidden_matrices(model)
        self.muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        groups = decay_groups(model, weight_decay, leave_out=matrices)
        self.adamw = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, fused=fused)

    @property
    def param_groups(self) -> list[dict]:
        """Both optimizers' groups: the schedule sets their learning rate, the gradient scaler unscales them."""
        return self.muon.param_groups + self.adamw.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"muon", "adamw"}:
            raise ShakeGPTError("this checkpoint's optimizer is not Muon with AdamW: resume with --optimizer adamw.")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


SCHEDULES = ("cosine", "wsd")


def get_lr(
    step: int,
    max_lr: float,
    min_lr: float,
    warmup_steps: int,
    max_steps: int,
    schedule: str = "cosine",
    decay_fraction: float = 0.2,
) -> float:
    """Linear warmup from max_lr/warmup_steps to max_lr, then to min_lr at max_steps, then flat. "cosine" decays
    along half a cosine from the end of warmup; "wsd" (warmup, stable, decay) holds max_lr and decays linearly over
    the last `decay_fraction` of the steps, so a run stopped early has trained at its peak rate."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * max_steps))
        remaining = min(1.0, (max_steps - step) / decay_steps)
        return min_lr + remaining * (max_lr - min_lr)
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
