"""What the environment can do, read from PyTorch rather than guessed: the attention kernel SDPA really runs, checked
against the kernels the profiler sees; a torch.compile that fails for real (no C++ compiler) is one warning line,
and training, the summary and the ladder go on without it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import shakegpt.hardware as hardware
import shakegpt.run as run_module
import shakegpt_utils as sg
from shakegpt.bench.rungs import ladder_compile_problem

ROOT = Path(__file__).resolve().parent.parent
# The operator each kernel name stands for on a CPU, as torch.profiler lists it.
CPU_OPERATORS = {
    "flash (CPU)": "aten::_scaled_dot_product_flash_attention_for_cpu",
    "math (unfused)": "aten::_scaled_dot_product_attention_math",
}


def operators_run(dtype: torch.dtype) -> set[str]:
    """The attention operators a forward and backward pass of the model's attention ran, seen by the profiler."""
    q = torch.randn(2, 4, 64, 16, dtype=dtype, requires_grad=True)
    with torch.profiler.profile() as profile:
        F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    return {event.name for event in profile.events() if event.name.startswith("aten::_scaled_dot_product")}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backends", [None, [SDPBackend.MATH]], ids=["default", "math only"])
def test_the_named_attention_kernel_is_the_one_that_runs(dtype, backends):
    with sdpa_kernel(backends) if backends else contextlib.nullcontext():
        name = hardware.attention_kernel("cpu", dtype, n_head=4, head_size=16, seq_len=64)
        ran = operators_run(dtype)
    assert name in CPU_OPERATORS and CPU_OPERATORS[name] in ran
    assert not ran & (set(CPU_OPERATORS.values()) - {CPU_OPERATORS[name]})
    assert (name == "math (unfused)") == bool(backends)


def test_training_names_its_attention_kernel(tmp_path, env):
    summary = run_tiny(tmp_path / "run", env)
    assert summary["attention_kernel"] == hardware.attention_kernel("cpu", torch.float32, 2, 32, 32) == "flash (CPU)"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    if not os.environ.get("SHAKEGPT_DATA_DIR"):
        pytest.skip("set SHAKEGPT_DATA_DIR to a folder holding tinyshakespeare.txt")
    cache = tmp_path_factory.mktemp("cache")
    sg.load_tokens("tinyshakespeare", cache)
    return {**os.environ, "SHAKEGPT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def tiny_args(out: Path) -> list[str]:
    args = ["--preset", "tiny", "--batch-size", "4", "--seq-len", "32", "--dtype", "fp32", "--max-steps", "4"]
    args += ["--log-interval", "1", "--eval-interval", "4", "--eval-batches", "1", "--sample-interval", "0"]
    return [*args, "--no-progress", "--no-tensorboard", "--device", "cpu", "--out", str(out)]


def run_tiny(out: Path, env: dict[str, str], *extra: str, path: str | None = None) -> dict:
    """`python -m shakegpt_utils train` on the tiny model (with PATH replaced when given); its summary."""
    run_env = {**env, "PATH": path} if path is not None else env
    result = subprocess.run(
        [sys.executable, "-m", "shakegpt_utils", "train", *tiny_args(out), *extra],
        env=run_env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    summary["stdout"] = result.stdout
    return summary


def test_without_a_cpp_compiler_training_goes_on_uncompiled_and_says_why(tmp_path, env):
    """--compile on a CPU whose PATH holds no C++ compiler (only this Python): the compiler really fails, the banner
    and one warning line say so, and the run trains exactly as one without --compile."""
    no_compiler = str(Path(sys.executable).parent)
    summary = run_tiny(tmp_path / "compiled", env, "--compile", path=no_compiler)
    run_tiny(tmp_path / "plain", env)
    assert summary["compile"] is False and summary["config"]["compile"] is True
    assert "C++ compiler" in summary["compile_problem"]
    lines = summary["stdout"].splitlines()
    assert "+ compile" not in lines[0]
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert warnings == [f"warning: {summary['compile_problem']}; training goes on without compiling."]
    losses = [row["loss"] for row in sg.read_metrics(tmp_path / "compiled" / "metrics.jsonl")]
    assert losses == [row["loss"] for row in sg.read_metrics(tmp_path / "plain" / "metrics.jsonl")]


@pytest.fixture
def failing_compiler(tmp_path, monkeypatch):
    """Inductor pointed at a C++ compiler that does not exist, with an empty cache of compiled code: compiling
    anything for the CPU fails for real."""
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    hardware.compile_problem.cache_clear()
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/g++",)}):
        yield
    hardware.compile_problem.cache_clear()
    torch._dynamo.reset()


def test_compile_problem_reports_a_real_failure(failing_compiler):
    problem = hardware.compile_problem(torch.device("cpu"))
    assert problem.startswith("torch.compile failed here: ") and "C++ compiler" in problem
    assert ladder_compile_problem(torch.device("cpu"), compile_allowed=True) == problem
    assert "--no-compile" in ladder_compile_problem(torch.device("cpu"), compile_allowed=False)


def test_a_compile_failing_at_the_first_step_falls_back_to_the_same_run(
    tmp_path, env, failing_compiler, monkeypatch, capsys
):
    """The check before the run passes, but compiling the model fails at its first step: the run goes on uncompiled
    from the same batch and random state, so its losses are those of a run that never compiled."""
    monkeypatch.setenv("SHAKEGPT_CACHE_DIR", env["SHAKEGPT_CACHE_DIR"])
    monkeypatch.setattr(run_module, "compile_problem", lambda device: None)
    settings = dict(
        preset="tiny", batch_size=4, seq_len=32, dtype="fp32", max_steps=4, log_interval=1, eval_interval=4,
        eval_batches=1, sample_interval=0, progress=False, tensorboard=False, device="cpu",
    )  # fmt: skip
    compiled = sg.train(sg.TrainConfig(**settings, compile=True, out=str(tmp_path / "compiled")))
    printed = capsys.readouterr().out
    plain = sg.train(sg.TrainConfig(**settings, out=str(tmp_path / "plain")))
    assert compiled["compile"] is False and "at the first step" in compiled["compile_problem"]
    assert "+ compile" in printed.splitlines()[0]  # the check before the run had passed
    assert f"warning: {compiled['compile_problem']}; training goes on without compiling." in printed
    losses = [row["loss"] for row in sg.read_metrics(tmp_path / "compiled" / "metrics.jsonl")]
    assert losses == [row["loss"] for row in sg.read_metrics(tmp_path / "plain" / "metrics.jsonl")]
    assert compiled["best_val_loss"] == plain["best_val_loss"]
