"""Sampling through its public API (generate, generate_stream, encode_prompt, sample_text) against transformers'
greedy generate, a plain sliding-window greedy loop, the model's own top-k logits and notebook 08's brute-force top-p;
generation with and without the cache, with the compiled decoder, and seeded sampling, on the device --device
names."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
import torch

from shakegpt.fast_decoding import CompiledDecoder, StaticKVCache
from shakegpt.hf import from_hf
from shakegpt.model import GPT, GPTConfig
from shakegpt.sampling import encode_prompt, generate, generate_stream, sample_text, sampling_probabilities
from shakegpt.tokenizer import END_OF_TEXT, GPT2_VOCAB_SIZE, get_tokenizer

ROOT = Path(__file__).resolve().parent.parent


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


# ---- top-p ---------------------------------------------------------------------------------------------------------


def exercise_brute_force() -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The brute-force nucleus of notebook 08's top-p exercise check, taken from the notebook itself."""
    notebook = nbformat.read(ROOT / "notebooks" / "08_sampling.ipynb", as_version=4)
    check = next(c.source for c in notebook.cells if "def nucleus_brute_force" in c.source)
    found = next(n for n in ast.walk(ast.parse(check)) if getattr(n, "name", "") == "nucleus_brute_force")
    namespace = {"F": torch.nn.functional, "torch": torch}
    exec(compile(ast.Module([found], type_ignores=[]), "08_sampling", "exec"), namespace)
    return namespace["nucleus_brute_force"]


def test_top_p_keeps_the_same_tokens_as_the_exercises_brute_force():
    brute_force = exercise_brute_force()
    random_logits = 3 * torch.randn(8, 50, generator=torch.Generator().manual_seed(1))
    cases = [(random_logits, p) for p in (1e-6, 0.05, 0.3, 0.5, 0.9, 0.99, 1.0)]
    cases += [(torch.tensor([[2.0, 2.0, 2.0, 0.0]]), 0.5), (torch.tensor([[1.0, float("-inf"), 0.0, -1.0]]), 0.8)]
    for logits, p in cases:
        probs = sampling_probabilities(logits, temperature=1.0, top_p=p).double()
        torch.testing.assert_close(probs / probs.sum(-1, keepdim=True), brute_force(logits, p), atol=1e-6, rtol=1e-5)


def test_top_p_samples_only_from_the_nucleus_and_1_changes_nothing(model):
    idx = prompt(model.config.vocab_size, 4, batch=3)
    out = generate(model, idx, 25, temperature=2.0, seed=4, top_p=0.6)
    with torch.no_grad():
        logits, _ = model(out[:, :-1])
    allowed = sampling_probabilities(logits[:, 3:] / 2.0, temperature=1.0, top_p=0.6) > 0
    assert allowed.gather(-1, out[:, 4:, None]).all()
    assert len(set(out[:, 4:].flatten().tolist())) > 3
    assert torch.equal(generate(model, idx, 25, 2.0, None, 4, top_p=1.0), generate(model, idx, 25, 2.0, None, 4))
    assert torch.equal(generate(model, idx, 10, 1.0, None, 0, top_p=1e-6), generate(model, idx, 10, temperature=0))


# ---- the compiled decoder ------------------------------------------------------------------------------------------


def test_a_fixed_size_cache_gives_the_logits_of_the_whole_sequence(model, device):
    """The prompt, then one token at a time, through a StaticKVCache: each step's logits equal those of the whole
    sequence at that position, with textbook attention and with SDPA."""
    for attn_impl in ("manual", "sdpa"):
        model.config.attn_impl = attn_impl
        for block in model.transformer.h:
            block.attn.attn_impl = attn_impl
        model.to(device)
        tokens = prompt(model.config.vocab_size, 20).to(device)
        cache = StaticKVCache(model.config, 2, device, torch.float32)
        with torch.no_grad():
            whole, _ = model(tokens)
            steps = [model(tokens[:, :12], cache=cache)[0]]
            steps += [model(tokens[:, i : i + 1], cache=cache)[0] for i in range(12, 20)]
        torch.testing.assert_close(torch.cat(steps, dim=1), whole, atol=1e-5, rtol=1e-4)
        assert cache.position.item() == 20


@pytest.fixture(scope="module")
def decoder_and_model(device) -> tuple[CompiledDecoder, GPT]:
    """One compiled decoder for the tests below (compiling takes seconds): CUDA graphs on a GPU."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3 if p.dim() >= 2 else 0.1)
    model = model.to(device).eval()
    return CompiledDecoder(model, batch_size=2), model


def test_the_compiled_decoder_gives_the_greedy_tokens_of_decoding_without_the_cache(decoder_and_model, device):
    decoder, model = decoder_and_model
    idx = prompt(97, 5).to(device)
    expected = generate(model, idx, 40, temperature=0, use_cache=False)  # past the context of 32: the window slides
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert torch.equal(decoder.generate(idx, 40, temperature=0), expected)
    assert torch.equal(decoder.generate(idx, 40, temperature=0), expected)  # again, from a used cache
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs <= 1  # compiled once, for any position


def test_the_compiled_decoder_samples_on_the_device_repeatably_within_top_k(decoder_and_model, device):
    decoder, model = decoder_and_model
    idx = prompt(97, 4).to(device)
    runs = [decoder.generate(idx, 20, temperature=5.0, top_k=3, seed=seed) for seed in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    with torch.no_grad():
        logits, _ = model(runs[0][:, :-1])
    allowed = logits[:, 3:].topk(3, dim=-1).indices
    assert (allowed == runs[0][:, 4:, None]).any(dim=-1).all()
    assert len(set(runs[0][:, 4:].flatten().tolist())) > 3
