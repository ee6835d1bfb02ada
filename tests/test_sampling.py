"""Sampling through its public API (generate, generate_stream, encode_prompt, sample_text) against transformers'
greedy generate, a plain sliding-window greedy loop, and the model's own top-k logits; generation with and without the
cache, and seeded sampling, on the device --device names."""

from __future__ import annotations

import pytest
import torch

from shakegpt.config import GPT2_VOCAB_SIZE, GPTConfig
from shakegpt.hf import from_hf
from shakegpt.model import GPT
from shakegpt.sampling import encode_prompt, generate, generate_stream, sample_text
from shakegpt.tokenizer import END_OF_TEXT, get_tokenizer


@pytest.fixture
def model(tiny_config) -> GPT:
    """A tiny model with weights large enough that its next-token choices are clear-cut, not near-ties."""
    torch.manual_seed(0)
    model = GPT(tiny_config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3 if p.dim() >= 2 else 0.1)
    return model.eval()


def greedy_by_hand(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The definition of greedy decoding: the whole (cropped) context through the model, the best last token."""
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits, _ = model(idx[:, -model.config.block_size :])
        idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx


def prompt(vocab_size: int, length: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_matches_transformers_generate(random_hf_gpt2, use_cache, device):
    # Large weights, so that greedy decoding wanders through the vocabulary instead of repeating one token.
    hf = random_hf_gpt2(n_layer=2, n_head=4, n_embd=32, n_positions=48, vocab_size=97, seed=3, matrix_std=0.3)
    ours = from_hf(hf).to(device).eval()
    hf.to(device)
    idx = prompt(97, 7).to(device)
    expected = hf.generate(
        idx, attention_mask=torch.ones_like(idx), max_new_tokens=41, do_sample=False, pad_token_id=0
    )  # 7 + 41 = 48: the whole context
    assert expected.shape == (2, 48)
    out = generate(ours, idx, max_new_tokens=41, temperature=0, use_cache=use_cache)
    assert out.dtype == torch.long
    assert torch.equal(out, expected)
    assert all(len(set(row[7:].tolist())) > 5 for row in out)  # not one token repeated


def test_greedy_with_and_without_cache_past_the_context_follows_the_sliding_window(model, device):
    model.to(device)
    block_size = model.config.block_size
    idx = prompt(model.config.vocab_size, 5).to(device)
    expected = greedy_by_hand(model, idx, block_size + 12)  # 12 tokens past a full context
    for use_cache in (True, False):
        assert torch.equal(generate(model, idx, block_size + 12, temperature=0, use_cache=use_cache), expected)


def test_a_prompt_longer_than_the_context_is_cropped_not_refused(model):
    block_size = model.config.block_size
    long_prompt = prompt(model.config.vocab_size, block_size + 9)
    out = generate(model, long_prompt, 6, temperature=0)
    assert out.shape == (2, block_size + 15)
    assert torch.equal(out[:, : block_size + 9], long_prompt)  # the whole prompt comes back
    cropped = generate(model, long_prompt[:, -block_size:], 6, temperature=0)
    assert torch.equal(out[:, block_size + 9 :], cropped[:, block_size:])
    # The cropping is real: with the full prompt's first tokens changed, the continuation stays the same.
    changed = long_prompt.clone()
    changed[:, :9] = (changed[:, :9] + 1) % model.config.vocab_size
    assert torch.equal(generate(model, changed, 6, temperature=0)[:, -6:], out[:, -6:])


def test_seeded_sampling_repeats_and_the_seed_matters(model, device):
    model.to(device)
    idx = prompt(model.config.vocab_size, 4).to(device)
    runs = [generate(model, idx, 30, temperature=1.5, seed=seed) for seed in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0], generate(model, idx, 30, temperature=0))


def test_top_k_1_is_greedy(model):
    idx = prompt(model.config.vocab_size, 4)
    greedy = generate(model, idx, 20, temperature=0)
    assert torch.equal(generate(model, idx, 20, temperature=1.0, top_k=1, seed=0), greedy)
    assert torch.equal(generate(model, idx, 20, temperature=3.0, top_k=1, seed=1, use_cache=False), greedy)


def test_top_k_samples_only_among_the_k_most_likely(model):
    idx = prompt(model.config.vocab_size, 4, batch=3)
    out = generate(model, idx, 25, temperature=5.0, top_k=3, seed=4)
    with torch.no_grad():
        logits, _ = model(out[:, :-1])  # 29 tokens: the whole sequence fits in the context
    allowed = logits[:, 3:].topk(3, dim=-1).indices  # the 3 best after every prompt-or-generated position
    assert (allowed == out[:, 4:, None]).any(dim=-1).all()
    assert len(set(out[:, 4:].flatten().tolist())) > 3  # a hot temperature spreads the picks


def test_generate_stream_yields_what_generate_returns(model):
    idx = prompt(model.config.vocab_size, 4)
    tokens = list(generate_stream(model, idx, 9, temperature=0.8, seed=3))
    assert len(tokens) == 9 and all(t.shape == (2, 1) for t in tokens)
    assert torch.equal(torch.cat(tokens, dim=1), generate(model, idx, 9, temperature=0.8, seed=3)[:, 4:])


def test_generation_keeps_the_models_training_mode(model):
    model.train()
    generate(model, prompt(model.config.vocab_size, 3), 3, temperature=0)
    assert model.training
    model.eval()
    generate(model, prompt(model.config.vocab_size, 3), 3, temperature=0)
    assert not model.training


# ---- text in, text out ---------------------------------------------------------------------------------------------


@pytest.fixture
def gpt2_vocab_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=GPT2_VOCAB_SIZE, n_layer=1, n_head=2, n_embd=16)).eval()


def test_encode_prompt_uses_the_gpt2_tokenizer():
    tokenizer = get_tokenizer()
    idx = encode_prompt("ROMEO:\nBut, soft!", "cpu", num_samples=3)
    assert idx.dtype == torch.long and idx.shape[0] == 3
    assert all(row == tokenizer.encode("ROMEO:\nBut, soft!") for row in idx.tolist())
    assert encode_prompt(f"Act I{END_OF_TEXT}", "cpu").tolist() == [tokenizer.encode("Act I") + [50256]]


def test_an_empty_prompt_starts_from_end_of_text():
    assert encode_prompt("", "cpu").tolist() == [[50256]]
    assert encode_prompt("", "cpu", num_samples=2).tolist() == [[50256], [50256]]


@pytest.mark.parametrize("text", ["", "JULIET:"])
def test_sample_text_is_the_prompt_followed_by_the_decoded_tokens(gpt2_vocab_model, text):
    tokenizer = get_tokenizer()
    start = [tokenizer.encode(text) or [50256]]
    expected = greedy_by_hand(gpt2_vocab_model, torch.tensor(start), 8)[0, len(start[0]) :].tolist()
    [sample] = sample_text(gpt2_vocab_model, text, max_new_tokens=8, temperature=0)
    assert sample == text + tokenizer.decode(expected)
    samples = sample_text(gpt2_vocab_model, text, max_new_tokens=8, temperature=1.0, seed=5, num_samples=2)
    assert len(samples) == 2 and all(s.startswith(text) for s in samples)
    assert samples == sample_text(gpt2_vocab_model, text, max_new_tokens=8, temperature=1.0, seed=5, num_samples=2)
