"""Checkpoints, taught in notebook 06: everything needed to resume a run exactly, written atomically and read back
with weights_only=True."""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from .basics import ShakeGPTError, first_line
from .data import TokenBatches
from .files import write_atomically
from .model import GPT, GPTConfig

CHECKPOINT_FORMAT = "shakegpt-checkpoint-2"  # 1 kept the training state and scaler under "extra"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def clean_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the prefixes torch.compile (`_orig_mod.`) and DistributedDataParallel (`module.`) add to names, as in a
    state dict saved from a wrapped model by other code (nanoGPT's compiled checkpoints, for one)."""
    cleaned = {}
    for name, tensor in state.items():
        while name.startswith(("_orig_mod.", "module.")):
            name = name.split(".", 1)[1]
        cleaned[name] = tensor
    return cleaned


def capture_rng() -> dict:
    """Python's and PyTorch's random states, and the current CUDA device's where CUDA is in use: dropout and
    sampling continue unchanged after a resume. Torch's states are stored as bytes, not tensors, so that loading a
    checkpoint with map_location="cuda" cannot move them off the CPU, where torch.set_rng_state wants them."""
    state = {"python": random.getstate(), "torch": bytes(torch.get_rng_state().numpy())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = bytes(torch.cuda.get_rng_state().numpy())
    return state


def restore_rng(state: dict) -> None:
    """Put back the states `capture_rng` saved (CUDA's into the current CUDA device)."""
    random.setstate(state["python"])
    torch.set_rng_state(torch.frombuffer(bytearray(state["torch"]), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(state["cuda"]), dtype=torch.uint8))


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    data_state: dict | None = None,
    train_config: dict | None = None,
    train_state: dict | None = None,
    scaler: dict | None = None,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Save model config and weights (the model's own, or `weights` kept from an earlier step), optimizer, step, RNG
    states, data position, the run's settings and state and the fp16 gradient scaler to `path`, via a temporary
    file and a rename, so that a crash (even kill -9) mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = unwrap_model(model)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": plain.config.to_dict(),
        "model": plain.state_dict() if weights is None else weights,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "rng": capture_rng(),
        "data": data_state,
        "train_config": train_config,
        "train_state": train_state or {},
        "scaler": scaler,
    }
    write_atomically(path, lambda f: torch.save(payload, f))
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint safely (weights_only=True: tensors and plain data, no arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise ShakeGPTError(
            f"no checkpoint at {path}: train one with `python -m shakegpt_utils train`, or check --ckpt."
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load fails in many ways on a foreign file: KeyError, IndexError, EOFError...
        raise ShakeGPTError(
            f"{path} is not a readable checkpoint (truncated or not a checkpoint): {first_line(error)}"
        ) from error
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != CHECKPOINT_FORMAT and str(found).startswith("shakegpt-checkpoint-"):
        raise ShakeGPTError(
            f"{path} was written by another version of ShakeGPT ({found}; this one reads {CHECKPOINT_FORMAT}): "
            "train it again, or read it with the version that wrote it."
        )
    if found != CHECKPOINT_FORMAT:
        raise ShakeGPTError(f"{path} is a PyTorch file but not a ShakeGPT checkpoint.")
    payload["model"] = clean_state_dict(payload["model"])
    return payload


def resume_training(
    checkpoint: dict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: TokenBatches,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Put a run back where `checkpoint` left it: weights, optimizer moments, data position, the fp16 loss scale
    and the random states, so that it continues exactly as if it had never stopped."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    batches.load_state_dict(checkpoint["data"])
    if scaler is not None and checkpoint["scaler"]:
        scaler.load_state_dict(checkpoint["scaler"])
    restore_rng(checkpoint["rng"])


def model_from_checkpoint(checkpoint: dict, device: str | torch.device = "cpu", source: str | Path = "") -> GPT:
    """A GPT with the checkpoint's config and weights, on `device`, in eval mode; ShakeGPTError (naming `source`,
    the file it came from) when the config or the weights do not make a model."""
    try:
        model = GPT(GPTConfig.from_dict(checkpoint["model_config"]))
        model.load_state_dict(checkpoint["model"])
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        raise ShakeGPTError(
            f"{source or 'the checkpoint'} does not hold a usable ShakeGPT model: {first_line(error)}"
        ) from error
    return model.to(device).eval()


def training_text(checkpoint: dict) -> tuple[str, str | None]:
    """The corpus and the text file (None: the corpus itself) that the checkpoint's run trained on, for measuring
    memorisation against it; tiny Shakespeare where the checkpoint does not say."""
    trained_on = checkpoint.get("train_config") or {}
    return trained_on.get("corpus", "tinyshakespeare"), trained_on.get("text_file")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GPT:
    """Load a trained model from a checkpoint file, ready for sampling."""
    return model_from_checkpoint(load_checkpoint(path), device, source=path)
