"""Sampling, taught in notebook 08: autoregressive generation with a key/value cache, and a text-in, text-out
helper for the command line and the app."""

from __future__ import annotations

from collections.abc import Iterator
from weakref import WeakKeyDictionary

import torch

from .model import GPT, KVCache
from .tokenizer import END_OF_TEXT, get_tokenizer


def sampling_probabilities(
    logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution the next token is drawn from: the softmax of logits/temperature, kept on the top_k most
    likely tokens and then on the nucleus (the fewest most likely tokens whose probabilities reach top_p, with any
    token tied with the last one kept), zero elsewhere; not renormalised (sampling does not need it)."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_best = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1:
        ordered = probs.sort(dim=-1, descending=True).values
        mass_before = ordered.cumsum(dim=-1) - ordered  # what the more likely tokens already hold
        last_kept = ordered.masked_fill(mass_before >= top_p, float("inf")).amin(dim=-1, keepdim=True)
        probs = probs.masked_fill(probs < last_kept, 0.0)
    return probs


def pick_next_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
    top_p: float | None = None,
) -> torch.Tensor:
    """One token per row from the last position's logits: greedy when temperature is 0, else drawn from
    sampling_probabilities."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = sampling_probabilities(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# Per model, the transposed copy of its output weight that decoding on a CPU reads (see decoding_logits), with the
# version of the weight it was made from; it goes when the model goes.
TRANSPOSED_OUTPUT_WEIGHTS: WeakKeyDictionary[GPT, tuple[tuple, torch.Tensor]] = WeakKeyDictionary()


def decoding_logits(model: GPT, x: torch.Tensor) -> torch.Tensor:
    """The output layer's logits for the hidden states x, as decoding computes them. On a CPU without gradients the
    product reads a transposed copy of the weight, (width, vocab) in memory, on which MKL's matrix-vector product is
    faster (notebook 08 measures decoding); the copy is remade whenever the weight changes (a step, a load, a move)."""
    weight = model.lm_head.weight
    if torch.is_grad_enabled() or x.device.type != "cpu":
        return model.output_logits(x)
    version = (weight.data_ptr(), weight._version, weight.dtype)
    kept = TRANSPOSED_OUTPUT_WEIGHTS.get(model)
    if kept is None or kept[0] != version:
        kept = TRANSPOSED_OUTPUT_WEIGHTS[model] = (version, weight.detach().t().contiguous())
    return (x @ kept[1])[..., : model.n_valid_tokens]


def cache_dtype(model: GPT, device: torch.device) -> torch.dtype:
    """Keys and values come out of a linear layer: in the autocast dtype if one is active, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return model.lm_head.weight.dtype


@torch.no_grad()
def generate_stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    top_p: float | None = None,
) -> Iterator[torch.Tensor]:
    """Yield each new (B, 1) token as soon as it is chosen. With the cache, the prompt is read once and every new
    token costs one position; once the context is full, the window slides and the cache is refilled."""
    block_size = model.config.block_size
    generator = torch.Generator(idx.device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    # Every token lands in one preallocated row; the context is a view of its last block_size tokens (no copies).
    tokens = idx.new_empty(idx.size(0), idx.size(1) + max_new_tokens)
    tokens[:, : idx.size(1)] = idx
    end, cache = idx.size(1), None
    try:
        for _ in range(max_new_tokens):
            context = tokens[:, max(0, end - block_size) : end]
            if not use_cache:
                hidden = model.hidden_states(context)
            elif cache is None or cache.length >= block_size:
                cache = KVCache(model.config, idx.size(0), idx.device, cache_dtype(model, idx.device))
                hidden = model.hidden_states(context, cache)
            else:
                hidden = model.hidden_states(context[:, -1:], cache)
            logits = decoding_logits(model, hidden)
            next_token = pick_next_token(logits[:, -1, :], temperature, top_k, generator, top_p)
            tokens[:, end] = next_token[:, 0]
            end += 1
            yield next_token
    finally:
        model.train(was_training)


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, *args, **kwargs) -> torch.Tensor:
    """The prompt `idx` (B, T) followed by `max_new_tokens` generated tokens; seeded runs repeat exactly. The other
    arguments are generate_stream's, in its order: temperature, top_k, seed, use_cache, top_p."""
    return torch.cat([idx, *generate_stream(model, idx, max_new_tokens, *args, **kwargs)], dim=1)


def encode_prompt(prompt: str, device: torch.device | str, num_samples: int = 1) -> torch.Tensor:
    """The prompt as a (num_samples, T) batch of tokens; an empty prompt starts from <|endoftext|>."""
    tokenizer = get_tokenizer()
    tokens = tokenizer.encode(prompt, allowed_special={END_OF_TEXT}) if prompt else [tokenizer.eot_token]
    return torch.tensor(tokens, dtype=torch.long, device=device).repeat(num_samples, 1)


# What a sample uses unless told otherwise: the command line's and the app's defaults too.
SAMPLING_DEFAULTS = {"max_new_tokens": 200, "temperature": 0.8, "top_k": 200, "top_p": 1.0}


def sample_text(
    model: GPT,
    prompt: str,
    max_new_tokens: int = SAMPLING_DEFAULTS["max_new_tokens"],
    temperature: float = SAMPLING_DEFAULTS["temperature"],
    top_k: int | None = SAMPLING_DEFAULTS["top_k"],
    seed: int | None = None,
    num_samples: int = 1,
    top_p: float | None = None,
) -> list[str]:
    """Text in, text out: each sample is the prompt followed by what the model wrote."""
    device = next(model.parameters()).device
    idx = encode_prompt(prompt, device, num_samples)
    out = generate(model, idx, max_new_tokens, temperature, top_k, seed, top_p=top_p)
    tokenizer = get_tokenizer()
    return [prompt + tokenizer.decode(row[idx.size(1) :].tolist()) for row in out]
