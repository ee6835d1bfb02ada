"""Device, precision, seeding, the optimizer's parameter groups, the learning-rate schedule and MFU arithmetic, each
against hand-written expectations."""

from __future__ import annotations

import copy
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import shakegpt.hardware
from shakegpt.basics import ShakeGPTError
from shakegpt.hardware import enable_tf32, get_device, get_precision, peak_flops, set_seed
from shakegpt.model import GPT, GPTConfig
from shakegpt.optim import configure_optimizer, estimate_mfu, flops_per_token, get_lr

# ---- device and precision --------------------------------------------------------------------------------------


def test_get_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    assert get_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert get_device() == get_device("auto") == torch.device("cpu")
    with pytest.raises(ShakeGPTError, match="--device cuda: no CUDA GPU is available here"):
        get_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert get_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device() == torch.device("cuda")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/cpuinfo")
def test_cpu_bf16_detection_reads_the_cpu_flags():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert shakegpt.hardware.cpu_has_native_bf16() == native
    assert get_precision("cpu").dtype == (torch.bfloat16 if native else torch.float32)


@pytest.mark.parametrize("native, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_precision_on_cpu_is_bf16_only_where_native(monkeypatch, native, dtype):
    monkeypatch.setattr(shakegpt.hardware, "cpu_has_native_bf16", lambda: native)
    precision = get_precision(torch.device("cpu"))
    assert precision.dtype == dtype
    assert precision.scaler is None


def test_bf16_precision_autocasts_matrix_products(device):
    precision = get_precision(device, "bf16")
    assert (precision.device_type, precision.dtype, precision.name, precision.scaler) == (
        device.type,
        torch.bfloat16,
        "bf16",
        None,
    )
    a, b = torch.randn(8, 8, device=device), torch.randn(8, 8, device=device)
    with precision.autocast():
        assert torch.is_autocast_enabled(device.type)
        product = a @ b
    assert product.dtype == torch.bfloat16
    torch.testing.assert_close(product.float(), a @ b, atol=0.1, rtol=0.02)
    assert not torch.is_autocast_enabled(device.type)


def test_fp32_precision_changes_nothing():
    precision = get_precision("cpu", "fp32")
    assert (precision.dtype, precision.name, precision.scaler) == (torch.float32, "fp32", None)
    with precision.autocast():
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.float32


def test_fp16_precision_scales_the_loss_as_on_a_t4(device):
    """On a CPU too: fp16 with a GradScaler tests the T4's code path anywhere."""
    precision = get_precision(device, "fp16")
    assert (precision.device_type, precision.dtype, precision.name) == (device.type, torch.float16, "fp16")
    assert isinstance(precision.scaler, torch.amp.GradScaler) and precision.scaler.is_enabled()
    assert precision.scaler.get_scale() == 2.0**16
    a, b = torch.randn(8, 8, device=device), torch.randn(8, 8, device=device)
    with precision.autocast():
        assert (a @ b).dtype == torch.float16


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_never_picks_fp16_on_a_cpu(monkeypatch, native):
    monkeypatch.setattr(shakegpt.hardware, "cpu_has_native_bf16", lambda: native)
    assert get_precision("cpu").name in ("bf16", "fp32")


@pytest.mark.parametrize(
    "device, dtype, message",
    [
        ("cpu", "int8", "unknown dtype 'int8'; choose auto, bf16, fp16 or fp32"),
        ("mps", "fp16", "fp16 with loss scaling runs on CUDA GPUs and CPUs, not mps; use bf16 or fp32"),
    ],
)
def test_unsupported_precision_is_refused(device, dtype, message):
    with pytest.raises(ShakeGPTError, match=message):
        get_precision(device, dtype)


@pytest.mark.parametrize(
    "gpu_name, number_format, peak",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989e12),  # the SXM part
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H100 NVL", "bf16", 835e12),
        ("NVIDIA H200", "bf16", 989e12),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156e12),
        ("NVIDIA L4", "bf16", 121e12),
        ("NVIDIA L40S", "bf16", 362e12),  # not an L4: three times faster
        ("Tesla T4", "fp16", 65e12),
        ("Tesla T4", "bf16", None),  # no bf16 tensor cores: no MFU rather than a wrong one
        ("NVIDIA L40", "bf16", None),  # not in the table, not an L4 either
        ("NVIDIA GeForce RTX 4090", "bf16", None),
    ],
)
def test_peak_flops_tell_neighbouring_gpu_models_apart(gpu_name, number_format, peak):
    assert shakegpt.hardware.peak_flops_of(gpu_name, number_format) == peak


def test_peak_flops_of_a_cuda_device_read_its_name_and_format(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    cuda, before = torch.device("cuda"), torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        assert peak_flops(cuda, torch.bfloat16) == 756e12
        assert peak_flops(cuda, torch.float32) == 378e12  # TF32 on
        torch.backends.cuda.matmul.allow_tf32 = False
        assert peak_flops(cuda, torch.float32) is None  # plain fp32 is not in the table
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_cpu_has_no_tf32_and_no_peak_flops():
    before = torch.backends.cuda.matmul.allow_tf32
    assert enable_tf32(torch.device("cpu")) is False
    assert torch.backends.cuda.matmul.allow_tf32 == before
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None


# ---- seeding -----------------------------------------------------------------------------------------------------


def short_run(seed: int) -> tuple[dict[str, torch.Tensor], float]:
    """Three training steps with dropout on random data: every random draw goes through the seeded generators."""
    set_seed(seed)
    config = GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16, dropout=0.2)
    model = GPT(config)
    optimizer = configure_optimizer(model, lr=1e-2)
    for _ in range(3):
        idx = torch.randint(config.vocab_size, (4, 17))
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.state_dict(), random.random()


def test_set_seed_makes_runs_repeat_bit_for_bit():
    first, second, other = short_run(1), short_run(1), short_run(2)
    assert first[1] == second[1] != other[1]
    for name, tensor in first[0].items():
        assert torch.equal(tensor, second[0][name]), name
    assert not torch.equal(first[0]["transformer.wte.weight"], other[0]["transformer.wte.weight"])


# ---- optimizer ---------------------------------------------------------------------------------------------------

# Every matrix: embeddings and the weights of linear layers.
DECAYED = ("wte.weight", "wpe.weight", "c_attn.weight", "attn.c_proj.weight", "c_fc.weight", "mlp.c_proj.weight")


def test_optimizer_decays_matrices_only_and_holds_each_parameter_once(tiny_config):
    model = GPT(tiny_config)
    optimizer = configure_optimizer(model, weight_decay=0.1, lr=3e-4, betas=(0.9, 0.95), device_type="cpu")
    decay, no_decay = optimizer.param_groups
    names = {id(p): name for name, p in model.named_parameters()}  # the tied output layer appears once, as wte
    assert {names[id(p)] for p in decay["params"]} == {n for n in names.values() if n.endswith(DECAYED)}
    assert {names[id(p)] for p in no_decay["params"]} == {
        n for n in names.values() if n.endswith(".bias") or ".ln_" in n or n.startswith("transformer.ln_f.")
    }
    grouped = [id(p) for p in decay["params"] + no_decay["params"]]
    assert sorted(grouped) == sorted(names)  # every parameter, once
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert decay["lr"] == no_decay["lr"] == 3e-4
    assert decay["betas"] == (0.9, 0.95)
    assert not optimizer.defaults["fused"]  # fused is the CUDA kernel


def test_weight_decay_shrinks_only_the_decayed_group(tiny_config):
    """With zero gradients AdamW's step is the decay alone: p -> p * (1 - lr * weight_decay), or no change."""
    model = GPT(tiny_config)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = configure_optimizer(model, weight_decay=0.5, lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1 - 0.1 * 0.5 if name.endswith(DECAYED) else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, atol=0, rtol=1e-6, msg=name)


def test_muon_takes_the_blocks_linear_weights_and_adamw_everything_else(tiny_config):
    model = GPT(tiny_config)
    optimizer = configure_optimizer(model, weight_decay=0.1, lr=3e-4, kind="muon")
    names = {id(p): name for name, p in model.named_parameters()}
    muon = [names[id(p)] for group in optimizer.muon.param_groups for p in group["params"]]
    adamw = [names[id(p)] for group in optimizer.adamw.param_groups for p in group["params"]]
    linear = ("c_attn.weight", "attn.c_proj.weight", "c_fc.weight", "mlp.c_proj.weight")
    assert sorted(muon) == sorted(n for n in names.values() if n.startswith("transformer.h.") and n.endswith(linear))
    assert sorted(muon + adamw) == sorted(names.values())  # every parameter, once (the tied head is wte)
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= set(adamw)
    # The schedule and the gradient scaler reach every parameter through one list of groups, at one rate.
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(names)
    assert {group["lr"] for group in optimizer.param_groups} == {3e-4}


def test_muon_steps_each_matrix_by_its_orthogonalised_momentum_and_resumes_exactly(tiny_config):
    """One step from zero momentum: Muon's update of a hidden matrix is torch.optim.Muon's on that matrix alone, and
    AdamW's update of the rest is AdamW's; a second optimizer loaded from the first's state_dict takes the same next
    step."""
    torch.manual_seed(0)
    model = GPT(tiny_config)
    x = torch.randint(0, tiny_config.vocab_size, (2, 16))
    twin = copy.deepcopy(model)
    for m in (model, twin):
        m(x, x)[1].backward()
    optimizer = configure_optimizer(model, weight_decay=0.1, lr=1e-2, kind="muon")
    optimizer.step()
    c_fc = twin.transformer.h[0].mlp.c_fc.weight
    torch.optim.Muon([c_fc], lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw").step()
    torch.testing.assert_close(model.transformer.h[0].mlp.c_fc.weight, c_fc)
    wte = twin.transformer.wte.weight
    torch.optim.AdamW([wte], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1).step()
    torch.testing.assert_close(model.transformer.wte.weight, wte)

    resumed_model = copy.deepcopy(model)
    resumed = configure_optimizer(resumed_model, weight_decay=0.1, lr=1e-2, kind="muon")
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as read back from a file: no shared tensors
    for m in (model, resumed_model):
        m.zero_grad()
        m(x, x)[1].backward()
    optimizer.step()
    resumed.step()
    for (name, a), b in zip(model.named_parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_without_muon_in_torch_the_optimizer_is_one_line(tiny_config, monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(ShakeGPTError, match=r"has no torch.optim.Muon \(it came in torch 2.9\): upgrade torch, or"):
        configure_optimizer(GPT(tiny_config), kind="muon")
    with pytest.raises(ShakeGPTError, match="unknown optimizer 'sgd'"):
        configure_optimizer(GPT(tiny_config), kind="sgd")


# ---- learning-rate schedule --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 6e-5),  # warmup: max_lr * (step + 1) / warmup_steps
        (4, 3e-4),
        (9, 6e-4),  # the end of warmup reaches the peak
        (10, 6e-4),  # the cosine starts at the peak
        (35, 6e-5 + 0.5 * (1 + math.cos(math.pi / 4)) * 5.4e-4),  # a quarter of the way down
        (60, 3.3e-4),  # halfway: the mean of max and min
        (110, 6e-5),  # the floor at max_steps
        (10_000, 6e-5),  # and after it
    ],
)
def test_lr_schedule_at_key_steps(step, expected):
    assert get_lr(step, max_lr=6e-4, min_lr=6e-5, warmup_steps=10, max_steps=110) == pytest.approx(expected, rel=1e-12)


def test_lr_schedule_decays_monotonically_after_warmup():
    rates = [get_lr(step, 1e-3, 1e-4, 5, 200) for step in range(5, 201)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    assert get_lr(0, 1e-3, 1e-4, 0, 200) == 1e-3  # no warmup: the peak at once


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 6e-5),  # the same warmup as the cosine
        (9, 6e-4),
        (10, 6e-4),  # then the peak, held
        (82, 6e-4),  # the decay takes the last round(0.25 x 110) = 28 steps: it starts after step 82
        (83, 6e-5 + (27 / 28) * 5.4e-4),  # 27 of the 28 decay steps left (round(27.5) = 28)
        (96, 6e-5 + (14 / 28) * 5.4e-4),  # halfway down: the mean of max and min
        (110, 6e-5),  # the floor at max_steps
        (10_000, 6e-5),
    ],
)
def test_warmup_stable_decay_holds_the_peak_then_decays_linearly(step, expected):
    rate = get_lr(step, 6e-4, 6e-5, warmup_steps=10, max_steps=110, schedule="wsd", decay_fraction=0.25)
    assert rate == pytest.approx(expected, rel=1e-12)


# ---- model FLOPs utilisation -------------------------------------------------------------------------------------


def test_flops_per_token_and_mfu_by_hand():
    # GPT-2 124M at 1024 tokens: 6N for the weights plus 12 * layers * heads * head size * tokens for attention.
    by_hand = 6 * 124_439_808 + 12 * 12 * 12 * 64 * 1024
    assert by_hand == 859_885_056
    assert flops_per_token(124_439_808, GPTConfig.gpt2(), 1024) == by_hand
    mfu = estimate_mfu(124_439_808, GPTConfig.gpt2(), 1024, tokens_per_second=150_000, peak=312e12)
    assert mfu == pytest.approx(859_885_056 * 150_000 / 312e12)  # about 41% of an A100's bf16 peak
    assert estimate_mfu(124_439_808, GPTConfig.gpt2(), 1024, tokens_per_second=150_000, peak=None) is None


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator settings")
def test_kept_freed_memory_spares_a_cpu_training_step_its_page_faults():
    """Training steps of the small model free and reallocate the same large tensors; handed back to the system
    between steps, they fault in anew every step (tens of thousands of pages), kept they are reused."""
    script = """
import resource, sys, torch
import shakegpt_utils as sg
from shakegpt.data import fixed_batches
from shakegpt.hardware import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
model = sg.GPT(sg.GPTConfig.small(vocab_size=sg.PADDED_VOCAB_SIZE, loss_impl="chunked"))
optimizer, precision = sg.configure_optimizer(model), sg.get_precision("cpu", "fp32")
batches, cpu = fixed_batches(sg.GPT2_VOCAB_SIZE, 2, 64, 0), torch.device("cpu")
for _ in range(3):
    sg.train_step(model, optimizer, batches, 1, precision, cpu)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    sg.train_step(model, optimizer, batches, 1, precision, cpu)
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""
    faults = {}
    for mode in ("keep", "default"):
        run = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        applied, per_step = run.stdout.split()
        assert applied == ("True" if mode == "keep" else "None")
        faults[mode] = int(per_step)
    assert faults["default"] > 10_000  # the gradients of the 50,304 x 256 embedding alone are 12,576 pages
    assert faults["keep"] < faults["default"] / 10
