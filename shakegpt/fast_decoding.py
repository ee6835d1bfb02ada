"""Decoding on a GPU without paying for kernel launches. Cached decoding of one token is some 200 small kernels, so a
GPU waits on the CPU that launches them. Here every shape is fixed (the cache has all block_size slots, attention
masks the empty ones, the next free slot is a tensor on the device), so the one-token step compiles once and CUDA
graphs replay it whole. The prompt is read apart, eagerly; tokens are chosen on the device. Greedy tokens are those
of `sampling.generate`; on a CPU, `generate` stays the fast path."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .model import GPT, GPTConfig
from .sampling import cache_dtype, sampling_probabilities


class StaticKVCache:
    """A key/value cache whose shapes never change: attention reads every slot, masked to the filled ones up to each
    query's own position, and the next free slot is held on the device, so the same compiled step serves any
    position."""

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device | str, dtype: torch.dtype):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.head_size)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # the next free slot
        self.slots = torch.arange(config.block_size, device=device)
        for tensor in (self.keys, self.values, self.position, self.slots):
            torch._dynamo.mark_static_address(tensor)  # CUDA graphs read and write them in place
        self.new_positions = self.mask = None  # set by `positions` for the tokens of one forward pass

    def positions(self, n_tokens: int) -> torch.Tensor:
        """The positions of `n_tokens` new tokens, from the next free slot; each may see the slots up to its own."""
        self.new_positions = self.position + torch.arange(n_tokens, device=self.position.device)
        self.mask = self.slots <= self.new_positions[:, None]  # (n_tokens, block_size)
        return self.new_positions

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this layer's new keys and values into their slots; return every slot. The last layer moves the next
        free slot on."""
        self.keys[layer].index_copy_(2, self.new_positions, k)
        self.values[layer].index_copy_(2, self.new_positions, v)
        if layer == self.keys.size(0) - 1:
            self.position += k.size(2)
        return self.keys[layer], self.values[layer]


def choose_token(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, noise: torch.Tensor | None
) -> torch.Tensor:
    """One token per row, on the device: greedy at temperature 0, else the largest probability/noise with noise drawn
    from Exp(1), which picks each token with its probability (an exponential race) without a sync to the host."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = sampling_probabilities(logits, temperature, top_k, top_p)
    return (probs / noise).argmax(dim=-1, keepdim=True)


class CompiledDecoder:
    """`generate_stream` for one model and batch size, with a StaticKVCache and the one-token step compiled once
    (`mode="reduce-overhead"`: CUDA graphs on a GPU). Build it once and reuse it: the first tokens pay for
    compiling."""

    def __init__(self, model: GPT, batch_size: int = 1, mode: str | None = "reduce-overhead"):
        self.model = model.eval()
        device = next(model.parameters()).device
        self.cache = StaticKVCache(model.config, batch_size, device, cache_dtype(model, device))
        self.compiled_step = torch.compile(self.step, mode=mode, fullgraph=True, dynamic=False)

    def step(
        self, tokens: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, noise: torch.Tensor
    ) -> torch.Tensor:
        """Read `tokens` after the cached ones and choose the next token."""
        logits, _ = self.model(tokens, cache=self.cache)
        return choose_token(logits[:, -1, :], temperature, top_k, top_p, noise)

    @torch.no_grad()
    def stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        top_p: float | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield each new (B, 1) token, as generate_stream does: the prompt's last block_size tokens are read eagerly,
        every new token by the compiled step; once the context is full, the window slides and is read again."""
        block_size = self.model.config.block_size
        generator = torch.Generator(idx.device).manual_seed(seed) if seed is not None else None
        tokens = idx.new_empty(idx.size(0), idx.size(1) + max_new_tokens)
        tokens[:, : idx.size(1)] = idx
        end, filled = idx.size(1), block_size  # a full cache: the first pass reads the prompt
        noise_shape = (idx.size(0), self.model.n_valid_tokens)
        for _ in range(max_new_tokens):
            noise = None
            if temperature != 0:  # Exp(1) draws for the exponential race, from this run's generator
                noise = torch.empty(noise_shape, device=idx.device).exponential_(generator=generator)
            if filled == block_size:
                context = tokens[:, max(0, end - block_size) : end]
                self.cache.position.zero_()
                next_token = self.step(context, temperature, top_k, top_p, noise)
                filled = context.size(1)
            else:
                torch.compiler.cudagraph_mark_step_begin()  # the last replay's output is no longer read
                next_token = self.compiled_step(tokens[:, end - 1 : end], temperature, top_k, top_p, noise).clone()
                filled += 1
            tokens[:, end] = next_token[:, 0]
            end += 1
            yield next_token

    def generate(self, idx: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
        """The prompt followed by `max_new_tokens` new tokens (see `stream` for the settings)."""
        return torch.cat([idx, *self.stream(idx, max_new_tokens, **sampling)], dim=1)
