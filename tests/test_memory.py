"""Fitting the micro-batch to a GPU's memory, checked on the CPU with a fake GPU of a given size: the choice against a
brute-force search, a fitted run against the same run unfitted, the banner and the summary, the ladder's one
micro-batch, and running out of memory as one sentence with the last checkpoint kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import shakegpt.bench.ladder as ladder_module
import shakegpt.memory as memory_module
import shakegpt.train as train_module
import shakegpt_utils as sg
from shakegpt.data import fixed_batches
from shakegpt.memory import MARGIN, CudaMemory, StepMemory, fit_micro_batch, out_of_memory_advice

GB = 10**9
MiB = 2**20


class FakeGpu:
    """A CUDA device as the fit sees it: `total` bytes, of which a step of `batch_size` sequences takes
    fixed + batch_size x per_sequence. The steps really run, on the CPU; the fake learns each step's batch size from
    the random batches it draws (fixed_batches), and runs out of memory there as a GPU would."""

    def __init__(self, total: float, fixed: float, per_sequence: float):
        self.total, self.fixed, self.per_sequence = int(total), int(fixed), int(per_sequence)
        self.high = 0
        self.steps: list[int] = []  # the batch size of every step drawn

    def capacity(self) -> int:
        return self.total

    def reset_peak(self) -> None:
        self.high = 0

    def peak(self) -> int:
        return self.high

    def step(self, batch_size: int) -> None:
        """What a step of `batch_size` sequences does to the fake's memory: run out, or raise the peak."""
        self.steps.append(batch_size)
        needed = self.fixed + batch_size * self.per_sequence
        if needed > self.total:
            raise torch.OutOfMemoryError(f"CUDA out of memory (a fake GPU of {self.total / GB:.1f} GB)")
        self.high = max(self.high, needed)

    def batches(self, real):
        """`real` (fixed_batches), drawing on the fake's memory first."""

        def fake(vocab: int, batch_size: int, seq_len: int, seed: int):
            self.step(batch_size)
            return real(vocab, batch_size, seq_len, seed)

        return fake


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    """Present a fake GPU to training and to the ladder: `install(total, fixed, per_sequence)` returns it."""

    def install(total: float, fixed: float, per_sequence: float) -> FakeGpu:
        gpu = FakeGpu(total, fixed, per_sequence)
        for module in (train_module, ladder_module):
            monkeypatch.setattr(module, "memory_of", lambda device: gpu)
        monkeypatch.setattr(train_module, "fixed_batches", gpu.batches(fixed_batches))
        return gpu

    return install


# Peaks of one training step of the 124M model at 16 x 1,024 tokens, measured on an NVIDIA H200 (runs/reference,
# the ladder): float32 with textbook attention and full logits, and bf16 with SDPA. The fixed part is the float32
# weights, gradients and AdamW's two moments: 16 bytes per parameter.
GPT2_FIXED = 16 * 124_475_904
H200_PEAKS = {"fp32 baseline": 32_606 * MiB, "SDPA": 18_001 * MiB}


def brute_force(requested: int, step: StepMemory, capacity: int) -> int | None:
    """The largest micro-batch that divides `requested` and whose peak fits MARGIN of `capacity`, by trying all."""
    fitting = [b for b in range(1, requested + 1) if requested % b == 0 and step.peak(b) <= MARGIN * capacity]
    return max(fitting, default=None)


@pytest.mark.parametrize("gpu, capacity", [("T4", 15.0 * GB), ("L4", 22.5 * GB), ("A100 40GB", 40 * GB)])
@pytest.mark.parametrize("configuration", sorted(H200_PEAKS))
def test_the_chosen_micro_batch_is_the_largest_divisor_that_fits(gpu, capacity, configuration):
    per_sequence = (H200_PEAKS[configuration] - GPT2_FIXED) // 16
    fake = FakeGpu(capacity, GPT2_FIXED, per_sequence)
    fit = fit_micro_batch(fake.step, 16, 1024, fake)
    expected = brute_force(16, StepMemory(GPT2_FIXED, per_sequence), capacity)
    assert fit.batch_size == expected
    assert fit.step_memory == StepMemory(GPT2_FIXED, per_sequence)  # the line through the two small steps
    assert fit.peak == GPT2_FIXED + expected * per_sequence <= MARGIN * capacity
    assert fake.steps == [1, 1, 2, expected]  # a first step, the two measured ones, one to confirm
    if configuration == "fp32 baseline" and gpu == "T4":  # the ladder's baseline on a free Colab GPU
        assert fit.batch_size == 4 and fit.line(4).startswith(
            "micro-batch 4 x 1,024, 4 accumulation steps, to fit 15.0"
        )


def test_a_step_that_runs_out_despite_the_prediction_is_retried_smaller():
    fake = FakeGpu(12 * GB, 1 * GB, 1 * GB)  # 8 sequences are predicted to fit: 9 GB <= 0.85 x 12 GB

    def step(batch_size: int) -> None:  # the fake GPU is fuller than its line says at 8 sequences
        if batch_size == 8:
            fake.steps.append(batch_size)
            raise torch.OutOfMemoryError("CUDA out of memory (fragmented)")
        fake.step(batch_size)

    fit = fit_micro_batch(step, 8, 64, fake)
    assert fit.batch_size == 4 and fake.steps == [1, 1, 2, 8, 4]


def test_a_model_too_large_for_one_sequence_is_one_sentence():
    fake = FakeGpu(2 * GB, 3 * GB, 1 * GB)
    with pytest.raises(sg.ShakeGPTError, match=r"^the model does not fit .* one sequence of 1,024 tokens .*--seq-len"):
        fit_micro_batch(fake.step, 16, 1024, fake)


def test_cuda_memory_reads_free_memory_and_the_process_share(monkeypatch):
    """A fake 16 GB CUDA device: 12 GB free, 1 GB held by this process's cache, at most half of the device."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (12 * GB, 16 * GB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 1 * GB)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 1.0)
    assert CudaMemory(torch.device("cuda")).capacity() == 13 * GB
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 0.5)
    assert CudaMemory(torch.device("cuda")).capacity() == 8 * GB


def test_no_fit_off_cuda():
    assert memory_module.memory_of(torch.device("cpu")) is None
    cfg = sg.TrainConfig(preset="tiny", batch_size=8).resolve("cpu")
    assert train_module.fit_to_memory(cfg, torch.device("cpu")) == (cfg, None)


@pytest.fixture
def in_process_env(tmp_path_factory, monkeypatch):
    if not os.environ.get("SHAKEGPT_DATA_DIR"):
        pytest.skip("set SHAKEGPT_DATA_DIR to a folder holding tinyshakespeare.txt")
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SHAKEGPT_CACHE_DIR", str(cache))


def tiny_run(out: Path, **changes) -> sg.TrainConfig:
    values = dict(
        preset="tiny", batch_size=8, seq_len=32, dtype="fp32", max_steps=6, log_interval=1, eval_interval=3,
        eval_batches=2, sample_interval=0, progress=False, tensorboard=False, device="cpu", out=str(out),
    )  # fmt: skip
    return sg.TrainConfig(**{**values, **changes})


def test_a_fitted_run_keeps_the_tokens_per_step_and_learns_the_same(tmp_path, in_process_env, fake_gpu, capsys):
    """8 sequences asked for on a GPU that holds 2: micro-batches of 2, 4 accumulation steps, the same windows per
    optimizer step, so the same losses as 8 at once (float32, up to rounding)."""
    plain = sg.train(tiny_run(tmp_path / "plain"))
    capsys.readouterr()
    gpu = fake_gpu(total=10 * GB, fixed=2 * GB, per_sequence=2.5 * GB)
    fitted = sg.train(tiny_run(tmp_path / "fitted"))
    printed = capsys.readouterr().out
    assert gpu.steps[:4] == [1, 1, 2, 2]  # measured at 1 and 2, confirmed at 2
    assert "micro-batch 2 x 32, 4 accumulation steps, to fit 10.0 GB (a step's peak 7.0 GB; 8 x 32 asked)" in printed
    assert "256 tokens per step (2 x 32 x 4 x 1)" in printed
    assert (fitted["config"]["batch_size"], fitted["config"]["grad_accum"]) == (2, 4)
    assert fitted["memory_fit"].startswith("micro-batch 2 x 32, 4 accumulation steps")
    assert plain["memory_fit"] is None and fitted["tokens"] == plain["tokens"]
    a, b = sg.read_metrics(tmp_path / "plain" / "metrics.jsonl"), sg.read_metrics(tmp_path / "fitted" / "metrics.jsonl")
    assert [row["loss"] for row in b] == pytest.approx([row["loss"] for row in a], abs=1e-5)
    assert [row.get("val_loss") for row in b] == pytest.approx([row.get("val_loss") for row in a], abs=1e-5)


def test_fit_memory_off_keeps_the_micro_batch(tmp_path, in_process_env, fake_gpu):
    fake_gpu(total=10 * GB, fixed=2 * GB, per_sequence=2.5 * GB)
    summary = sg.train(tiny_run(tmp_path / "run", fit_memory=False, max_steps=1, eval_interval=1))
    assert (summary["config"]["batch_size"], summary["config"]["grad_accum"]) == (8, 1)


def test_running_out_of_memory_mid_run_is_one_line_and_keeps_the_checkpoint(
    tmp_path, in_process_env, fake_gpu, monkeypatch, capsys
):
    """A fake GPU that holds 4 sequences of 8; at step 5 the step runs out anyway (another notebook grew): one line
    naming the setting and a value that fits, exit status 1, last.pt from step 4 intact."""
    fake_gpu(total=10 * GB, fixed=2 * GB, per_sequence=1.5 * GB)
    real_step, calls = train_module.train_step, {"n": 0}

    def step(model, optimizer, batches, *args, **kwargs):
        calls["n"] += batches.shuffle  # a step of the run, not of the fit (which steps on fixed random batches)
        if calls["n"] == 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return real_step(model, optimizer, batches, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", step)
    status = sg.main(["train", *cli_args(tmp_path / "run"), "--ckpt-interval", "2"])
    captured = capsys.readouterr()
    assert status == 1 and "Traceback" not in captured.err
    line = captured.err.strip()
    assert "\n" not in line
    checkpoint = tmp_path / "run" / "last.pt"
    assert line.startswith(
        f"error: out of memory on cpu after step 4, with micro-batches of 4 x 32 tokens; the last checkpoint is kept "
        f"at {checkpoint}. To fit, lower batch_size / --batch-size to 2 with grad_accum / --grad-accum 4 (the same "
        "256 tokens per step"
    )
    assert sg.load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 4


def cli_args(out: Path) -> list[str]:
    args = ["--preset", "tiny", "--batch-size", "8", "--seq-len", "32", "--dtype", "fp32", "--max-steps", "8"]
    args += ["--log-interval", "1", "--eval-interval", "4", "--eval-batches", "1", "--sample-interval", "0"]
    return [*args, "--no-progress", "--no-tensorboard", "--device", "cpu", "--out", str(out)]


def test_out_of_memory_advice_uses_the_measured_line():
    gpu = FakeGpu(20 * GB, 2 * GB, 1 * GB)
    fit = fit_micro_batch(gpu.step, 16, 1024, gpu)
    assert fit.batch_size == 8  # 2 + 8 = 10 GB <= 17 GB; 2 + 16 = 18 GB does not fit
    assert out_of_memory_advice(8, 2, 1024, fit).startswith(
        "lower batch_size / --batch-size to 4 with grad_accum / --grad-accum 4"
    )
    assert out_of_memory_advice(12, 1, 64, None).startswith("lower batch_size / --batch-size to 6 with grad_accum")
    assert out_of_memory_advice(1, 1, 64, None).startswith("the model does not fit in this GPU's memory")


def test_the_ladder_takes_one_micro_batch_that_its_baseline_fits(fake_gpu, capsys):
    gpu = fake_gpu(total=10 * GB, fixed=1 * GB, per_sequence=2 * GB)
    ladder = sg.Ladder(sg.BenchSettings(preset="tiny", batch_size=8, seq_len=16, steps=1, warmup=0, device="cpu"))
    assert ladder.settings.batch_size == 2 and ladder.memory_fit.batch_size == 2  # 1 + 2 x 2 = 5 <= 8.5 GB
    assert gpu.steps == [1, 1, 2, 2]
    assert "every rung: micro-batch 2 x 16, to fit 10.0 GB" in capsys.readouterr().out
    row = ladder.climb("fp32 baseline")
    assert row["features"]["batch_size"] == 2 and row["tokens_per_step"] == 2 * 16
    assert ladder.features_below(len(ladder.rungs))["grad_accum"] == 2


def test_a_rung_that_runs_out_of_memory_is_skipped_with_the_setting_to_lower(monkeypatch, capsys):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (fake)")

    ladder = sg.Ladder(sg.BenchSettings(preset="tiny", batch_size=6, seq_len=16, steps=1, warmup=0, device="cpu"))
    monkeypatch.setattr(ladder_module, "fixed_batches", out_of_memory)
    row = ladder.climb("fp32 baseline")
    assert row["skipped"] and row["reason"] == (
        "out of memory at 6 sequences of 16 tokens per micro-step; a smaller batch_size / --batch-size (such as 3) "
        "fits more rungs"
    )
    assert capsys.readouterr().out.strip().endswith(row["reason"])
