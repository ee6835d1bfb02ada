"""The model against independent references: transformers' GPT-2 (logits, loss, gradients, export), hand-counted
parameters, a second attention path, full-logits cross-entropy, an unpadded twin of a padded model, and one-pass
versus cached decoding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shakegpt.basics import ShakeGPTError
from shakegpt.checkpoint import clean_state_dict
from shakegpt.chunked_loss import ChunkedLinearCrossEntropy, chunked_cross_entropy
from shakegpt.hf import export_hf, from_hf, from_pretrained
from shakegpt.model import GPT, PADDED_VOCAB_SIZE, GPTConfig, KVCache, causal_mask
from shakegpt.tokenizer import GPT2_VOCAB_SIZE

transformers = pytest.importorskip("transformers")

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# (n_layer, n_head, n_embd, n_positions, vocab_size)
HF_SHAPES = [(2, 2, 32, 64, 100), (3, 4, 64, 32, 257), (1, 1, 48, 16, 50)]


def hf_grad(hf_model, name: str) -> torch.Tensor:
    grad = dict(hf_model.named_parameters())[name].grad
    return grad.t() if name.endswith(CONV1D_SUFFIXES) else grad


def randomize_small_params(model: GPT, seed: int = 0) -> GPT:
    """Give LayerNorms and biases random values (they start at 1 and 0), so that comparisons exercise them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() < 2:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model


# ---- configuration ---------------------------------------------------------------------------------------------


def test_presets_have_the_documented_shapes():
    shape = lambda c: (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size)
    assert shape(GPTConfig()) == (12, 12, 768, 1024, 50257)
    assert GPTConfig.gpt2() == GPTConfig()
    assert shape(GPTConfig.small()) == (4, 4, 256, 256, 50257)
    assert shape(GPTConfig.tiny()) == (2, 2, 64, 64, 50257)
    assert GPTConfig.preset("tiny") == GPTConfig.tiny()
    assert GPTConfig.preset("gpt2", dropout=0.1) == GPTConfig(dropout=0.1)
    assert shape(GPTConfig.preset("small", n_layer=6, vocab_size=PADDED_VOCAB_SIZE)) == (6, 4, 256, 256, 50304)


def test_unknown_preset_is_refused_with_the_choices():
    with pytest.raises(ShakeGPTError, match=r"unknown preset 'huge'; choose one of gpt2, small, tiny"):
        GPTConfig.preset("huge")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_embd": 30, "n_head": 4}, "n_embd=30 must be divisible by n_head=4"),
        ({"attn_impl": "flash"}, "attn_impl must be 'sdpa' or 'manual'"),
        ({"loss_impl": "fused"}, "loss_impl must be 'chunked' or 'full'"),
    ],
)
def test_invalid_config_is_refused(changes, message):
    with pytest.raises(ShakeGPTError, match=message):
        GPTConfig.tiny(**changes)


def test_config_dict_round_trip_ignores_unknown_keys():
    config = GPTConfig.small(dropout=0.2, attn_impl="manual", loss_impl="chunked")
    assert GPTConfig.from_dict({**config.to_dict(), "from_a_newer_version": 1}) == config


# ---- parameters and initialisation of the 124M model ----------------------------------------------------------


def test_gpt2_has_124_439_808_parameters():
    V, P, L, C = 50257, 1024, 12, 768
    per_layer = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * 4 * C + 4 * C) + (4 * C * C + C)
    by_hand = V * C + P * C + L * per_layer + 2 * C  # the output layer is the token embedding: counted once
    assert by_hand == 124_439_808
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = GPT(GPTConfig.gpt2())
    assert model.num_params() == 124_439_808
    assert model.num_params(non_embedding=True) == 124_439_808 - V * C - P * C
    assert model.lm_head.weight is model.transformer.wte.weight
    untied = sum(p.numel() for p in model.parameters()) + model.lm_head.weight.numel()
    assert untied == 124_439_808 + V * C  # 163M without weight tying, as notebook 04 says


def test_gpt2_initialisation_statistics():
    """GPT-2's depth (12 layers, so residual projections get 0.02 / sqrt(24)) on a narrower, faster model."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, vocab_size=4096, n_layer=12, n_head=4, n_embd=128))
    residual_std = 0.02 / math.sqrt(2 * 12)
    checked = set()
    for name, p in model.named_parameters():
        p = p.detach()
        if name.endswith(("attn.c_proj.weight", "mlp.c_proj.weight")):
            expected = residual_std
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            expected = 0.02
        elif ".ln_" in name or name.startswith("transformer.ln_f"):
            fill = 1.0 if name.endswith("weight") else 0.0
            assert torch.equal(p, torch.full_like(p, fill)), name
            checked.add("layernorm")
            continue
        else:
            assert name.endswith(".bias"), name
            assert torch.count_nonzero(p) == 0, name
            checked.add("bias")
            continue
        assert p.std().item() == pytest.approx(expected, rel=0.03), name  # >= 16k samples: 3% is 5 standard errors
        assert abs(p.mean().item()) < 0.05 * expected, name
        checked.add(expected)
    assert checked == {0.02, residual_std, "layernorm", "bias"}


# ---- equivalence with transformers' GPT-2 --------------------------------------------------------------------


@pytest.mark.parametrize("loss_impl", ["chunked", "full"])
@pytest.mark.parametrize("shape", HF_SHAPES, ids=lambda s: "L{}-H{}-C{}-T{}-V{}".format(*s))
def test_from_hf_matches_transformers_logits_loss_and_gradients(random_hf_gpt2, shape, loss_impl, device):
    n_layer, n_head, n_embd, n_positions, vocab = shape
    hf = random_hf_gpt2(*shape)
    ours = from_hf(hf, loss_impl=loss_impl).to(device)
    hf.to(device)
    assert ours.config == GPTConfig(
        block_size=n_positions, vocab_size=vocab, n_layer=n_layer, n_head=n_head, n_embd=n_embd, loss_impl=loss_impl
    )
    torch.manual_seed(1)
    idx = torch.randint(vocab, (2, n_positions)).to(device)  # the whole context, so every position embedding is used

    with torch.no_grad():
        expected = hf(idx).logits
        logits, _ = ours(idx)
    assert logits.shape == (2, n_positions, vocab)
    assert expected.std() > 0.3  # the comparison is not between two near-constant outputs
    assert (logits - expected).abs().max().item() < 1e-4

    hf_loss = hf(idx, labels=idx).loss
    _, loss = ours(idx[:, :-1], idx[:, 1:])
    assert loss.item() == pytest.approx(hf_loss.item(), abs=1e-5)
    hf_loss.backward()
    loss.backward()
    names = [name for name, _ in ours.named_parameters()]
    assert len(names) == len(list(hf.parameters()))  # every parameter (the tied output layer once)
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, hf_grad(hf, name), atol=2e-6, rtol=1e-4, msg=name)
    assert hf_grad(hf, f"transformer.h.{n_layer - 1}.attn.c_attn.weight").abs().max() > 1e-4


def test_from_hf_accepts_a_bare_state_dict_with_n_head(random_hf_gpt2):
    hf = random_hf_gpt2(3, 4, 64, 32, 257, seed=2)
    # OpenAI's original checkpoints name weights without the "transformer." prefix.
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    assert "h.0.attn.c_attn.weight" in state
    with pytest.raises(ShakeGPTError, match="does not say its number of heads: pass n_head="):
        from_hf(state)
    ours = from_hf(state, n_head=4)
    assert (ours.config.n_layer, ours.config.n_head, ours.config.n_embd) == (3, 4, 64)
    idx = torch.randint(257, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(idx)[0] - hf(idx).logits).abs().max().item() < 1e-4
        # The head count changes the function: with the wrong one the logits differ.
        wrong = from_hf(state, n_head=2)
        assert (wrong(idx)[0] - hf(idx).logits).abs().max().item() > 1e-2


def test_from_hf_refuses_a_different_activation():
    config = transformers.GPT2Config(
        n_layer=1, n_head=1, n_embd=8, n_positions=8, vocab_size=10, activation_function="relu"
    )
    with pytest.raises(ShakeGPTError, match="GPT-2 uses tanh GELU; this model uses 'relu'"):
        from_hf(transformers.GPT2LMHeadModel(config))


def test_from_pretrained_offline_raises_a_clear_error(monkeypatch, tmp_path, no_network):
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    # huggingface_hub reads these once at import: patch the values it already holds (an empty cache, offline).
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
    with pytest.raises(ShakeGPTError, match=r"could not load pretrained 'gpt2' from the Hugging Face Hub") as error:
        from_pretrained("gpt2")
    assert "(offline, or no such model)" in str(error.value) and "\n" not in str(error.value)


def test_from_pretrained_without_a_network_fails_without_trying_to_download(monkeypatch, no_network):
    """Offline and not cached: one look in the cache, then a one-line error, never transformers' download retries."""
    calls = []

    def fake_from_pretrained(name, **kwargs):
        calls.append(kwargs)
        raise OSError(f"{name} is not in the cache")

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", fake_from_pretrained)
    with pytest.raises(ShakeGPTError, match=r"^could not load pretrained 'gpt2' .*network access is disabled"):
        from_pretrained("gpt2")
    assert calls == [{"local_files_only": True}]


def test_from_pretrained_uses_the_cache_first(monkeypatch, no_network):
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=8, vocab_size=10)
    cached = transformers.GPT2LMHeadModel(config)
    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", lambda name, **kwargs: cached)
    model = from_pretrained("gpt2")
    idx = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(model.eval()(idx)[0], cached.eval()(idx).logits)


@pytest.mark.parametrize("vocab", [GPT2_VOCAB_SIZE, PADDED_VOCAB_SIZE])
def test_export_hf_loads_in_transformers_with_the_same_logits(tmp_path, no_network, vocab):
    torch.manual_seed(0)
    model = randomize_small_params(GPT(GPTConfig(block_size=32, vocab_size=vocab, n_layer=2, n_head=4, n_embd=32)))
    model.eval()
    folder = export_hf(model, tmp_path / "hf")
    assert {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}  # tests/test_hf.py: the rest
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder, local_files_only=True).eval()
    assert hf.config.vocab_size == GPT2_VOCAB_SIZE
    assert hf.transformer.wte.weight.shape == (GPT2_VOCAB_SIZE, 32)  # a padded vocabulary is cut back
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    idx = torch.randint(GPT2_VOCAB_SIZE, (2, 32))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    assert ours.shape == theirs.shape == (2, 32, GPT2_VOCAB_SIZE)
    assert (ours - theirs).abs().max().item() < 1e-4
    # And back again.
    with torch.no_grad():
        assert (from_hf(hf).eval()(idx)[0] - ours).abs().max().item() < 1e-4


# ---- attention -------------------------------------------------------------------------------------------------


def test_causal_mask_by_hand():
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    # Two new queries after three cached keys: they are positions 3 and 4.
    assert causal_mask(2, 5).tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_sdpa_and_manual_attention_agree(tiny_config):
    torch.manual_seed(0)
    sdpa = randomize_small_params(GPT(tiny_config.replace(attn_impl="sdpa")))
    manual = GPT(tiny_config.replace(attn_impl="manual"))
    manual.load_state_dict(sdpa.state_dict())
    idx = torch.randint(tiny_config.vocab_size, (3, tiny_config.block_size))
    logits_a, _ = sdpa(idx)
    logits_b, _ = manual(idx)
    torch.testing.assert_close(logits_a, logits_b, atol=1e-5, rtol=1e-5)
    sdpa(idx[:, :-1], idx[:, 1:])[1].backward()
    manual(idx[:, :-1], idx[:, 1:])[1].backward()
    for (name, a), (_, b) in zip(sdpa.named_parameters(), manual.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
def test_changing_a_future_token_leaves_earlier_logits_unchanged(tiny_config, attn_impl):
    torch.manual_seed(0)
    model = GPT(tiny_config.replace(attn_impl=attn_impl)).eval()
    idx = torch.randint(tiny_config.vocab_size, (2, 20))
    changed = idx.clone()
    changed[:, 12] = (idx[:, 12] + 1) % tiny_config.vocab_size
    with torch.no_grad():
        before, after = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(before[:, :12], after[:, :12], atol=1e-6, rtol=0)
    assert (before[:, 12:] - after[:, 12:]).abs().amax(dim=-1).min() > 1e-4  # every later position sees it


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
def test_kv_cache_matches_one_pass(tiny_config, attn_impl, device):
    torch.manual_seed(0)
    config = tiny_config.replace(attn_impl=attn_impl, block_size=24)
    model = randomize_small_params(GPT(config)).to(device).eval()
    idx = torch.randint(config.vocab_size, (3, 24)).to(device)
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(config, 3, device, torch.float32)
        pieces, position = [], 0
        # A prefill, single tokens, and several tokens at once after the cache; 24 in all.
        for n in (5, 1, 1, 3, 1, 6, 7):
            logits, _ = model(idx[:, position : position + n], cache=cache)
            position += n
            assert cache.length == position
            pieces.append(logits)
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
        with pytest.raises(ShakeGPTError, match="sequence of 25 tokens is longer than the context of 24"):
            model(idx[:, :1], cache=cache)


def test_decoding_logits_follow_every_change_of_the_output_weight(tiny_config):
    """Without gradients a CPU multiplies by a transposed copy of the output weight; it must never go stale."""
    torch.manual_seed(0)
    model = GPT(tiny_config)
    x = torch.randn(2, 3, tiny_config.n_embd)

    def assert_logits_use_the_current_weight() -> None:
        with torch.no_grad():
            fast = model.output_logits(x)
        torch.testing.assert_close(fast, F.linear(x, model.lm_head.weight.detach()))

    assert_logits_use_the_current_weight()
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # in place, as an optimizer step changes it
    assert_logits_use_the_current_weight()
    model.load_state_dict(GPT(tiny_config).state_dict())  # copied in place too
    assert_logits_use_the_current_weight()
    model.double()  # a new tensor
    x = x.double()
    assert_logits_use_the_current_weight()


def test_sequence_longer_than_the_context_is_refused(tiny_config):
    model = GPT(tiny_config)
    with pytest.raises(ShakeGPTError, match="sequence of 33 tokens is longer than the context of 32"):
        model(torch.zeros(1, 33, dtype=torch.long))


# ---- the loss --------------------------------------------------------------------------------------------------


def test_chunked_cross_entropy_matches_full_logits_across_chunks():
    torch.manual_seed(0)
    n_rows, n_embd, vocab, n_valid = 23, 16, 40, 37
    h = torch.randn(n_rows, n_embd, requires_grad=True)
    w = torch.randn(vocab, n_embd, requires_grad=True)
    targets = torch.randint(n_valid, (n_rows,))
    targets[[2, 9, 10]] = -1  # ignored
    loss = ChunkedLinearCrossEntropy.apply(h, w, targets, n_valid, 5, torch.float32, True)  # 5 chunks, last short
    (2.5 * loss).backward()
    h_ref, w_ref = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.cross_entropy((h_ref @ w_ref.T)[:, :n_valid], targets, ignore_index=-1)
    (2.5 * ref).backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(h.grad, h_ref.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w.grad, w_ref.grad, atol=1e-6, rtol=1e-5)
    assert torch.count_nonzero(w.grad[n_valid:]) == 0


def test_chunked_loss_under_fp16_and_a_loss_scale_is_as_accurate_as_full_logits():
    """The T4's path: fp16 products, and a GradScaler whose scale only reaches the loss's gradient in backward. Over
    16,384 tokens the mean's weight is 1/16,384; applied before an fp16 product, it pushes the weight's gradient
    into fp16's subnormal range (errors twice those of full logits, and entries lost to zero)."""
    torch.manual_seed(0)
    n_rows, n_embd, vocab, scale = 16_384, 64, 4096, 2.0**16
    h0, w0 = torch.randn(n_rows, n_embd), 0.02 * torch.randn(vocab, n_embd)
    targets = torch.randint(vocab, (n_rows,))

    def loss_and_grads(loss_fn) -> tuple[float, torch.Tensor, torch.Tensor]:
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss = loss_fn(h, w)
        (loss * scale).backward()  # what GradScaler.scale(loss).backward() does
        return loss.item(), h.grad / scale, w.grad / scale

    def full_logits_fp16(h, w):
        with torch.autocast("cpu", dtype=torch.float16):
            logits = h @ w.T
        return F.cross_entropy(logits.float(), targets)

    reference = loss_and_grads(lambda h, w: F.cross_entropy(h @ w.T, targets))  # float32 throughout
    full = loss_and_grads(full_logits_fp16)
    chunked = loss_and_grads(
        lambda h, w: ChunkedLinearCrossEntropy.apply(h, w, targets, vocab, 1024, torch.float16, True)
    )
    relative_error = lambda grad, ref: ((grad - ref).norm() / ref.norm()).item()
    assert chunked[0] == pytest.approx(reference[0], abs=1e-4)
    for i in (1, 2):  # the gradients of h and of the weight
        assert relative_error(chunked[i], reference[i]) <= 1.05 * relative_error(full[i], reference[i])
    assert torch.count_nonzero(chunked[2] == 0) <= torch.count_nonzero(reference[2] == 0)


def test_chunked_loss_computes_no_gradient_under_no_grad(tiny_config):
    """Evaluation runs under torch.no_grad(): no (vocab x width) weight gradient, no (tokens x width) input one."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class AllocatedShapes(TorchDispatchMode):
        """The shapes of the new tensors each operation returns (views of its inputs do not count)."""

        def __init__(self):
            super().__init__()
            self.shapes = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = torch.utils._pytree.tree_leaves((args, kwargs))
            storages = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
            for tensor in torch.utils._pytree.tree_leaves(out):
                if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in storages:
                    self.shapes.add(tuple(tensor.shape))
            return out

    model = GPT(tiny_config)
    x = torch.randint(tiny_config.vocab_size, (2, 16))
    gradient_shapes = {(tiny_config.vocab_size, tiny_config.n_embd), (2 * 16, tiny_config.n_embd)}
    for grad_enabled in (True, False):
        recorder = AllocatedShapes()
        with torch.set_grad_enabled(grad_enabled), recorder:
            hidden = torch.randn(2, 16, tiny_config.n_embd, requires_grad=True)
            chunked_cross_entropy(hidden, model.lm_head.weight, x, tiny_config.vocab_size)
        assert bool(gradient_shapes & recorder.shapes) == grad_enabled  # with gradients on, the check can see them


def test_by_default_the_model_returns_logits_and_their_cross_entropy(tiny_config):
    """The textbook path, as in notebook 04 and nanoGPT; the chunked loss is a setting training chooses."""
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = torch.randint(tiny_config.vocab_size, (2, 17))
    logits, loss = model(idx[:, :-1], idx[:, 1:])
    assert logits.shape == (2, 16, tiny_config.vocab_size)
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()))
    assert GPT(tiny_config.replace(loss_impl="chunked"))(idx[:, :-1], idx[:, 1:])[0] is None


def test_chunked_loss_follows_bf16_autocast(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config.replace(loss_impl="chunked"))
    idx = torch.randint(tiny_config.vocab_size, (4, 33))
    x, y = idx[:, :-1], idx[:, 1:]
    _, fp32 = model(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, chunked = model(x, y)
        model.config.loss_impl = "full"
        _, full = model(x, y)
    assert chunked.dtype == torch.float32
    assert chunked.item() == pytest.approx(full.item(), rel=1e-2)
    assert chunked.item() == pytest.approx(fp32.item(), rel=1e-2)


@pytest.mark.parametrize("loss_impl", ["chunked", "full"])
def test_padded_vocabulary_is_never_predicted_and_changes_nothing(loss_impl):
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=PADDED_VOCAB_SIZE, n_layer=1, n_head=2, n_embd=16, loss_impl=loss_impl)
    padded = GPT(config)
    with torch.no_grad():
        # Make the padding rows attractive: unmasked, they would take almost all the probability.
        padded.transformer.ln_f.bias.fill_(2.0)
        padded.transformer.wte.weight[GPT2_VOCAB_SIZE:] = 1.0
    # The reference: the same weights without the padding rows.
    unpadded = GPT(config.replace(vocab_size=GPT2_VOCAB_SIZE))
    tied = ("transformer.wte.weight", "lm_head.weight")
    unpadded.load_state_dict({k: v[:GPT2_VOCAB_SIZE] if k in tied else v for k, v in padded.state_dict().items()})
    hidden = {}
    padded.transformer.ln_f.register_forward_hook(lambda module, args, out: hidden.update(x=out.detach()))
    idx = torch.randint(GPT2_VOCAB_SIZE, (2, 16))
    x, y = idx[:, :-1], idx[:, 1:]

    with torch.no_grad():
        logits, _ = padded(x)
        every_row = hidden["x"] @ padded.transformer.wte.weight.T  # padding rows included
        reference_logits, _ = unpadded(x)
    assert logits.shape == (2, 15, GPT2_VOCAB_SIZE)
    torch.testing.assert_close(logits, reference_logits)
    torch.testing.assert_close(logits, every_row[..., :GPT2_VOCAB_SIZE])
    assert (every_row.argmax(dim=-1) >= GPT2_VOCAB_SIZE).all()  # unmasked, a padded id would win everywhere

    _, loss = padded(x, y)
    _, reference_loss = unpadded(x, y)
    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-5)
    assert F.cross_entropy(every_row.flatten(0, 1), y.flatten()).item() > loss.item() + 1.0
    loss.backward()
    reference_loss.backward()
    grad = padded.transformer.wte.weight.grad
    assert torch.count_nonzero(grad[GPT2_VOCAB_SIZE:]) == 0
    torch.testing.assert_close(grad[:GPT2_VOCAB_SIZE], unpadded.transformer.wte.weight.grad)


# ---- state dicts from wrapped models -----------------------------------------------------------------------------


def test_clean_state_dict_strips_compile_and_ddp_prefixes(tiny_config):
    model = GPT(tiny_config)
    compiled = torch.compile(model)  # wraps at once; it would compile only when called
    wrapped = compiled.state_dict()
    assert all(name.startswith("_orig_mod.") for name in wrapped)
    cleaned = clean_state_dict(wrapped)
    assert list(cleaned) == list(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(cleaned[name], tensor)
    # DistributedDataParallel around a compiled model stacks both prefixes.
    ddp = {f"module._orig_mod.{name}": tensor for name, tensor in model.state_dict().items()}
    assert list(clean_state_dict(ddp)) == list(model.state_dict())
    GPT(tiny_config).load_state_dict(clean_state_dict(ddp))
    # Only leading prefixes go.
    assert list(clean_state_dict({"transformer.h.0._orig_mod.weight": torch.zeros(1)})) == [
        "transformer.h.0._orig_mod.weight"
    ]
