"""The model: causal self-attention (notebook 02), the MLP and the pre-norm block (03), GPT-2 itself (04), and the
key/value cache that makes decoding cheap (07). Conversion to and from transformers lives in hf.py, the chunked
output-layer loss in chunked_loss.py."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .basics import ShakeGPTError, check_at_least, check_choice
from .chunked_loss import ChunkBuffers, chunked_cross_entropy
from .tokenizer import GPT2_VOCAB_SIZE

# 50,304 = GPT-2's 50,257 tokens rounded up to a multiple of 128, which GPU matrix kernels like better.
PADDED_VOCAB_SIZE = 50304
PRESETS = ("gpt2", "small", "tiny")


@dataclass
class GPTConfig:
    """The shape of a GPT-2 model; the defaults are the 124M model OpenAI released."""

    block_size: int = 1024
    vocab_size: int = GPT2_VOCAB_SIZE
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    attn_impl: str = "sdpa"  # "sdpa" (flash attention where available) or "manual" (masked softmax)
    loss_impl: str = "full"  # "full" (logits, then cross-entropy: the textbook) or "chunked" (never builds all logits)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd"):  # the sizes that --n-layer, --n-head and --n-embd set
            check_at_least(name, getattr(self, name), 1)
        if self.n_embd % self.n_head:
            raise ShakeGPTError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}.")
        if self.attn_impl not in ("sdpa", "manual"):
            raise ShakeGPTError(f"attn_impl must be 'sdpa' or 'manual', not {self.attn_impl!r}.")
        if self.loss_impl not in ("chunked", "full"):
            raise ShakeGPTError(f"loss_impl must be 'chunked' or 'full', not {self.loss_impl!r}.")

    @classmethod
    def gpt2(cls, **overrides) -> GPTConfig:
        """GPT-2 small, 124M parameters: 12 layers, 12 heads, 768 wide, 1024 tokens of context."""
        return cls(**overrides)

    @classmethod
    def small(cls, **overrides) -> GPTConfig:
        """A 4-layer, 256-wide model that trains on Shakespeare in minutes on a laptop CPU."""
        return cls(**{"block_size": 256, "n_layer": 4, "n_head": 4, "n_embd": 256, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> GPTConfig:
        """A 2-layer, 64-wide model for tests and smoke runs: seconds per hundred steps."""
        return cls(**{"block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """The preset called `name` ('gpt2', 'small' or 'tiny') with some fields overridden."""
        check_choice("preset", name, PRESETS)
        return getattr(cls, name)(**overrides)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        """Rebuild a config saved with `to_dict`, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self, **changes) -> GPTConfig:
        return replace(self, **changes)


def causal_mask(n_queries: int, n_keys: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (n_queries, n_keys) mask: query i (the last n_queries positions) may see keys up to its own position."""
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril(diagonal=n_keys - n_queries)


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
        mask = None  # the causal rule; a cache of fixed size says which of its slots each new query may see
        if cache is not None:
            k, v = cache.store(layer, k, v)
            mask = cache.mask
        p = self.dropout if self.training else 0.0
        if self.attn_impl == "sdpa":
            y = self._sdpa(q, k, v, p, mask)
        else:
            y = self._manual(q, k, v, p, mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    @staticmethod
    def _sdpa(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """PyTorch's fused kernel (flash attention on recent GPUs): never stores the T x T attention matrix."""
        T, S = q.size(2), k.size(2)
        if mask is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        if T == S:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        if T == 1:  # one new query after the cache: it may see every key
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, S, q.device), dropout_p=p)

    @staticmethod
    def _manual(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The textbook formula: softmax(q k^T / sqrt(d)) v with future positions masked to -inf."""
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        allowed = causal_mask(q.size(2), k.size(2), q.device) if mask is None else mask
        scores = scores.masked_fill(~allowed, float("-inf"))
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


class GPT(nn.Module):
    """GPT-2: token and position embeddings, a stack of blocks, a final LayerNorm and an output layer tied to the
    token embedding. `model(idx, targets)` returns (logits, loss); with loss_impl="chunked" (a training setting where
    it is faster) the logits of a call with targets are never built and come back as None."""

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
        self.chunk_buffers = ChunkBuffers()  # the chunked loss's temporary values, reused between calls

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
        x = self.hidden_states(idx, cache)
        if targets is not None and self.config.loss_impl == "chunked":
            weight, n_valid = self.lm_head.weight, self.n_valid_tokens
            return None, chunked_cross_entropy(x, weight, targets, n_valid, buffers=self.chunk_buffers)
        logits = self.output_logits(x)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final LayerNorm's output (B, T, width) for the tokens idx (B, T): what the output layer reads."""
        T = idx.size(1)
        if cache is None:
            check_context(T, self.config.block_size)
            pos = torch.arange(T, device=idx.device)
        else:
            pos = cache.positions(T)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        return self.transformer.ln_f(x)

    def output_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The output layer's logits for the real tokens (padding columns of the vocabulary left out)."""
        return self.lm_head(x)[..., : self.n_valid_tokens]


def check_context(n_tokens: int, block_size: int) -> None:
    """Refuse a sequence longer than the model's context (it has no position embedding beyond it)."""
    if n_tokens > block_size:
        raise ShakeGPTError(f"sequence of {n_tokens} tokens is longer than the context of {block_size}.")


class KVCache:
    """Keys and values of every layer, preallocated for the whole context, so decoding one token costs one position."""

    mask = None  # attention reads only the filled positions, under the causal rule

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device | str, dtype: torch.dtype):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.head_size)
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled so far, in every layer

    def positions(self, n_tokens: int) -> torch.Tensor:
        """The positions of `n_tokens` new tokens: right after the cached ones."""
        check_context(self.length + n_tokens, self.keys.size(3))
        return torch.arange(self.length, self.length + n_tokens, device=self.keys.device)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this layer's new keys and values after the cached ones; return all of them so far. The last layer's
        store completes the new positions, so the length moves on then."""
        end = self.length + k.size(2)
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        keys, values = self.keys[layer, :, :, :end], self.values[layer, :, :, :end]
        if layer == self.keys.size(0) - 1:
            self.length = end
        return keys, values
