"""Section 2 — the model: attention, MLP, block, GPT, a key/value cache, and conversion to and from transformers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPT2_VOCAB_SIZE, GPTConfig, ShakeGPTError, first_line


def causal_mask(n_queries: int, n_keys: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (n_queries, n_keys) mask: query i (the last n_queries positions) may see keys up to its own position."""
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril(diagonal=n_keys - n_queries)


class KVCache:
    """Keys and values of every layer, preallocated for the whole context, so decoding one token costs one position."""

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device | str, dtype: torch.dtype):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled so far; GPT.forward advances it after all layers have stored

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this layer's new keys and values after the cached ones; return all of them so far."""
        end = self.length + k.size(2)
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position attends only to itself and earlier positions."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.attn_impl = config.attn_impl
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # queries, keys and values in one product
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.residual_projection = True  # scaled down at init, see GPT._init_weights
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, head size): each head attends independently.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.store(layer, k, v)
        p = self.dropout if self.training else 0.0
        if self.attn_impl == "sdpa":
            y = self._sdpa(q, k, v, p)
        else:
            y = self._manual(q, k, v, p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    @staticmethod
    def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
        """PyTorch's fused kernel (flash attention on recent GPUs): never stores the T x T attention matrix."""
        T, S = q.size(2), k.size(2)
        if T == S:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        if T == 1:  # one new query after the cache: it may see every key
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, S, q.device), dropout_p=p)

    @staticmethod
    def _manual(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
        """The textbook formula: softmax(q k^T / sqrt(d)) v with future positions masked to -inf."""
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        scores = scores.masked_fill(~causal_mask(q.size(2), k.size(2), q.device), float("-inf"))
        weights = F.dropout(F.softmax(scores, dim=-1), p=p)
        return weights @ v


class MLP(nn.Module):
    """Position-wise feed-forward network: widen 4x, GELU (tanh approximation, as GPT-2), project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One transformer layer, pre-norm: x + attn(ln(x)), then x + mlp(ln(x)). The residual path stays clean."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


# Reusable chunk buffers on the CPU (see scratch_buffer); keyed by name and dtype.
_CPU_SCRATCH: dict[tuple[str, torch.dtype], torch.Tensor] = {}


def scratch_buffer(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised buffer for temporary values. On the CPU a large tensor goes back to the operating system
    when freed and comes back as fresh zero-filled pages, which costs as much as the arithmetic on it, so the
    buffer is kept for the next call (one per name; not for use from several threads at once). GPU allocators
    already cache memory, so there it is a plain allocation."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    n = math.prod(shape)
    buffer = _CPU_SCRATCH.get((name, dtype))
    if buffer is None or buffer.numel() < n:
        buffer = _CPU_SCRATCH[(name, dtype)] = torch.empty(n, dtype=dtype)
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
    def forward(ctx, h, weight, targets, n_valid: int, chunk_rows: int, compute_dtype: torch.dtype, needs_grad: bool):
        n_rows, device = h.size(0), h.device
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
        logits_buffer = scratch_buffer("logits", (chunk_rows, weight.size(0)), torch.float32, device)
        low_buffer = None
        if compute_dtype != torch.float32:
            low_buffer = scratch_buffer("logits_low", (chunk_rows, weight.size(0)), compute_dtype, device)
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
                accumulate_grad_w(grad_w, probs, h_kept[rows], first == 0)
        if needs_grad:
            grad_h.mul_(row_weight[:, None])
            grad_w.div_(n_kept)
            ctx.save_for_backward(grad_h.to(h.dtype), grad_w.to(weight.dtype))
        return (row_loss * row_weight).sum()

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None, None, None, None


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


def accumulate_grad_w(grad_w: torch.Tensor, probs: torch.Tensor, h: torch.Tensor, first: bool) -> None:
    """grad_w (float32) = or += probs^T @ h; a half-precision product is summed in float32."""
    if probs.dtype == torch.float32:
        grad_w.addmm_(probs.T, h, beta=0.0 if first else 1.0)
        return
    product = torch.mm(probs.T, h, out=scratch_buffer("grad_w_low", grad_w.shape, probs.dtype, probs.device))
    if first:
        grad_w.copy_(product)
    else:
        grad_w.add_(product)


class GPT(nn.Module):
    """GPT-2: token and position embeddings, a stack of blocks, a final LayerNorm and an output layer tied to the
    token embedding. `model(idx, targets)` returns (logits, loss); with targets and loss_impl="chunked" the logits
    are never built and come back as None."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: one matrix reads and writes tokens
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 initialisation: N(0, 0.02), with projections into the residual stream scaled by 1/sqrt(2 n_layer)
        so the stream's variance does not grow with depth."""
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_projection", False):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def n_valid_tokens(self) -> int:
        """Vocabulary entries that are real tokens; the rest is padding that must never be predicted."""
        return min(self.config.vocab_size, GPT2_VOCAB_SIZE)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted once (the tied output layer is the token embedding); optionally without wpe/wte."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel() + self.transformer.wte.weight.numel()
        return n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ShakeGPTError(
                f"sequence of {start + T} tokens is longer than the context of {self.config.block_size}."
            )
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.length += T
        if targets is not None and self.config.loss_impl == "chunked":
            return None, self.chunked_loss(x, targets)
        logits = self.lm_head(x)[..., : self.n_valid_tokens]
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)

    @torch.compiler.disable
    def chunked_loss(self, x: torch.Tensor, targets: torch.Tensor, chunk_rows: int = 1024) -> torch.Tensor:
        """Cross-entropy of the output layer without materialising (B*T, vocab) logits; follows autocast. Runs
        eagerly under torch.compile (the rest of the model is compiled): it is a few large matrix products, and
        its reused buffers and hand-written backward are not something the compiler can trace."""
        device_type = x.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
        weight = self.lm_head.weight
        # Inside an autograd Function gradients are always off, so whether they are wanted is decided out here:
        # under torch.no_grad() (evaluation) no gradient is computed at all.
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        with torch.autocast(device_type, enabled=False):
            return ChunkedLinearCrossEntropy.apply(
                x.flatten(0, 1), weight, targets.flatten(), self.n_valid_tokens, chunk_rows, dtype, needs_grad
            )

    # ---- conversion to and from Hugging Face transformers ------------------------------------------------------

    @classmethod
    def from_hf(cls, source, n_head: int | None = None, **overrides) -> GPT:
        """Build our GPT from a transformers GPT2LMHeadModel, or from a bare GPT-2 state dict with `n_head` given
        (weights do not say how many heads they are split into). Conv1D weights are stored transposed."""
        if isinstance(source, Mapping):
            state = dict(source)
            if n_head is None:
                raise ShakeGPTError("a bare GPT-2 state dict does not say its number of heads: pass n_head=.")
            config_values = {}
        else:
            hf_config = source.config
            if hf_config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
                raise ShakeGPTError(f"GPT-2 uses tanh GELU; this model uses {hf_config.activation_function!r}.")
            state = source.state_dict()
            n_head = n_head or hf_config.n_head
            config_values = {"dropout": hf_config.resid_pdrop}
        state = {(k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}"): v for k, v in state.items()}
        wte, wpe = state["transformer.wte.weight"], state["transformer.wpe.weight"]
        n_layer = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.h."))
        config = GPTConfig(
            **{
                "block_size": wpe.size(0),
                "vocab_size": wte.size(0),
                "n_layer": n_layer,
                "n_head": n_head,
                "n_embd": wte.size(1),
                **config_values,
                **overrides,
            }
        )
        model = cls(config)
        ours = model.state_dict()
        converted = {}
        for name in ours:
            if name == "lm_head.weight":
                continue  # tied to wte
            tensor = state[name]
            if name.endswith(HF_CONV1D_WEIGHTS):
                tensor = tensor.t()
            converted[name] = tensor
        converted["lm_head.weight"] = converted["transformer.wte.weight"]
        model.load_state_dict(converted)
        return model

    @classmethod
    def from_pretrained(cls, name: str = "gpt2", **overrides) -> GPT:
        """OpenAI's released GPT-2 weights via transformers (downloads from the Hugging Face Hub once)."""
        try:
            from transformers import GPT2LMHeadModel
        except ImportError as error:
            raise ShakeGPTError("GPT.from_pretrained needs transformers: pip install transformers.") from error
        try:
            hf = GPT2LMHeadModel.from_pretrained(name)
        except OSError as error:
            raise ShakeGPTError(
                f"could not load pretrained {name!r} from the Hugging Face Hub (offline, or no such model): "
                f"{first_line(error)}"
            ) from error
        return cls.from_hf(hf, **overrides)


# transformers' GPT-2 stores these weights as Conv1D, (in, out): the transpose of nn.Linear's (out, in).
HF_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def export_hf(model: GPT, folder: str | Path) -> Path:
    """Write `folder/config.json` and `folder/model.safetensors` that transformers' GPT2LMHeadModel.from_pretrained
    loads offline with the same logits. A padded vocabulary is cut back to the 50,257 real tokens."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    n_tokens = model.n_valid_tokens
    tensors = {}
    for name, tensor in clean_state_dict(model.state_dict()).items():
        if name == "lm_head.weight":
            continue  # transformers ties it to wte again on load
        tensor = tensor.detach().float().cpu()
        if name.endswith(HF_CONV1D_WEIGHTS):
            tensor = tensor.t()
        if name == "transformer.wte.weight":
            tensor = tensor[:n_tokens]
        tensors[name] = tensor.contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": n_tokens,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return folder


def clean_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the prefixes torch.compile (`_orig_mod.`) and DistributedDataParallel (`module.`) add to names."""
    cleaned = {}
    for name, tensor in state.items():
        while name.startswith(("_orig_mod.", "module.")):
            name = name.split(".", 1)[1]
        cleaned[name] = tensor
    return cleaned
