#!/usr/bin/env python3
"""A one-shot check of ShakeGPT on a GPU machine (H100/H200, no internet), finished within a time budget (8 min).

    python3 tools/gpu_check.py --out OUT                              # on the GPU; tools/gpu_check.sh sets it up
    python3 tools/gpu_check.py --out OUT --device cpu --preset tiny   # the dry run: the same code, in about a minute

Three sections, each check ending PASS, FAIL or SKIP with the numbers it measured (and, unless PASS, why):
  unit checks  the CUDA code paths: chunked loss vs full logits in fp32/bf16/fp16, train_step with fp16 and bf16,
               DistributedDataParallel with one process, generation, exact resume, no host sync in to_device;
  reference    `python -m shakegpt_utils train --target-loss 0.1` under a wall-clock limit, then five samples from
               "Hello world: tell to" from its last and best checkpoints (OUT/reference/);
  ladder       `python -m shakegpt_utils bench ladder` (OUT/ladder/: its JSON, from which its figure is drawn).
The reference run gets up to --reference-minutes; the ladder gets what is left of the budget, so it gains whatever the
reference run leaves unused by stopping early, and it finds the compiled GPT-2 of that run in the compiler's cache.
Cut by its limit, the reference run still leaves metrics.jsonl, from which its summary is rebuilt; the ladder writes
its result only at the end, so a cut ladder leaves only its log.

OUT/gpu_check.json holds everything and is rewritten after each check, so a run cut short keeps what it measured.
The exit status is 0 when no check failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a copy of the checkout, without installing the package

import shakegpt_utils as sg  # noqa: E402
from shakegpt.hardware import versions  # noqa: E402
from shakegpt.train import to_device  # noqa: E402

TARGET_LOSS = 0.1  # the reference run's --target-loss
SAMPLE_PROMPT = "Hello world: tell to"  # the reference result's five samples start from it
SAMPLES_LIMIT_S = 90.0  # for loading a checkpoint and writing five samples
LOSS_SCALE = 65536.0  # GradScaler's initial scale, applied by hand in the fp16 loss check
# The chunked loss may differ from the fp32 reference by this fraction of the loss, and its gradients may be at most
# GRAD_RATIO times as far from the reference's as those of full logits under the same autocast, plus GRAD_FLOOR.
LOSS_TOLERANCE = {"fp32": 1e-5, "bf16": 2e-3, "fp16": 1e-3}
GRAD_RATIO, GRAD_FLOOR = 1.5, 1e-5
DDP_TOLERANCE = 1e-4  # largest difference between the losses of a DDP-wrapped model and a plain one
GRACE_S = 10.0  # an over-time subprocess gets SIGINT this long before its limit, SIGKILL at the limit
WRAP_UP_S = 15.0  # kept back from the budget for copying results and writing the report
MIN_SUBPROCESS_S = 30.0  # below this a subprocess could not even import torch and start; it is skipped instead

Findings = tuple[dict, list[str]]  # what a check measured, and what it found wrong (nothing: PASS)


class SkipCheck(Exception):
    """Raised by a check that cannot run here; the message says why."""


@dataclass(frozen=True)
class Sizes:
    """How large each part is on a device type: the real shapes on a GPU, small ones for the CPU dry run (the
    CPU's fp16 products are slow)."""

    chunk_shape: tuple[int, int, int]  # tokens x width x vocabulary rows of the output-layer loss check
    chunk_rows: int  # rows per chunk there; several chunks on every device
    batch_size: int  # sequences per micro-step of the tiny-model checks
    seq_len: int
    train_steps: int
    reference_max_steps: int | None  # None: the preset's own schedule
    ladder_batch_size: int
    ladder_steps: int
    ladder_warmup: int
    ladder_compile: bool


SIZES = {
    "cuda": Sizes((16384, 768, 50304), 1024, 8, 64, 20, None, 16, 5, 2, True),
    "cpu": Sizes((1024, 64, 4096), 256, 2, 16, 20, 20, 2, 2, 1, False),
}


# ---- the report --------------------------------------------------------------------------------------------------


def json_safe(value: object) -> object:
    """`value` with NaN and infinities written as strings, so the report stays valid JSON and shows them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def headline(measured: dict) -> str:
    """The scalar numbers of a check on one short line, for the console."""
    parts = []
    for key, value in measured.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, int | bool | str) and len(str(value)) < 40:
            parts.append(f"{key}={value}")
    line = " ".join(parts)
    return line if len(line) <= 200 else line[:197] + "..."


class Report:
    """OUT/gpu_check.json: device, versions, every check's result and the sections' timings."""

    def __init__(self, path: Path, device: torch.device, settings: dict):
        self.path = path
        self.started = time.perf_counter()
        self.data = {
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "device": sg.describe_device(device),
            "versions": versions(),
            "settings": settings,
            "checks": {},
            "sections": {},
            "passed": True,
        }
        self.write()

    def add(self, name: str, status: str, seconds: float, measured: dict, reason: str | None) -> None:
        """Record one check's result, print its line and rewrite the file."""
        self.data["checks"][name] = {"status": status, "seconds": seconds, "reason": reason, "measured": measured}
        self.data["passed"] = all(check["status"] != "FAIL" for check in self.data["checks"].values())
        print(f"{status:<4} {name:<22} {seconds:6.1f} s  {reason or headline(measured)}", flush=True)
        self.write()

    def section(self, name: str, seconds: float) -> None:
        self.data["sections"][name] = {"seconds": seconds}
        self.write()

    def finish(self) -> None:
        self.data["total_s"] = time.perf_counter() - self.started
        self.write()

    @property
    def passed(self) -> bool:
        return self.data["passed"]

    def write(self) -> None:
        self.path.write_text(json.dumps(json_safe(self.data), indent=2, allow_nan=False) + "\n")


def run_check(report: Report, name: str, check: Callable[[], Findings]) -> None:
    """Run one check and record it; SkipCheck makes it SKIP, any other exception FAIL (with the traceback kept)."""
    started = time.perf_counter()
    try:
        measured, problems = check()
        status, reason = ("FAIL", "; ".join(problems)) if problems else ("PASS", None)
    except SkipCheck as skip:
        measured, status, reason = {}, "SKIP", str(skip)
    except Exception as error:  # a failing check must not end the others
        measured = {"traceback": traceback.format_exc()}
        status, reason = "FAIL", f"{type(error).__name__}: {sg.first_line(error)}"
    report.add(name, status, time.perf_counter() - started, measured, reason)


# ---- unit checks -------------------------------------------------------------------------------------------------


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference||, in float64."""
    reference = reference.double()
    return float((value.double() - reference).norm() / reference.norm())


def loss_and_grads(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], h: torch.Tensor, w: torch.Tensor, scale: float
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The loss and its gradients for h and w, the loss scaled before backward and the gradients divided after,
    as GradScaler does."""
    h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
    loss = loss_fn(h, w)
    (loss * scale).backward()
    return loss.item(), h.grad / scale, w.grad / scale


def check_chunked_loss(device: torch.device, sizes: Sizes, dtype_name: str) -> Findings:
    """sg.ChunkedLinearCrossEntropy against fp32 F.cross_entropy on full logits: its loss close to the reference, its
    gradients no further from the reference's than those of full logits computed under the same autocast."""
    n_tokens, width, vocab = sizes.chunk_shape
    n_valid = vocab - 47  # like 50257 real tokens in 50304 rows: the padding rows must never be predicted
    generator = torch.Generator(device).manual_seed(0)
    h = torch.randn(n_tokens, width, device=device, generator=generator)
    w = torch.randn(vocab, width, device=device, generator=generator) * (2 / width**0.5)  # logits of std 2
    targets = torch.randint(0, n_valid, (n_tokens,), device=device, generator=generator)
    precision = sg.get_precision(device, dtype_name)
    scale = LOSS_SCALE if dtype_name == "fp16" else 1.0

    def full_logits(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            logits = h @ w.T
        return F.cross_entropy(logits[:, :n_valid].float(), targets)

    def chunked(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return sg.ChunkedLinearCrossEntropy.apply(h, w, targets, n_valid, sizes.chunk_rows, precision.dtype, True)

    reference = loss_and_grads(lambda h, w: F.cross_entropy((h @ w.T)[:, :n_valid], targets), h, w, 1.0)
    results = {"full": loss_and_grads(full_logits, h, w, scale), "chunked": loss_and_grads(chunked, h, w, scale)}
    measured = {
        "shape": [n_tokens, width, vocab],
        "chunk_rows": sizes.chunk_rows,
        "loss_scale": scale,
        "reference_loss": reference[0],
    }
    for name, (loss, grad_h, grad_w) in results.items():
        measured[f"{name}_loss_error"] = abs(loss - reference[0]) / reference[0]
        measured[f"{name}_grad_h_error"] = relative_error(grad_h, reference[1])
        measured[f"{name}_grad_w_error"] = relative_error(grad_w, reference[2])
    problems = []
    if not measured["chunked_loss_error"] <= LOSS_TOLERANCE[dtype_name]:
        problems.append(
            f"chunked loss off by {measured['chunked_loss_error']:.2e} of the reference "
            f"(tolerance {LOSS_TOLERANCE[dtype_name]:.0e})"
        )
    for grad in ("grad_h", "grad_w"):
        allowed = GRAD_RATIO * measured[f"full_{grad}_error"] + GRAD_FLOOR
        if not measured[f"chunked_{grad}_error"] <= allowed:
            problems.append(f"chunked {grad} error {measured[f'chunked_{grad}_error']:.2e} > allowed {allowed:.2e}")
    return measured, problems


def pattern_tokens() -> np.ndarray:
    """A random phrase of 101 tokens repeated 40 times: a stream that a tiny model learns within a few steps."""
    phrase = np.random.default_rng(0).integers(0, sg.GPT2_VOCAB_SIZE, size=101)
    return np.tile(phrase, 40).astype(np.uint16)


def tiny_training(
    device: torch.device, sizes: Sizes, init_seed: int = 0, loss_impl: str | None = None
) -> tuple[sg.GPT, torch.optim.Optimizer, sg.TokenBatches]:
    """A tiny-preset model as training builds it (vocabulary padded; the device's default loss unless `loss_impl`
    says otherwise) initialised from `init_seed`, its AdamW, and shuffled batches of the pattern stream (always
    the same data order)."""
    sg.set_seed(init_seed)
    config = sg.GPTConfig.preset(
        "tiny", vocab_size=sg.PADDED_VOCAB_SIZE, loss_impl=loss_impl or sg.default_loss(device)
    )
    model = sg.GPT(config).to(device)
    optimizer = sg.configure_optimizer(model, lr=3e-3, device_type=device.type)
    batches = sg.TokenBatches(pattern_tokens(), sizes.batch_size, sizes.seq_len, shuffle=True, seed=1)
    return model, optimizer, batches


def train_losses(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: sg.TokenBatches,
    precision: sg.Precision,
    device: torch.device,
    steps: int,
    grad_accum: int = 1,
) -> list[float]:
    """The losses of `steps` calls of sg.train_step."""
    return [float(sg.train_step(model, optimizer, batches, grad_accum, precision, device)[0]) for _ in range(steps)]


def check_train_step(device: torch.device, sizes: Sizes, dtype_name: str) -> Findings:
    """sg.train_step under `dtype_name` (fp16 through GradScaler), with each output-layer loss (training uses full
    logits on CUDA, the chunked loss elsewhere): every loss finite and the last below the first."""
    measured: dict = {"steps": sizes.train_steps}
    problems = []
    for loss_impl in ("chunked", "full"):
        model, optimizer, batches = tiny_training(device, sizes, loss_impl=loss_impl)
        precision = sg.get_precision(device, dtype_name)
        losses = train_losses(model, optimizer, batches, precision, device, sizes.train_steps)
        measured.update({f"{loss_impl}_first_loss": losses[0], f"{loss_impl}_last_loss": losses[-1]})
        if precision.scaler is not None:
            measured[f"{loss_impl}_final_loss_scale"] = precision.scaler.get_scale()
        measured[f"{loss_impl}_losses"] = losses
        problems += [f"{loss_impl}: loss {x} at step {i + 1}" for i, x in enumerate(losses) if not math.isfinite(x)]
        if not losses[-1] < losses[0]:
            problems.append(f"{loss_impl}: the loss did not fall: {losses[0]:.4f} -> {losses[-1]:.4f}")
    return measured, problems


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def single_process_group(device: torch.device) -> Iterator[str]:
    """A process group of world size 1 (NCCL on CUDA, gloo on a CPU) on a free loopback port, destroyed on exit;
    MASTER_ADDR and MASTER_PORT are put back as they were. Yields the backend's name."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    saved = {name: os.environ.get(name) for name in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    try:
        dist.init_process_group(backend, rank=0, world_size=1, timeout=datetime.timedelta(minutes=1))
        try:
            yield backend
        finally:
            dist.destroy_process_group()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_ddp(device: torch.device, sizes: Sizes) -> Findings:
    """One process in a real process group: training steps with grad_accum=2 and an evaluation of a model wrapped in
    DistributedDataParallel give the losses of the same steps on an unwrapped twin."""
    precision = sg.get_precision(device, "auto")
    tokens, steps = pattern_tokens(), 3
    n_windows = 3 * sizes.batch_size + 1  # the last evaluation batch is smaller than the others
    measured: dict = {"dtype": precision.name}
    with single_process_group(device) as backend:
        measured["backend"] = backend
        for name in ("plain", "ddp"):
            model, optimizer, batches = tiny_training(device, sizes)
            if name == "ddp":
                model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            losses = train_losses(model, optimizer, batches, precision, device, steps, grad_accum=2)
            windows = sg.evaluation_windows(tokens, sizes.batch_size, sizes.seq_len, n_windows)
            measured[f"{name}_losses"] = losses
            measured[f"{name}_val_loss"] = sg.evaluate(model, windows, precision, device)
    pairs = [
        *zip(measured["plain_losses"], measured["ddp_losses"], strict=True),
        (measured["plain_val_loss"], measured["ddp_val_loss"]),
    ]
    measured["max_difference"] = max(abs(a - b) for a, b in pairs)
    problems = []
    if not measured["max_difference"] <= DDP_TOLERANCE:
        problems.append(f"DDP and plain losses differ by {measured['max_difference']:.2e} (> {DDP_TOLERANCE:.0e})")
    return measured, problems


def check_generation(device: torch.device, sizes: Sizes) -> Findings:
    """On the device: greedy generation with and without the KV cache gives the same tokens (past the context, so
    the cache is refilled), and seeded sampling repeats exactly. The model is trained a little first, so that its
    greedy choices are clear-cut and cannot flip on rounding differences between the two paths."""
    model, optimizer, batches = tiny_training(device, sizes)
    train_losses(model, optimizer, batches, sg.get_precision(device, "fp32"), device, sizes.train_steps)
    prompt = torch.from_numpy(pattern_tokens()[:8].astype(np.int64))[None].to(device)
    new_tokens = model.config.block_size + 16
    cached = sg.generate(model, prompt, new_tokens, temperature=0)
    uncached = sg.generate(model, prompt, new_tokens, temperature=0, use_cache=False)
    samples = [sg.generate(model, prompt, new_tokens, temperature=0.8, top_k=50, seed=7) for _ in range(2)]
    measured = {
        "new_tokens": new_tokens,
        "greedy_mismatches": int((cached != uncached).sum()),
        "sampled_mismatches": int((samples[0] != samples[1]).sum()),
    }
    problems = []
    if measured["greedy_mismatches"]:
        problems.append(
            f"greedy generation with and without the cache differs in {measured['greedy_mismatches']} tokens"
        )
    if measured["sampled_mismatches"]:
        problems.append(f"seeded sampling did not repeat: {measured['sampled_mismatches']} tokens differ")
    return measured, problems


def check_checkpoint_resume(device: torch.device, sizes: Sizes, folder: Path) -> Findings:
    """save_checkpoint, load_checkpoint and resume_training into fresh objects (another initialisation, a new
    GradScaler): the next 2 fp16 steps give exactly the losses of the original run continuing, and the two loss
    scalers end in the same state (a power-of-two scale rarely changes a loss, so it is compared directly)."""
    precision = sg.get_precision(device, "fp16")  # so that the loss scale must be restored too
    model, optimizer, batches = tiny_training(device, sizes)
    train_losses(model, optimizer, batches, precision, device, 3)
    extra = {"scaler": precision.scaler.state_dict()}
    path = sg.save_checkpoint(folder / "resume.pt", model, optimizer, 3, batches.state_dict(), extra=extra)
    continued = train_losses(model, optimizer, batches, precision, device, 2)
    checkpoint = sg.load_checkpoint(path, map_location=device)
    fresh_model, fresh_optimizer, fresh_batches = tiny_training(device, sizes, init_seed=1)
    fresh_precision = sg.get_precision(device, "fp16")
    sg.resume_training(checkpoint, fresh_model, fresh_optimizer, fresh_batches, fresh_precision.scaler)
    resumed = train_losses(fresh_model, fresh_optimizer, fresh_batches, fresh_precision, device, 2)
    measured = {
        "continued_losses": continued,
        "resumed_losses": resumed,
        "scaler_state_equal": precision.scaler.state_dict() == fresh_precision.scaler.state_dict(),
    }
    problems = [] if continued == resumed else [f"resumed losses {resumed} differ from continued {continued}"]
    if not measured["scaler_state_equal"]:
        problems.append("the resumed GradScaler's state differs from the continued one's")
    return measured, problems


def check_to_device_no_sync(device: torch.device, sizes: Sizes) -> Findings:
    """to_device must not wait for the GPU: called with about half a second of matrix products queued, under
    torch.cuda.set_sync_debug_mode("error") (which raises on any synchronising call), it returns while the work is
    still running, and the copies arrive intact."""
    if device.type != "cuda":
        raise SkipCheck(f"CUDA only: {device.type} runs every operation at once, there is no queue to wait for")
    x, y = sg.TokenBatches(pattern_tokens(), sizes.batch_size, sizes.seq_len, shuffle=False).next_batch()
    to_device(x, y, device)  # warm up the pinned-memory allocator, as the first training step does
    sg.synchronize(device)
    a = torch.randn(8192, 8192, device=device)
    for _ in range(24):  # 1.1 TFLOP each in fp32 (TF32 stays off in this process), about 20 ms on an H100
        a = (a @ a) / 8192**0.5
    problems = []
    started = time.perf_counter()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x_device, y_device = to_device(x, y, device)
    except RuntimeError as error:
        problems.append(f"to_device synchronised: {sg.first_line(error)}")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    call_ms = 1000 * (time.perf_counter() - started)
    still_running = not torch.cuda.current_stream(device).query()
    sg.synchronize(device)
    measured = {
        "call_ms": call_ms,
        "queued_ms": 1000 * (time.perf_counter() - started),
        "work_still_queued": still_running,
    }
    if not still_running:
        problems.append("the queued GPU work had finished when to_device returned: the call waited for it")
    if not problems and not (torch.equal(x_device.cpu(), x) and torch.equal(y_device.cpu(), y)):
        problems.append("the batch on the device differs from the batch on the host")
    return measured, problems


def unit_checks(device: torch.device, sizes: Sizes) -> list[tuple[str, Callable[[], Findings]]]:
    """Every unit check, by name."""
    checks: list[tuple[str, Callable[[], Findings]]] = [
        (f"chunked_loss_{dtype}", lambda dtype=dtype: check_chunked_loss(device, sizes, dtype))
        for dtype in ("fp32", "bf16", "fp16")
    ]
    checks += [
        (f"train_step_{dtype}", lambda dtype=dtype: check_train_step(device, sizes, dtype))
        for dtype in ("fp16", "bf16")
    ]
    checks += [
        ("ddp_one_process", lambda: check_ddp(device, sizes)),
        ("generation", lambda: check_generation(device, sizes)),
        (
            "checkpoint_resume",
            lambda: in_temporary_folder(lambda folder: check_checkpoint_resume(device, sizes, folder)),
        ),
        ("to_device_no_sync", lambda: check_to_device_no_sync(device, sizes)),
    ]
    return checks


def in_temporary_folder(check: Callable[[Path], Findings]) -> Findings:
    """Run `check` with a temporary folder, deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="shakegpt-gpu-check-") as folder:
        return check(Path(folder))


# ---- subprocesses: the ladder and the reference run --------------------------------------------------------------


@dataclass
class Finished:
    """How a subprocess ended."""

    returncode: int
    wall_s: float
    time_limit_s: float
    cut_by_time_limit: bool
    last_line: str  # of its output: the error, when it failed


def last_line(path: Path) -> str:
    """The last non-empty line of a log file."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    """Send `sig` to the process group that `process` leads (it and its children), if any of it is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def stop_group(process: subprocess.Popen, grace_s: float) -> None:
    """Stop a subprocess: SIGINT, on which the CLI ends cleanly, then SIGKILL to the group after `grace_s` (and
    in any case to whatever is left of it, such as compile workers, which would otherwise hold the GPU)."""
    signal_group(process, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    signal_group(process, signal.SIGKILL)
    process.wait()


def run_limited(command: list[str], log_path: Path, limit_s: float, env: dict[str, str]) -> Finished:
    """Run `command` in the repository root, in its own process group, its output into `log_path`; stop it when
    it would run past `limit_s` seconds."""
    started = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            process.wait(timeout=max(1.0, limit_s - GRACE_S))
            cut = False
        except subprocess.TimeoutExpired:
            cut = True
        finally:
            if process.poll() is None:  # over time, or this script interrupted: never leave it running
                stop_group(process, GRACE_S)
    return Finished(process.returncode, time.perf_counter() - started, limit_s, cut, last_line(log_path))


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment, with unbuffered output (logs show progress as it happens) and `extra`."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def check_ladder(device: torch.device, args: argparse.Namespace, sizes: Sizes, out: Path, limit_s: float) -> Findings:
    """`bench ladder` on the device: every rung measured (on a CPU rungs may be skipped), every loss finite."""
    folder = out / "ladder"
    folder.mkdir(parents=True, exist_ok=True)
    result_path = folder / f"bench_ladder_{device.type}.json"
    command = [
        sys.executable, "-m", "shakegpt_utils", "bench", "ladder", "--preset", args.preset,
        "--batch-size", str(sizes.ladder_batch_size), "--steps", str(sizes.ladder_steps),
        "--warmup", str(sizes.ladder_warmup), "--device", args.device, "--out", str(result_path),
        *([] if sizes.ladder_compile else ["--no-compile"]),
    ]  # fmt: skip
    finished = run_limited(command, folder / "bench.log", limit_s, subprocess_env(SHAKEGPT_FIGURES_DIR=str(folder)))
    for suffix in (".png", ".svg"):  # the device tool brings back 8 files: the figure is drawn again from the JSON
        result_path.with_suffix(suffix).unlink(missing_ok=True)
    measured: dict = dataclasses.asdict(finished)
    if not result_path.is_file():
        reason = "cut by the time limit" if finished.cut_by_time_limit else f"exit status {finished.returncode}"
        return measured, [f"no ladder result ({reason}): {finished.last_line} (see ladder/bench.log)"]
    rows = json.loads(result_path.read_text())["rows"]
    measured["rungs"] = {row["name"]: ladder_row_summary(row) for row in rows}
    problems = [
        f"{row['name']}: loss {row['loss']}" for row in rows if "loss" in row and not math.isfinite(row["loss"])
    ]
    if device.type == "cuda":
        problems += [f"{row['name']} skipped: {row['reason']}" for row in rows if row["skipped"]]
    return measured, problems


def ladder_row_summary(row: dict) -> dict:
    """The numbers of one rung worth keeping in the report (the full row is in the ladder's own JSON)."""
    if row["skipped"]:
        return {"skipped": True, "reason": row["reason"]}
    keys = ("tokens_per_s", "speedup", "ms_median", "mfu", "peak_memory_mb", "warmup_s", "loss")
    return {"skipped": False, **{key: row[key] for key in keys}}


REFERENCE_KEYS = ("steps", "target_step", "time_to_target_s", "warmup_s", "mean_tok_per_s", "best_val_loss")


def summary_from_metrics(rows: list[dict], target_loss: float) -> dict:
    """The summary's numbers rebuilt from metrics.jsonl, for a run stopped before it wrote summary.json. Each row's
    dt_ms is the mean time of the steps timed in its window (the first step of a run, which compiles, is not one
    of them) and elapsed_s counts from the start, so the warm-up and the training time follow."""
    first = rows[0]
    warmup_s = first["elapsed_s"] - (first["step"] - 1) * first["dt_ms"] / 1000
    window_starts = [1] + [row["step"] for row in rows[:-1]]
    timed = [row["step"] - start for row, start in zip(rows, window_starts, strict=True)]
    train_s = sum(n * row["dt_ms"] / 1000 for n, row in zip(timed, rows, strict=True))
    tokens_per_step = first["tokens"] / first["step"]
    val_losses = [row["val_loss"] for row in rows if "val_loss" in row]
    reached = next((row for row in rows if row["loss"] < target_loss), None)
    return {
        "steps": rows[-1]["step"],
        "target_step": reached["step"] if reached else None,
        "time_to_target_s": reached["elapsed_s"] - warmup_s if reached else None,
        "warmup_s": warmup_s,
        "mean_tok_per_s": sum(timed) * tokens_per_step / train_s if train_s else None,
        "best_val_loss": min(val_losses) if val_losses else None,
    }


def save_loss_figure(rows: list[dict], path: Path) -> None:
    """loss.png from metrics rows, for a run cut off before it drew its own."""
    figure = sg.plot_loss_curves(rows, TARGET_LOSS)
    figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)


def reference_command(args: argparse.Namespace, sizes: Sizes, run_dir: Path) -> list[str]:
    """The reference training run on the command line."""
    command = [
        sys.executable, "-m", "shakegpt_utils", "train", "--preset", args.preset, "--target-loss", str(TARGET_LOSS),
        "--out", str(run_dir), "--no-progress", "--device", args.device,
    ]  # fmt: skip
    if sizes.reference_max_steps is not None:
        command += ["--max-steps", str(sizes.reference_max_steps)]
    return command


def write_samples(args: argparse.Namespace, run_dir: Path, samples_path: Path) -> list[str]:
    """The reference result's five samples from SAMPLE_PROMPT, with their memorisation numbers, from the run's last
    and best checkpoints (those it wrote) into `samples_path`, one section each; returns what went wrong."""
    problems = []
    with samples_path.open("w") as samples:
        for name in ("last", "best"):
            checkpoint = run_dir / f"{name}.pt"
            if not checkpoint.is_file():
                continue
            command = [
                sys.executable, "-m", "shakegpt_utils", "sample", "--ckpt", str(checkpoint), "--prompt", SAMPLE_PROMPT,
                "--num-samples", "5", "--seed", "1337", "--device", args.device, "--memorisation",
            ]  # fmt: skip
            log_path = run_dir / f"samples_{name}.log"
            finished = run_limited(command, log_path, SAMPLES_LIMIT_S, subprocess_env())
            samples.write(f"===== {name}.pt =====\n{log_path.read_text(errors='replace')}\n")
            if finished.returncode != 0:
                problems.append(f"sampling {name}.pt ended with status {finished.returncode}: {finished.last_line}")
    return problems


def check_reference_run(args: argparse.Namespace, sizes: Sizes, out: Path, limit_s: float) -> Findings:
    """The reference training run under a wall-clock limit, its checkpoints (1.5 GB each for GPT-2) in a temporary
    folder; summary.json and metrics.jsonl are copied to OUT/reference, loss.png too, with samples.txt (five samples
    from each checkpoint). Every logged loss must be finite and the last below the first; a run cut by the limit is
    no failure (its summary is rebuilt from the metrics)."""
    folder = out / "reference"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shakegpt-reference-") as scratch:
        command = reference_command(args, sizes, Path(scratch))
        finished = run_limited(command, folder / "train.log", limit_s, subprocess_env())
        for name in ("summary.json", "metrics.jsonl", "loss.png"):
            if (Path(scratch) / name).is_file():
                shutil.copy2(Path(scratch) / name, folder / name)
        sample_problems = write_samples(args, Path(scratch), folder / "samples.txt")
    measured: dict = dataclasses.asdict(finished)
    if not (folder / "metrics.jsonl").is_file():
        return measured, [f"no metrics.jsonl (exit status {finished.returncode}): {finished.last_line}"]
    rows = sg.read_metrics(folder / "metrics.jsonl")
    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())
        measured.update(source="summary.json", stop_reason=summary["stop_reason"])
        measured.update({key: summary[key] for key in REFERENCE_KEYS})
    else:
        stop_reason = "time_limit" if finished.cut_by_time_limit else "error"
        measured.update(source="metrics.jsonl", stop_reason=stop_reason, **summary_from_metrics(rows, TARGET_LOSS))
        save_loss_figure(rows, folder / "loss.png")
    losses = [row["loss"] for row in rows]
    measured.update(first_logged_loss=losses[0], final_train_loss=losses[-1])
    problems = [f"loss {row['loss']} at step {row['step']}" for row in rows if not math.isfinite(row["loss"])]
    problems += sample_problems
    if not losses[-1] < losses[0]:
        problems.append(f"the logged loss did not fall: {losses[0]:.4f} -> {losses[-1]:.4f}")
    if finished.returncode != 0 and not finished.cut_by_time_limit:
        problems.append(f"train exited with status {finished.returncode}: {finished.last_line}")
    return measured, problems


# ---- the command line --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json and figures (empty)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (the dry run) (default: cuda)")
    parser.add_argument("--preset", default="gpt2", choices=sg.PRESETS, help="model of the ladder and reference run")
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="wall-clock budget of the whole check")
    parser.add_argument("--reference-minutes", type=float, default=4.0, help="time limit of the reference run")
    parser.add_argument(
        "--ladder-minutes", type=float, help="time limit of the ladder (default: what the budget leaves)"
    )
    parser.add_argument("--skip-unit", action="store_true", help="skip the unit checks")
    parser.add_argument("--skip-ladder", action="store_true", help="skip the optimization ladder")
    parser.add_argument("--skip-reference", action="store_true", help="skip the reference training run")
    parser.add_argument("--reference-max-steps", type=int, help="--max-steps of the reference run (cpu: 20)")
    parser.add_argument("--ladder-batch-size", type=int, help="--batch-size of the ladder (cuda: 16, cpu: 2)")
    parser.add_argument("--ladder-steps", type=int, help="timed steps per rung (cuda: 5, cpu: 2)")
    parser.add_argument("--ladder-warmup", type=int, help="untimed steps per rung (cuda: 2, cpu: 1)")
    parser.add_argument(
        "--ladder-compile", action=argparse.BooleanOptionalAction, help="torch.compile rungs (cuda: on, cpu: off)"
    )
    return parser.parse_args(argv)


def sizes_for(device: torch.device, args: argparse.Namespace) -> Sizes:
    """The device type's sizes, with the ones given on the command line."""
    names = ("reference_max_steps", "ladder_batch_size", "ladder_steps", "ladder_warmup", "ladder_compile")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return dataclasses.replace(SIZES[device.type], **given)


def resolve_device(requested: str) -> torch.device:
    """The device to check, with its index on CUDA (DistributedDataParallel wants one); ShakeGPTError if absent."""
    try:
        device = sg.get_device(requested)
    except RuntimeError as error:  # torch.device("nonsense")
        raise sg.ShakeGPTError(f"--device {requested}: {sg.first_line(error)}") from error
    if device.type not in SIZES:
        raise sg.ShakeGPTError(f"--device {requested}: this check runs on cuda or cpu, not {device.type}.")
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


def prepare_out(out: Path) -> None:
    """Create OUT; refuse one that holds files already, whose count the device tool limits."""
    if out.exists() and any(out.iterdir()):
        raise sg.ShakeGPTError(f"--out {out} is not empty: give a new folder.")
    out.mkdir(parents=True, exist_ok=True)


def run_section(report: Report, name: str, checks: list[tuple[str, Callable[[], Findings]]]) -> None:
    """Run a section's checks in order and record its time."""
    started = time.perf_counter()
    for check_name, check in checks:
        run_check(report, check_name, check)
    report.section(name, time.perf_counter() - started)


def skipped(reason: str) -> Callable[[], Findings]:
    """A check that only reports `reason` as its SKIP."""

    def check() -> Findings:
        raise SkipCheck(reason)

    return check


def time_limited(
    skip_flag: bool, flag_name: str, limit_s: float, check: Callable[[float], Findings]
) -> Callable[[], Findings]:
    """`check` with its time limit, or a SKIP when its flag says so or the budget leaves too little time."""
    if skip_flag:
        return skipped(flag_name)
    if limit_s < MIN_SUBPROCESS_S:
        return skipped(f"only {limit_s:.0f} s of the budget left for it")
    return lambda: check(limit_s)


def run_all(device: torch.device, args: argparse.Namespace, sizes: Sizes, report: Report, deadline: float) -> None:
    """The unit checks, then the reference run, then the ladder, within the budget."""
    if not args.skip_unit:
        run_section(report, "unit_checks", unit_checks(device, sizes))
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the loss checks cached ~15 GB, which the training subprocesses may need
    reference_s = min(60 * args.reference_minutes, deadline - time.monotonic() - WRAP_UP_S)
    reference = lambda limit_s: check_reference_run(args, sizes, args.out, limit_s)
    run_section(report, "reference_run", [
        ("reference_run", time_limited(args.skip_reference, "--skip-reference", reference_s, reference))
    ])  # fmt: skip
    ladder_s = deadline - time.monotonic() - WRAP_UP_S
    if args.ladder_minutes is not None:
        ladder_s = min(ladder_s, 60 * args.ladder_minutes)
    ladder = lambda limit_s: check_ladder(device, args, sizes, args.out, limit_s)
    run_section(report, "ladder", [("ladder", time_limited(args.skip_ladder, "--skip-ladder", ladder_s, ladder))])


def main(argv: list[str] | None = None) -> int:
    """Run the check; a device or folder that cannot be used is one line on stderr and exit status 1."""
    args = parse_args(argv)
    deadline = time.monotonic() + 60 * args.budget_minutes
    try:
        device = resolve_device(args.device)
        prepare_out(args.out)
    except sg.ShakeGPTError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    sizes = sizes_for(device, args)
    settings = {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, **dataclasses.asdict(sizes)}
    report = Report(args.out / "gpu_check.json", device, settings)
    print(f"{report.data['device']} | results in {report.path}", flush=True)
    run_all(device, args, sizes, report, deadline)
    report.finish()
    verdict = "PASSED" if report.passed else "FAILED"
    print(f"{verdict} in {report.data['total_s']:.0f} s: {report.path}", flush=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
