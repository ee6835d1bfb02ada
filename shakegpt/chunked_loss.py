"""The output layer and its loss by chunks of rows, taught in notebook 05: the cross-entropy over 50,257 classes
without ever building the (tokens x vocabulary) logits, with its gradient written by hand. The fastest loss on CPUs;
on CUDA torch.compile over full logits is faster, so training picks per device (see TrainConfig.loss_impl)."""

from __future__ import annotations

import math

import torch


class ChunkBuffers:
    """Uninitialised buffers for a chunked loss's temporary values, kept between the calls of one model on the CPU,
    where a freed large tensor would come back as fresh zeroed pages (GPU allocators cache by themselves). A model
    owns its own (see GPT): they go with it, and two models never share them."""

    def __init__(self):
        self.tensors: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The buffer called `name`, viewed as `shape`; grown when a call needs more."""
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        n = math.prod(shape)
        buffer = self.tensors.get((name, dtype))
        if buffer is None or buffer.numel() < n:
            buffer = self.tensors[(name, dtype)] = torch.empty(n, dtype=dtype)
        return buffer[:n].view(shape)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (h @ W^T) against targets, computed a chunk of rows at a time.

    The full (tokens x vocab) logits never exist: each chunk's logits are turned, in one reused buffer and in place,
    into log-probabilities (the loss) and, when a gradient is needed, into softmax - one_hot and straight into the
    gradients of h and W, so the backward pass is two stored tensors and a scale. The products only ever see values
    of normal size; the mean's 1/n_targets is applied at the end, in float32, to the narrow results (under fp16 a
    weight of 1/16,384 before the product would push many gradient entries below fp16's range). Vocabulary rows at
    or above `n_valid` (padding) are masked out. Targets of -1 are ignored.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, n_valid, chunk_rows, compute_dtype, needs_grad, buffers=None):
        n_rows, device, buffers = h.size(0), h.device, buffers or ChunkBuffers()
        hc, wc = h.to(compute_dtype), weight.to(compute_dtype)
        keep = targets != -1
        n_kept = keep.sum().clamp(min=1)
        row_weight = keep / n_kept  # each kept row's share of the mean; 0 for ignored rows
        safe_targets = targets.clamp(min=0)
        row_loss = torch.empty(n_rows, device=device, dtype=torch.float32)
        if needs_grad:
            grad_h = torch.empty(h.shape, device=device, dtype=torch.float32)
            grad_w = torch.empty(weight.shape, device=device, dtype=torch.float32)
            h_kept = hc * keep[:, None].to(compute_dtype)  # ignored rows add nothing to the weight's gradient
        chunk_rows = max(1, min(chunk_rows, n_rows))
        logits_buffer = buffers.get("logits", (chunk_rows, weight.size(0)), torch.float32, device)
        low_buffer = None
        if compute_dtype != torch.float32:
            low_buffer = buffers.get("logits_low", (chunk_rows, weight.size(0)), compute_dtype, device)
        for first in range(0, n_rows, chunk_rows):
            rows = slice(first, first + chunk_rows)
            t = safe_targets[rows]
            low = low_buffer[: t.size(0)] if low_buffer is not None else None
            log_probs = chunk_log_probs(hc[rows], wc, n_valid, logits_buffer[: t.size(0)], low)
            row_loss[rows] = log_probs.gather(1, t[:, None]).squeeze(1).neg_()
            if needs_grad:
                # d loss / d logits = (softmax - one_hot(target)) * row weight; the weight comes after the loop.
                probs = log_probs.exp_()
                probs[torch.arange(t.size(0), device=device), t] -= 1.0
                if low is not None:
                    probs = low.copy_(probs)
                grad_h[rows] = probs @ wc
                accumulate_grad_w(grad_w, probs, h_kept[rows], first == 0, buffers)
        if needs_grad:
            grad_h.mul_(row_weight[:, None])
            grad_w.div_(n_kept)
            ctx.save_for_backward(grad_h.to(h.dtype), grad_w.to(weight.dtype))
        return (row_loss * row_weight).sum()

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None, None, None, None, None


def chunk_log_probs(
    h: torch.Tensor, w: torch.Tensor, n_valid: int, out: torch.Tensor, low: torch.Tensor | None
) -> torch.Tensor:
    """log_softmax(h @ w^T) over the first n_valid columns, written into the float32 `out` (padding columns end
    as -inf); with `low` given, the product runs in its (half) dtype and is widened into `out`."""
    if low is None:
        torch.mm(h, w.T, out=out)
    else:
        out.copy_(torch.mm(h, w.T, out=low))
    if n_valid < out.size(1):
        out[:, n_valid:] = float("-inf")
    return torch.log_softmax(out, dim=1, out=out)


def accumulate_grad_w(
    grad_w: torch.Tensor, probs: torch.Tensor, h: torch.Tensor, first: bool, buffers: ChunkBuffers
) -> None:
    """grad_w (float32) = or += probs^T @ h; a half-precision product is summed in float32."""
    if probs.dtype == torch.float32:
        grad_w.addmm_(probs.T, h, beta=0.0 if first else 1.0)
        return
    product = torch.mm(probs.T, h, out=buffers.get("grad_w_low", grad_w.shape, probs.dtype, probs.device))
    if first:
        grad_w.copy_(product)
    else:
        grad_w.add_(product)


@torch.compiler.disable
def chunked_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    n_valid: int,
    chunk_rows: int = 1024,
    buffers: ChunkBuffers | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the logits x @ weight^T (first n_valid columns) against targets; follows autocast.
    `buffers` (a model's own) are reused, or fresh ones taken for this call. Runs eagerly under torch.compile: its
    reused buffers and hand-written backward are not for the compiler."""
    device_type = x.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
    # Inside an autograd Function gradients are always off, so whether they are wanted is decided out here:
    # under torch.no_grad() (evaluation) no gradient is computed at all.
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    with torch.autocast(device_type, enabled=False):
        return ChunkedLinearCrossEntropy.apply(
            x.flatten(0, -2),
            weight,
            targets.flatten(),
            n_valid,
            chunk_rows,
            dtype,
            needs_grad,
            buffers,
        )
