"""The code paths that differ by device, on the device --device names (`pytest -m device --device cuda` on a GPU): the
chunked loss against full logits under each precision, training steps in fp16 (with a GradScaler) and bf16 against
float32 ones, DistributedDataParallel with one process against an unwrapped twin, and to_device without a wait.
On a GPU the loss has GPT-2's shapes and training its vocabulary; on a CPU both are small."""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from shakegpt.chunked_loss import ChunkedLinearCrossEntropy
from shakegpt.data import TokenBatches, evaluation_windows
from shakegpt.hardware import get_precision, set_seed, synchronize
from shakegpt.model import GPT, PADDED_VOCAB_SIZE, GPTConfig
from shakegpt.optim import configure_optimizer
from shakegpt.tokenizer import GPT2_VOCAB_SIZE
from shakegpt.train import evaluate, to_device, train_step
from shakegpt.train_settings import default_loss

# tokens x width x vocabulary rows of the output-layer loss, and rows per chunk (several chunks everywhere)
CHUNKED_LOSS_SHAPE = {"cuda": ((16384, 768, PADDED_VOCAB_SIZE), 1024), "cpu": ((1024, 64, 4096), 256)}
# The tiny preset's vocabulary, sequences per micro-step, their length and the optimizer steps of the training tests
TRAINING = {"cuda": (PADDED_VOCAB_SIZE, 8, 64, 20), "cpu": (4096, 2, 16, 10)}
# The chunked loss may differ from the fp32 reference by this fraction of the loss, and its gradients may be at most
# GRAD_RATIO times as far from the reference's as those of full logits under the same autocast, plus GRAD_FLOOR.
LOSS_TOLERANCE = {"fp32": 1e-5, "bf16": 2e-3, "fp16": 1e-3}
GRAD_RATIO, GRAD_FLOOR = 1.5, 1e-5
LOSS_SCALE = 2.0**16  # GradScaler's initial scale


def sizes(table: dict, device: torch.device) -> tuple:
    return table["cuda" if device.type == "cuda" else "cpu"]


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """float32 products in float32 on a GPU too, whatever an earlier test switched on; put back afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.double()
    return float((value.double() - reference).norm() / reference.norm())


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_chunked_loss_is_as_accurate_as_full_logits(device, dtype, no_tf32):
    """Against float32 F.cross_entropy on full logits: the loss within LOSS_TOLERANCE, the gradients no further from
    the reference's than those of full logits computed under the same autocast (fp16 through a loss scale, as
    GradScaler applies it), and the padding rows never predicted."""
    (n_tokens, width, vocab), chunk_rows = sizes(CHUNKED_LOSS_SHAPE, device)
    n_valid = vocab - 47  # like 50257 real tokens in 50304 rows
    generator = torch.Generator(device).manual_seed(0)
    h0 = torch.randn(n_tokens, width, device=device, generator=generator)
    w0 = torch.randn(vocab, width, device=device, generator=generator) * (2 / width**0.5)  # logits of std 2
    targets = torch.randint(0, n_valid, (n_tokens,), device=device, generator=generator)
    precision = get_precision(device, dtype)
    scale = LOSS_SCALE if dtype == "fp16" else 1.0

    def loss_and_grads(loss_fn, scale: float) -> tuple[float, torch.Tensor, torch.Tensor]:
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss = loss_fn(h, w)
        (loss * scale).backward()
        return loss.item(), h.grad / scale, w.grad / scale

    def full_logits(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            logits = h @ w.T
        return F.cross_entropy(logits[:, :n_valid].float(), targets)

    reference = loss_and_grads(lambda h, w: F.cross_entropy((h @ w.T)[:, :n_valid], targets), 1.0)
    full = loss_and_grads(full_logits, scale)
    chunked = loss_and_grads(
        lambda h, w: ChunkedLinearCrossEntropy.apply(h, w, targets, n_valid, chunk_rows, precision.dtype, True), scale
    )
    assert abs(chunked[0] - reference[0]) / reference[0] <= LOSS_TOLERANCE[dtype]
    for i in (1, 2):  # the gradients of the hidden states and of the weight
        allowed = GRAD_RATIO * relative_error(full[i], reference[i]) + GRAD_FLOOR
        assert relative_error(chunked[i], reference[i]) <= allowed
    assert torch.count_nonzero(chunked[2][n_valid:]) == 0


def pattern_tokens(vocab: int) -> np.ndarray:
    """A random phrase of 101 tokens repeated 40 times: a stream that a tiny model learns within a few steps."""
    phrase = np.random.default_rng(0).integers(0, min(vocab, GPT2_VOCAB_SIZE), size=101)
    return np.tile(phrase, 40).astype(np.uint16)


def tiny_training(device: torch.device, loss_impl: str) -> tuple[GPT, torch.optim.Optimizer, TokenBatches]:
    """A tiny-preset model (seed 0), its AdamW, and shuffled batches of the pattern stream (always the same order)."""
    vocab, batch_size, seq_len, _ = sizes(TRAINING, device)
    set_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=vocab, loss_impl=loss_impl)).to(device)
    optimizer = configure_optimizer(model, lr=3e-3, device_type=device.type)
    return model, optimizer, TokenBatches(pattern_tokens(vocab), batch_size, seq_len, shuffle=True, seed=1)


def training_steps(device: torch.device, dtype: str, loss_impl: str) -> tuple[list[float], list[float], float | None]:
    """The losses and gradient norms of the training steps of tiny_training under `dtype`, and the final loss scale."""
    model, optimizer, batches = tiny_training(device, loss_impl)
    precision = get_precision(device, dtype)
    steps = [train_step(model, optimizer, batches, 1, precision, device) for _ in range(sizes(TRAINING, device)[3])]
    losses, norms = ([float(step[i]) for step in steps] for i in (0, 1))
    return losses, norms, precision.scaler.get_scale() if precision.scaler else None


@pytest.mark.parametrize("loss_impl", ["chunked", "full"])  # training uses full logits on CUDA, chunks elsewhere
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_training_steps_in_half_precision_follow_float32(device, dtype, loss_impl, no_tf32):
    """Every loss within 1% of the float32 run's and falling; every gradient norm, unscaled, within 10% of float32's
    (a loss scale left in would be 65,536 times too large). fp16 goes through a GradScaler, which skips a step whose
    gradients overflow (its norm is infinite) and halves its scale for each one."""
    losses, norms, scale = training_steps(device, dtype, loss_impl)
    reference_losses, reference_norms, _ = training_steps(device, "fp32", loss_impl)
    assert losses == pytest.approx(reference_losses, rel=1e-2)
    assert losses[-1] < losses[0]
    overflowed = [i for i, norm in enumerate(norms) if not math.isfinite(norm)]
    finite = [i for i in range(len(norms)) if i not in overflowed]
    assert [norms[i] for i in finite] == pytest.approx([reference_norms[i] for i in finite], rel=0.1)
    if dtype == "fp16":
        assert scale == LOSS_SCALE * 0.5 ** len(overflowed)  # no growth: that takes 2,000 steps without overflow
        assert len(overflowed) <= 1
    else:
        assert (scale, overflowed) == (None, [])


def test_ddp_with_one_process_gives_the_losses_of_the_plain_model(device, closed_port, monkeypatch):
    """A real process group of one (NCCL on CUDA, gloo elsewhere): training steps with grad_accum=2 and an evaluation
    of a model wrapped in DistributedDataParallel give the losses of an unwrapped twin."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(closed_port))  # nothing listens there
    precision = get_precision(device, "auto")
    vocab, batch_size, seq_len, _ = sizes(TRAINING, device)
    n_windows = 3 * batch_size + 1  # the last evaluation batch is smaller than the others
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1, timeout=datetime.timedelta(minutes=1)
    )
    try:
        losses = {}
        for name in ("plain", "ddp"):
            model, optimizer, batches = tiny_training(device, default_loss(device))  # the loss training uses there
            if name == "ddp":
                model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            steps = [float(train_step(model, optimizer, batches, 2, precision, device)[0]) for _ in range(3)]
            windows = evaluation_windows(pattern_tokens(vocab), batch_size, seq_len, n_windows)
            losses[name] = [*steps, evaluate(model, windows, precision, device)]
    finally:
        dist.destroy_process_group()
    assert losses["ddp"] == pytest.approx(losses["plain"], abs=1e-4)


def test_to_device_returns_without_waiting_for_the_gpu(device, no_tf32):
    """Called with about half a second of matrix products queued, under torch.cuda.set_sync_debug_mode("error")
    (which raises on any synchronising call), to_device returns while the work still runs, and the copies arrive
    intact."""
    if device.type != "cuda":
        pytest.skip(f"CUDA only: {device.type} runs every operation at once, there is no queue to wait for")
    x, y = TokenBatches(pattern_tokens(GPT2_VOCAB_SIZE), 8, 64, shuffle=False).next_batch()
    to_device(x, y, device)  # warm up the pinned-memory allocator, as the first training step does
    synchronize(device)
    a = torch.randn(8192, 8192, device=device)
    for _ in range(24):  # 1.1 TFLOP each in float32, about 20 ms on an H100
        a = (a @ a) / 8192**0.5
    started = time.perf_counter()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x_device, y_device = to_device(x, y, device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    returned_s = time.perf_counter() - started
    assert not torch.cuda.current_stream(device).query(), f"the queued work had finished after {returned_s:.3f} s"
    synchronize(device)
    assert torch.equal(x_device.cpu(), x) and torch.equal(y_device.cpu(), y)
