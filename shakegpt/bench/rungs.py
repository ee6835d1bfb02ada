"""The rungs of the optimization ladder, taught in notebook 05: what each one changes (a function of a RungSetup, as a
notebook cell writes it), why it should be faster, and what a device needs to take it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..hardware import DTYPES, ampere_or_newer, auto_dtype, compile_problem, get_precision
from ..model import PADDED_VOCAB_SIZE, GPTConfig
from ..optim import MuonWithAdamW, configure_optimizer, fused_adamw_problem, muon_problem
from ..train_settings import default_loss


@dataclass
class RungSetup:
    """What one rung trains, before it is built: the baseline, changed by the rungs below it and by the rung itself,
    each a few lines of PyTorch (a notebook cell writes its own). Its `autocast` and `scaler` are what train_step
    reads as the precision."""

    device: torch.device
    config: GPTConfig  # the model's shape, its attention and its loss
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]  # makes the optimizer of a model
    compile: Callable[[nn.Module], nn.Module] = lambda model: model  # what trains: the model, or torch.compile(model)
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # entered for each forward
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    grad_accum: int = 1  # micro-batches per optimizer step

    def features(self) -> dict:
        """What this setup amounts to, by name: its precision, TF32, attention, loss, compilation, vocabulary,
        optimizer and accumulation (what a result row records)."""
        dtype = getattr(self.autocast(), "fast_dtype", torch.float32)
        probe = nn.Linear(1, 1, device=self.device)
        optimizer = self.optimizer(probe)
        return {
            "dtype": {value: key for key, value in DTYPES.items()}[dtype],
            "tf32": torch.backends.cuda.matmul.allow_tf32,
            "attn_impl": self.config.attn_impl,
            "loss_impl": self.config.loss_impl,
            "compile": self.compile(probe) is not probe,
            "vocab_size": self.config.vocab_size,
            "optimizer": "muon" if isinstance(optimizer, MuonWithAdamW) else "adamw",
            "fused_adamw": bool(getattr(optimizer, "adamw", optimizer).defaults.get("fused")),
            "grad_accum": self.grad_accum,
        }


# The library's code of each rung, as a notebook cell would write it: a function that changes a RungSetup.


def keep_the_baseline(setup: RungSetup) -> None:
    """float32 everywhere, textbook attention, full logits then cross-entropy, AdamW looping over the tensors."""


def use_tf32(setup: RungSetup) -> None:
    torch.backends.cuda.matmul.allow_tf32 = True  # float32 products on tensor cores, with a 10-bit mantissa
    torch.backends.cudnn.allow_tf32 = True


def use_autocast(setup: RungSetup) -> None:
    precision = get_precision(setup.device)  # bf16 where the hardware has it, fp16 with loss scaling on older GPUs
    setup.autocast, setup.scaler = precision.autocast, precision.scaler


def use_sdpa(setup: RungSetup) -> None:
    setup.config = setup.config.replace(attn_impl="sdpa")  # the model calls F.scaled_dot_product_attention


def use_compile(setup: RungSetup) -> None:
    setup.compile = torch.compile


def use_chunked_loss(setup: RungSetup) -> None:
    setup.config = setup.config.replace(loss_impl="chunked")


def pad_the_vocabulary(setup: RungSetup) -> None:
    setup.config = setup.config.replace(vocab_size=PADDED_VOCAB_SIZE)


def use_fused_adamw(setup: RungSetup) -> None:
    setup.optimizer = lambda model: configure_optimizer(model, device_type=setup.device.type, fused=True)


def use_muon(setup: RungSetup) -> None:
    fused = setup.features()["fused_adamw"]  # AdamW, for the rest, as the rungs below left it
    setup.optimizer = lambda model: configure_optimizer(model, device_type=setup.device.type, fused=fused, kind="muon")


@dataclass(frozen=True)
class Rung:
    """One step of the ladder: its code (a function that changes a RungSetup), why it should be faster, what a device
    needs to take it, and where it is kept. A rung not kept on a device is measured there beside the ladder: the
    rungs above it build on the rung below it."""

    name: str
    change: Callable[[RungSetup], None]
    why: str
    needs: str | None = None  # "tf32", "autocast", "compile", "fused" or "muon": see rung_problem
    kept: Callable[[torch.device], bool] = lambda device: True


def ladder_rungs(batch_size: int, grad_accum: int) -> list[Rung]:
    """The ladder, cheapest and most general first. Each rung is measured on top of every rung below it that this
    device keeps, so its gain over the rung below is its own: compiling comes before the choice of the loss, whose
    fastest form differs between devices."""

    def accumulate(setup: RungSetup) -> None:
        setup.grad_accum = grad_accum  # train_step: grad_accum micro-batches, each loss / grad_accum, one update

    return [
        Rung("fp32 baseline", keep_the_baseline, "plain float32, textbook attention, full logits then cross-entropy"),
        Rung("TF32", use_tf32, "fp32 matrix products on tensor cores with a 10-bit mantissa", needs="tf32"),
        Rung("autocast", use_autocast, "matrix products in bf16 (fp16 with loss scaling on older GPUs)", "autocast"),
        Rung("SDPA attention", use_sdpa, "one fused attention kernel, no T x T matrix in memory"),
        Rung("torch.compile", use_compile, "kernels fused by the compiler, fewer trips through memory", "compile"),
        Rung(
            "chunked cross-entropy",
            use_chunked_loss,
            "output layer and loss by chunks of rows: never the full tokens x vocab logits (kept where training uses "
            "it: off CUDA)",
            kept=lambda device: default_loss(device) == "chunked",
        ),
        Rung("vocab 50304", pad_the_vocabulary, "a vocabulary padded to a multiple of 128"),
        Rung(
            "fused AdamW",
            use_fused_adamw,
            "the update in fused kernels; below it fused=False, so torch loops over the tensors (no foreach)",
            needs="fused",
        ),
        Rung(
            "gradient accumulation",
            accumulate,
            f"{grad_accum} micro-steps of {batch_size} sequences (unchanged) per optimizer step: "
            f"{grad_accum}x the tokens per step",
        ),
        Rung(
            "Muon",
            use_muon,
            "a modern optimizer: the hidden matrices' updates orthogonalised; a step costs more and pays only in fewer "
            "steps to a loss (a training run measures that), so it is beside the ladder everywhere",
            needs="muon",
            kept=lambda device: False,
        ),
    ]


def ladder_compile_problem(device: torch.device, compile_allowed: bool) -> str | None:
    """Why torch.compile is not tried here, or None: switched off, or it cannot build and run code on this device."""
    if not compile_allowed:
        return "switched off (--no-compile, the default off CUDA; --compile tries it): compiling takes a minute or more"
    return compile_problem(device)


def rung_problem(rung: Rung, device: torch.device, compile_allowed: bool) -> str | None:
    """Why this device cannot take this rung (a sentence), or None when it can."""
    if rung.needs == "tf32" and not ampere_or_newer(device):
        return (
            f"TF32 is a tensor-core format of NVIDIA GPUs from Ampere (compute capability 8.0) on; {device.type} "
            "has none, so float32 products stay float32"
        )
    if rung.needs == "autocast" and auto_dtype(device) == "fp32":
        return (
            "no native bf16 here (and fp16 with loss scaling is for GPUs without bf16): autocast would only add "
            "casts, so this device trains in float32"
        )
    if rung.needs == "compile":
        return ladder_compile_problem(device, compile_allowed)
    if rung.needs == "fused":
        return fused_adamw_problem(device)
    if rung.needs == "muon":
        return muon_problem()
    return None
