"""Checkpoints: a round trip that resumes training bit for bit (on the device --device names, fp16 with its loss scale
too), atomic writes, clear errors for truncated and foreign files, prefixes from compiled models removed, and
weights_only loading that never runs code from the file."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from shakegpt import train as training
from shakegpt.basics import ShakeGPTError
from shakegpt.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    load_model,
    model_from_checkpoint,
    restore_rng,
    resume_training,
    save_checkpoint,
    training_text,
)
from shakegpt.data import TokenBatches
from shakegpt.hardware import Precision, get_precision
from shakegpt.model import GPT, GPTConfig
from shakegpt.optim import configure_optimizer

UNREADABLE = r"is not a readable checkpoint \(truncated or not a checkpoint\)"
Fp16Run = tuple[GPT, torch.optim.Optimizer, TokenBatches, Precision]


def make_run(config: GPTConfig, device: torch.device | str = "cpu"):
    """A model on `device`, its optimizer and batch loader, after three training steps (so the optimizer has
    moments)."""
    torch.manual_seed(0)
    model = GPT(config).to(device)
    optimizer = configure_optimizer(model, lr=1e-2)
    tokens = (np.arange(3000) * 7 % config.vocab_size).astype(np.uint16)
    batches = TokenBatches(tokens, batch_size=4, seq_len=16, seed=0)
    for _ in range(3):
        train_step(model, optimizer, batches)
    return model, optimizer, batches


def train_step(model: GPT, optimizer: torch.optim.Optimizer, batches: TokenBatches) -> None:
    device = model.lm_head.weight.device
    x, y = (t.to(device) for t in batches.next_batch())
    _, loss = model(x, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_b = b.state_dict()
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, state_b[name]), name


def test_round_trip_resumes_training_exactly(tmp_path, tiny_config, device):
    """Saved from the device and loaded onto it (map_location), the run continues exactly."""
    model, optimizer, batches = make_run(tiny_config, device)
    path = save_checkpoint(
        tmp_path / "last.pt",
        model,
        optimizer,
        step=3,
        data_state=batches.state_dict(),
        train_config={"lr": 1e-2, "preset": "tiny"},
        train_state={"best_val_loss": 4.5},
    )
    after_save = (random.random(), torch.rand(5))  # drawn from the states the checkpoint captured

    checkpoint = load_checkpoint(path, map_location=device)
    assert checkpoint["model"]["transformer.wte.weight"].device == device
    assert checkpoint["step"] == 3
    assert checkpoint["model_config"] == tiny_config.to_dict()
    assert checkpoint["train_config"] == {"lr": 1e-2, "preset": "tiny"}
    assert checkpoint["train_state"] == {"best_val_loss": 4.5}
    assert training_text(checkpoint) == ("tinyshakespeare", None)  # a run that names no corpus trained on the default
    restored = model_from_checkpoint(checkpoint, device)
    assert not restored.training
    assert restored.lm_head.weight is restored.transformer.wte.weight  # still tied after loading
    assert_same_weights(model, restored)
    assert_same_weights(model, load_model(path, device))

    restore_rng(checkpoint["rng"])
    assert random.random() == after_save[0]
    assert torch.equal(torch.rand(5), after_save[1])

    # Continue both runs one step: the optimizer moments and the data position came back too.
    restored.train()
    restored_optimizer = configure_optimizer(restored, lr=1e-2)
    restored_optimizer.load_state_dict(checkpoint["optimizer"])
    restored_batches = TokenBatches(batches.tokens.numpy().astype(np.uint16), batch_size=4, seq_len=16, seed=0)
    restored_batches.load_state_dict(checkpoint["data"])
    train_step(model, optimizer, batches)
    train_step(restored, restored_optimizer, restored_batches)
    assert_same_weights(model, restored)


def fp16_run(
    config: GPTConfig, device: torch.device, seed: int
) -> tuple[GPT, torch.optim.Optimizer, TokenBatches, Precision]:
    """A model initialised from `seed` on `device`, its optimizer, batch loader and fp16 precision (a GradScaler)."""
    torch.manual_seed(seed)
    model = GPT(config).to(device)
    tokens = (np.arange(3000) * 7 % config.vocab_size).astype(np.uint16)
    batches = TokenBatches(tokens, batch_size=4, seq_len=16, seed=0)
    return model, configure_optimizer(model, lr=1e-2), batches, get_precision(device, "fp16")


def fp16_losses(run: Fp16Run, steps: int) -> list[float]:
    """The losses of `steps` of the package's training steps of `run`."""
    model, optimizer, batches, precision = run
    device = model.lm_head.weight.device
    return [float(training.train_step(model, optimizer, batches, 1, precision, device)[0]) for _ in range(steps)]


def test_resume_training_continues_fp16_steps_exactly_with_their_loss_scale(tmp_path, tiny_config, device):
    """resume_training into fresh objects (another initialisation, a new GradScaler) from a checkpoint loaded onto the
    device: the next two fp16 steps give exactly the losses of the original run continuing, and both loss scalers end
    in the same state (the original's scale was moved off GradScaler's initial one, so it must come back)."""
    run = fp16_run(tiny_config, device, seed=0)
    fp16_losses(run, 3)
    model, optimizer, batches, precision = run
    precision.scaler.update(new_scale=1024.0)
    scaler = precision.scaler.state_dict()
    path = save_checkpoint(tmp_path / "resume.pt", model, optimizer, 3, batches.state_dict(), scaler=scaler)
    continued = fp16_losses(run, 2)
    fresh = fp16_run(tiny_config, device, seed=1)
    resume_training(load_checkpoint(path, map_location=device), *fresh[:3], scaler=fresh[3].scaler)
    assert fp16_losses(fresh, 2) == continued
    assert fresh[3].scaler.state_dict() == precision.scaler.state_dict()


def test_random_states_come_back_on_the_cpu_whatever_the_map_location(tmp_path, tiny_config):
    """A resume on a GPU loads with map_location="cuda"; torch.set_rng_state takes only a CPU tensor. "meta" stands
    in for a device other than the CPU here: it moves every tensor of the file off the CPU, as "cuda" would."""
    path = save_checkpoint(tmp_path / "last.pt", GPT(tiny_config))
    after_save = torch.rand(5)
    checkpoint = load_checkpoint(path, map_location="meta")
    assert checkpoint["model"]["transformer.wte.weight"].device.type == "meta"
    restore_rng(checkpoint["rng"])
    assert torch.equal(torch.rand(5), after_save)


def test_writing_leaves_no_temporary_file(tmp_path, tiny_config):
    model = GPT(tiny_config)
    for step in (1, 2):  # a new file, then a replaced one
        save_checkpoint(tmp_path / "runs" / "last.pt", model, step=step)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["last.pt"]
    assert load_checkpoint(tmp_path / "runs" / "last.pt")["step"] == 2


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, tiny_config, monkeypatch):
    model = GPT(tiny_config)
    path = save_checkpoint(tmp_path / "last.pt", model, step=1)
    real_save = torch.save

    def save_then_fail(payload, f, *args, **kwargs):
        real_save(payload, f, *args, **kwargs)
        f.truncate(1000)  # half written when the disk filled up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="No space left on device"):
        save_checkpoint(path, model, step=2)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(path)["step"] == 1


@pytest.mark.parametrize("kept", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_a_truncated_file_is_refused_clearly(tmp_path, tiny_config, kept):
    path = save_checkpoint(tmp_path / "last.pt", GPT(tiny_config), configure_optimizer(GPT(tiny_config)), step=5)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(ShakeGPTError, match=rf"last\.pt {UNREADABLE}") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def text_file(path: Path) -> None:
    path.write_text("step: 5\nweights: none\n")


def plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT}, protocol=2))


@pytest.mark.parametrize("write", [random_bytes, text_file, plain_pickle])
def test_a_file_that_is_not_a_pytorch_file_is_refused_clearly(tmp_path, write):
    path = tmp_path / "foreign.pt"
    write(path)
    with pytest.raises(ShakeGPTError, match=rf"foreign\.pt {UNREADABLE}") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "payload", [{"model": {"weight": torch.zeros(2)}, "step": 5}, {"format": "another-program-1"}, torch.zeros(3)]
)
def test_a_pytorch_file_that_is_not_a_checkpoint_is_refused_clearly(tmp_path, payload):
    path = tmp_path / "foreign.pt"
    torch.save(payload, path)
    with pytest.raises(ShakeGPTError, match=r"foreign\.pt is a PyTorch file but not a ShakeGPT checkpoint"):
        load_checkpoint(path)


def test_a_missing_file_says_how_to_make_one(tmp_path):
    message = r"no checkpoint at .*missing\.pt: train one with `python -m shakegpt_utils train`"
    with pytest.raises(ShakeGPTError, match=message):
        load_checkpoint(tmp_path / "missing.pt")


def test_weights_that_do_not_fit_their_config_are_refused_clearly(tmp_path, tiny_config):
    path = save_checkpoint(tmp_path / "mismatched.pt", GPT(tiny_config), step=3)
    checkpoint = load_checkpoint(path)
    checkpoint["model_config"]["n_embd"] *= 2
    torch.save(checkpoint, path)
    with pytest.raises(ShakeGPTError, match=r"mismatched\.pt does not hold a usable ShakeGPT model: .*state_dict"):
        load_model(path)
    del checkpoint["model_config"]
    with pytest.raises(ShakeGPTError, match=r"^the checkpoint does not hold a usable ShakeGPT model: 'model_config'"):
        model_from_checkpoint(checkpoint)


class TouchOnLoad:
    """Unpickling this runs code: it creates a file. A weights_only load must refuse it instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_never_runs_code_from_the_file(tmp_path, tiny_config):
    path = save_checkpoint(tmp_path / "last.pt", GPT(tiny_config), step=1)
    payload = torch.load(path, weights_only=True)
    marker = tmp_path / "code-ran"
    payload["train_state"] = {"note": TouchOnLoad(marker)}
    torch.save(payload, path)
    with pytest.raises(ShakeGPTError, match=UNREADABLE):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the danger is real: an unrestricted load runs it
    assert marker.exists()


def test_prefixes_of_compiled_models_are_removed(tmp_path, tiny_config):
    model = GPT(tiny_config)
    compiled = torch.compile(model)  # wraps at once; it would compile only when called
    assert all(name.startswith("_orig_mod.") for name in compiled.state_dict())
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "compiled.pt", compiled, step=1))
    assert list(checkpoint["model"]) == list(model.state_dict())
    assert_same_weights(model, model_from_checkpoint(checkpoint))
    # A file written by other code with the prefixes still in the names loads just as well.
    payload = torch.load(tmp_path / "compiled.pt", weights_only=True)
    payload["model"] = compiled.state_dict()
    torch.save(payload, tmp_path / "prefixed.pt")
    assert list(load_checkpoint(tmp_path / "prefixed.pt")["model"]) == list(model.state_dict())
    assert_same_weights(model, load_model(tmp_path / "prefixed.pt"))


def test_a_checkpoint_of_another_format_says_which_and_what_to_do(tmp_path):
    """Format 1 kept the training state and the gradient scaler under "extra": it is named, not misread."""
    path = tmp_path / "old.pt"
    torch.save({"format": "shakegpt-checkpoint-1", "extra": {"state": {}}}, path)
    with pytest.raises(ShakeGPTError, match=r"old\.pt was written by another version of ShakeGPT") as error:
        load_checkpoint(path)
    assert f"this one reads {CHECKPOINT_FORMAT}): train it again" in str(error.value) and "\n" not in str(error.value)
