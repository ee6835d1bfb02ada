#!/usr/bin/env python3
"""A one-shot check of ShakeGPT on a GPU machine without internet, in parts of at most 8 minutes on an H100:

    python3 tools/gpu_check.py --out OUT [--part tests,reference,ladder]  # the default parts (tools/gpu_check.sh)
    python3 tools/gpu_check.py --out OUT --part notebooks                 # then notebooks 05-08, then the t4 part
    python3 tools/gpu_check.py --out OUT --device cpu --preset tiny ...   # the dry run tests/test_gpu_check.py makes

  tests      `pytest -m device --device DEVICE` (--pytest-args adds arguments): counts, failures, skips;
  reference  `python -m shakegpt_utils train --target-loss 0.1` under a time limit, then five samples from "Hello
             world: tell to" from its last and best checkpoints (OUT/reference/);
  ladder     `python -m shakegpt_utils bench ladder` (OUT/ladder/: its JSON, from which its figure is drawn);
  notebooks  --notebooks executed top to bottom (smoke mode on a CPU only), saved to OUT/notebooks/;
  t4         the same as a Colab T4 would see them: 15 GB, compute capability 7.5 (so fp16 with a GradScaler, no
             TF32), SDPA without flash and cuDNN kernels, training cut to --t4-max-steps; CUDA only, nothing saved.
A notebook's check records its time, the failing cell's error, its peak GPU memory (the allocator's high-water mark,
or a ladder rung's own where higher: the ladder resets the mark for each rung) and the ladder's skipped rungs.
Each check gets what the budget leaves (the tests and the reference run have their own caps). OUT/gpu_check.json is
rewritten after each check, so a run cut short keeps what it measured. Exit status 0 when no check failed, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import matplotlib.pyplot as plt
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a copy of the checkout, without installing the package

import shakegpt_utils as sg  # noqa: E402
from shakegpt.hardware import versions  # noqa: E402

NOTEBOOK_DIR = ROOT / "notebooks"
PARTS = ("tests", "reference", "ladder", "notebooks", "t4", "sweep", "speed")
# Runs of the reference configuration with one lever changed (issue 23), each to the target loss, in OUT/sweep/NAME;
# "complete" trains on the seed's own corpus, Shakespeare's complete works, and writes its samples.
SWEEP = {
    "batch32": ["--batch-size", "32"],
    "wsd": ["--schedule", "wsd", "--max-steps", "1500"],
    "muon": ["--optimizer", "muon"],
    "complete": ["--corpus", "complete"],
}
NOTEBOOKS = ("05_optimizations", "06_training", "07_evaluation", "08_sampling")
TARGET_LOSS = 0.1  # the reference run's --target-loss
SAMPLE_PROMPT = "Hello world: tell to"  # the reference result's five samples start from it
SAMPLES_LIMIT_S = 90.0  # for loading a checkpoint and writing five samples
GRACE_S = 10.0  # an over-time subprocess gets SIGINT this long before its limit, SIGKILL at the limit
WRAP_UP_S = 15.0  # kept back from the budget for copying results and writing the report
MIN_SUBPROCESS_S = 30.0  # below this a subprocess could not even import torch and start; it is skipped instead
MEASURED = "gpu_check: "  # starts the line MEASURE_CELL prints
T4_CELL = """# tools/gpu_check.py: this GPU as a Colab T4 (15 GB, compute capability 7.5) would show itself
import torch

torch.cuda.set_per_process_memory_fraction(min(1.0, 15e9 / torch.cuda.get_device_properties(0).total_memory))
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.enable_flash_sdp(False)  # a T4 runs SDPA's memory-efficient or math kernels only
torch.backends.cuda.enable_cudnn_sdp(False)
torch.cuda.get_device_capability = lambda device=None: (7, 5)  # the package then picks fp16 with a GradScaler"""
T4_STEPS_CELL = """if "SETTINGS" in globals():  # tools/gpu_check.py: fewer training steps, the same model and batch
    SETTINGS = {{**SETTINGS, "max_steps": {steps}}}"""
MEASURE_CELL = f"""# tools/gpu_check.py: this run's peak GPU memory (MiB) and the ladder's skipped rungs
import json, torch
_rows = globals()["ladder"].result()["rows"] if hasattr(globals().get("ladder"), "result") else []
_gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
_peaks = [torch.cuda.max_memory_allocated() / 2**20] + [r.get("peak_memory_mb") or 0 for r in _rows if not r["skipped"]]
print("{MEASURED}" + json.dumps({{
    "peak_allocated_mib": max(_peaks) if _gpu else None,
    "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if _gpu else None,
    "skipped_rungs": {{r["name"]: r["reason"] for r in _rows if r["skipped"]}},
}}))"""

Findings = tuple[dict, list[str]]  # what a check measured, and what it found wrong (nothing: PASS)


class SkipCheck(Exception):
    """Raised by a check that cannot run here; the message says why."""


# The reference run's and the ladder's sizes by device type (the options of the same names change them).
SIZES = {
    "cuda": dict(reference_max_steps=None, ladder_batch_size=16, ladder_steps=5, ladder_warmup=2, ladder_compile=True),
    "cpu": dict(reference_max_steps=20, ladder_batch_size=2, ladder_steps=2, ladder_warmup=1, ladder_compile=False),
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


class Report:
    """OUT/gpu_check.json: device, versions, every check's result and the parts' timings."""

    def __init__(self, path: Path, device: torch.device, settings: dict):
        self.path, self.started = path, time.perf_counter()
        self.data = {
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "device": sg.describe_device(device),
            "versions": versions(),
            "settings": settings,
            "checks": {},
            "parts": {},
            "passed": True,
        }
        self.write()

    def add(self, name: str, status: str, seconds: float, measured: dict, reason: str | None) -> None:
        """Record one check's result, print its line and rewrite the file."""
        self.data["checks"][name] = {"status": status, "seconds": seconds, "reason": reason, "measured": measured}
        self.data["passed"] = all(check["status"] != "FAIL" for check in self.data["checks"].values())
        print(f"{status:<4} {name:<30} {seconds:6.1f} s  {reason or measured.get('last_line', '')}", flush=True)
        self.write()

    def part(self, name: str, seconds: float) -> None:
        self.data["parts"][name] = {"seconds": seconds}
        self.write()

    def write(self) -> None:
        self.data["total_s"] = time.perf_counter() - self.started
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


# ---- subprocesses ------------------------------------------------------------------------------------------------


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


def stop_group(process: subprocess.Popen, grace_s: float) -> None:
    """Stop a subprocess: SIGINT to its process group, on which the CLI ends cleanly, then SIGKILL after `grace_s`
    (in any case, to whatever is left of it, such as compile workers, which would otherwise hold the GPU)."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s if sig == signal.SIGINT else None)


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


def not_finished(finished: Finished, missing: str, log: str) -> str:
    """Why a subprocess left no result, naming its log."""
    why = "cut by the time limit" if finished.cut_by_time_limit else f"exit status {finished.returncode}"
    return f"no {missing} ({why}): {finished.last_line} (see {log})"


# ---- the tests ---------------------------------------------------------------------------------------------------


def check_tests(args: argparse.Namespace, limit_s: float) -> Findings:
    """`pytest -m device` on the device, its JUnit report in a temporary folder: no test fails. Unless all is well,
    the last lines of its output are kept in the report too."""
    with tempfile.TemporaryDirectory(prefix="shakegpt-tests-") as scratch:
        junit, log = Path(scratch) / "junit.xml", Path(scratch) / "pytest.log"
        command = [
            sys.executable, "-m", "pytest", "-m", "device", "--device", args.device, "-q", "-p", "no:cacheprovider",
            "--continue-on-collection-errors", f"--junitxml={junit}", *args.pytest_args,
        ]  # fmt: skip
        finished = run_limited(command, log, limit_s, subprocess_env())
        measured: dict = {**dataclasses.asdict(finished), **(junit_results(junit) if junit.is_file() else {})}
        tail = log.read_text(errors="replace").splitlines()[-40:]
    if "tests" not in measured:
        problems = [not_finished(finished, "test report", "log_tail")]
    else:
        problems = [f"{name}: {message}" for name, message in measured["failures"].items()]
        if not measured["tests"]:
            problems.append(f"no test was selected: {finished.last_line}")
        elif finished.returncode != 0 and not problems:
            problems.append(f"pytest ended with status {finished.returncode}: {finished.last_line}")
    if problems:
        measured["log_tail"] = tail
    return measured, problems


def junit_results(path: Path) -> dict:
    """A JUnit report's counts, with the first line of each failure's message and each skip's reason."""
    failures, skips, passed = {}, {}, 0
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = "::".join(part for part in (case.get("classname"), case.get("name")) if part)
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        message = "" if outcome is None else (outcome.get("message") or outcome.text or "").strip()
        if outcome is None:
            passed += 1
        elif outcome.tag == "skipped":
            skips[name] = message.splitlines()[0] if message else ""
        else:
            failures[name] = message.splitlines()[0] if message else outcome.tag
    counts = {"tests": passed + len(failures) + len(skips), "passed": passed, "failed": len(failures)}
    return {**counts, "skipped": len(skips), "failures": failures, "skips": skips}


# ---- the reference run and the ladder ----------------------------------------------------------------------------


def check_ladder(device: torch.device, args: argparse.Namespace, limit_s: float) -> Findings:
    """`bench ladder` on the device: every rung measured (on a CPU rungs may be skipped), every loss finite."""
    folder = args.out / "ladder"
    folder.mkdir(parents=True, exist_ok=True)
    result_path = folder / f"bench_ladder_{device.type}.json"
    command = [
        sys.executable, "-m", "shakegpt_utils", "bench", "ladder", "--preset", args.preset,
        "--batch-size", str(args.ladder_batch_size), "--steps", str(args.ladder_steps),
        "--warmup", str(args.ladder_warmup), "--device", args.device, "--out", str(result_path),
        *([] if args.ladder_compile else ["--no-compile"]),
    ]  # fmt: skip
    finished = run_limited(command, folder / "bench.log", limit_s, subprocess_env(SHAKEGPT_FIGURES_DIR=str(folder)))
    for suffix in (".png", ".svg"):  # the device tool brings back 8 files: the figure is drawn again from the JSON
        result_path.with_suffix(suffix).unlink(missing_ok=True)
    measured: dict = dataclasses.asdict(finished)
    if not result_path.is_file():
        return measured, [not_finished(finished, "ladder result", "ladder/bench.log")]
    rows = json.loads(result_path.read_text())["rows"]
    measured["rungs"] = {row["name"]: ladder_row_summary(row) for row in rows}
    problems = [
        f"{row['name']}: loss {row['loss']}" for row in rows if "loss" in row and not math.isfinite(row["loss"])
    ]
    if device.type == "cuda":
        problems += [f"{row['name']} skipped: {row['reason']}" for row in rows if row["skipped"]]
    return measured, problems


def check_sweep_run(args: argparse.Namespace, limit_s: float, name: str) -> Findings:
    """One run of the sweep: the reference run with SWEEP[name]'s flags, packed into OUT/sweep/NAME.json (what the
    report measured, the metrics, the log's last lines) and, for the complete works, OUT/sweep/NAME_samples.txt:
    few files come back from the device."""
    out = args.out / "sweep"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"shakegpt-sweep-{name}-") as scratch:
        folder = Path(scratch)
        measured, problems = check_reference_run(args, limit_s, folder, SWEEP[name], samples=name == "complete")
        metrics = sg.read_metrics(folder / "metrics.jsonl") if (folder / "metrics.jsonl").is_file() else []
        log_tail = (folder / "train.log").read_text(errors="replace").splitlines()[-40:]
        packed = {"flags": SWEEP[name], "measured": measured, "metrics": metrics, "log_tail": log_tail}
        (out / f"{name}.json").write_text(json.dumps(json_safe(packed), indent=1) + "\n")
        if (folder / "samples.txt").is_file():
            shutil.copy2(folder / "samples.txt", out / f"{name}_samples.txt")
    return measured, problems


def check_bench(which: str, device: torch.device, args: argparse.Namespace, limit_s: float) -> Findings:
    """`bench WHICH` (profile: where a step's time goes; generate: the decoders, the compiled one included on a GPU)
    with the reference run's model, its JSON in OUT/speed and its numbers in the report."""
    folder = args.out / "speed"
    folder.mkdir(parents=True, exist_ok=True)
    result_path = folder / f"bench_{which}_{device.type}.json"
    command = [
        sys.executable, "-m", "shakegpt_utils", "bench", which, "--preset", args.preset, "--device", args.device,
        "--out", str(result_path), *([] if device.type == "cuda" else ["--steps", "1", "--new-tokens", "8"]),
    ]  # fmt: skip
    finished = run_limited(command, folder / f"{which}.log", limit_s, subprocess_env(SHAKEGPT_FIGURES_DIR=str(folder)))
    for suffix in (".png", ".svg"):  # few files come back from the device: the figure is drawn again from the JSON
        result_path.with_suffix(suffix).unlink(missing_ok=True)
    measured: dict = dataclasses.asdict(finished)
    if not result_path.is_file():
        return measured, [not_finished(finished, f"bench {which} result", f"speed/{which}.log")]
    (folder / f"{which}.log").unlink()  # its numbers are in the result: one file fewer to bring back
    result = json.loads(result_path.read_text())
    kept = ("shares", "ms_per_step", "gpu_idle_share", "ratios")
    measured.update({key: result[key] for key in kept if key in result})
    return measured, []


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


def write_samples(args: argparse.Namespace, run_dir: Path, samples_path: Path) -> list[str]:
    """The reference result's five samples from SAMPLE_PROMPT, with their memorisation numbers, from the run's last
    and best checkpoints (those it wrote) into `samples_path`, one section each; returns what went wrong."""
    problems = []
    with samples_path.open("w") as samples:
        for name in ("last", "best"):
            if not (run_dir / f"{name}.pt").is_file():
                continue
            command = [
                sys.executable, "-m", "shakegpt_utils", "sample", "--ckpt", str(run_dir / f"{name}.pt"),
                "--prompt", SAMPLE_PROMPT, "--num-samples", "5", "--seed", "1337", "--device", args.device,
                "--memorisation",
            ]  # fmt: skip
            log_path = run_dir / f"samples_{name}.log"
            finished = run_limited(command, log_path, SAMPLES_LIMIT_S, subprocess_env())
            samples.write(f"===== {name}.pt =====\n{log_path.read_text(errors='replace')}\n")
            if finished.returncode != 0:
                problems.append(f"sampling {name}.pt ended with status {finished.returncode}: {finished.last_line}")
    return problems


def check_reference_run(
    args: argparse.Namespace, limit_s: float, folder: Path, changes: list[str] = (), samples: bool = True
) -> Findings:
    """The reference training run (with `changes`, its flags for a sweep) under a wall-clock limit, writing no
    checkpoint and no sample until the end, its checkpoints (1.5 GB each for GPT-2) in a temporary folder;
    summary.json and metrics.jsonl are copied to `folder`, loss.png too, with samples.txt (five samples from each
    checkpoint) unless `samples` is off. Every logged loss must be finite and the last below the first; a run cut by
    the limit is no failure (its summary is rebuilt from the metrics)."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shakegpt-reference-") as scratch:
        command = [
            sys.executable, "-m", "shakegpt_utils", "train", "--preset", args.preset, "--target-loss",
            str(TARGET_LOSS), "--out", scratch, "--no-progress", "--device", args.device, "--ckpt-interval", "0",
            "--sample-interval", "0", *changes,
        ]  # fmt: skip
        if args.reference_max_steps is not None:
            command += ["--max-steps", str(args.reference_max_steps)]
        finished = run_limited(command, folder / "train.log", limit_s, subprocess_env())
        for name in ("summary.json", "metrics.jsonl", "loss.png"):
            if (Path(scratch) / name).is_file():
                shutil.copy2(Path(scratch) / name, folder / name)
        sample_problems = write_samples(args, Path(scratch), folder / "samples.txt") if samples else []
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
        figure = sg.plot_loss_curves(rows, TARGET_LOSS)  # a run cut off before it drew its own
        figure.savefig(folder / "loss.png", dpi=150, bbox_inches="tight")
        plt.close(figure)
    losses = [row["loss"] for row in rows]
    measured.update(first_logged_loss=losses[0], final_train_loss=losses[-1])
    problems = [f"loss {row['loss']} at step {row['step']}" for row in rows if not math.isfinite(row["loss"])]
    problems += sample_problems
    if not losses[-1] < losses[0]:
        problems.append(f"the logged loss did not fall: {losses[0]:.4f} -> {losses[-1]:.4f}")
    if finished.returncode != 0 and not finished.cut_by_time_limit:
        problems.append(f"train exited with status {finished.returncode}: {finished.last_line}")
    return measured, problems


# ---- the notebooks -----------------------------------------------------------------------------------------------


def check_notebook(name: str, device: torch.device, args: argparse.Namespace, limit_s: float, t4: bool) -> Findings:
    """Notebook `name` executed top to bottom in its folder within `limit_s` (as a T4 would see it with `t4`), with
    MEASURE_CELL appended and read back; the executed copy, without that cell, is saved to OUT/notebooks unless `t4`.
    On a CPU the notebook runs in smoke mode; figures always go to a temporary folder."""
    if t4 and device.type != "cuda":
        raise SkipCheck(f"a T4 is emulated on a CUDA GPU only: {device.type} has no memory share or kernels to limit")
    import nbclient  # the notebook parts only: on the GPU these come from the prepared wheels
    import nbformat

    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    if t4:
        as_on_a_t4(nb, args.t4_max_steps)
    nb.cells.append(nbformat.v4.new_code_cell(MEASURE_CELL))
    deadline, running = time.monotonic() + limit_s, {}
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", shutdown_kernel="immediate", resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())), on_cell_start=running.update,
    )  # fmt: skip
    problems = []
    with tempfile.TemporaryDirectory(prefix="shakegpt-figures-") as figures:
        env = subprocess_env(SHAKEGPT_FIGURES_DIR=figures, SHAKEGPT_SMOKE="" if device.type == "cuda" else "1")
        try:
            client.execute(env=env)
        except (nbclient.exceptions.CellExecutionError, TimeoutError, nbclient.exceptions.DeadKernelError) as error:
            message = f"{error.ename}: {error.evalue}" if hasattr(error, "ename") else str(error)
            problems.append(f"cell {running.get('cell', {}).get('id')}: {sg.first_line(message)}")
    printed = "".join(output.get("text", "") for output in nb.cells.pop().get("outputs", []))
    measured = {"peak_allocated_mib": None, "peak_reserved_mib": None, "skipped_rungs": None}
    measured.update(json.loads(printed.split(MEASURED, 1)[1]) if MEASURED in printed else {})
    if not t4:
        (args.out / "notebooks").mkdir(exist_ok=True)
        nbformat.write(nb, args.out / "notebooks" / f"{name}.ipynb")
    return measured, problems


def as_on_a_t4(nb: dict, max_steps: int) -> None:
    """Insert T4_CELL after the notebook's first code cell (the Colab set-up), so the package sees the T4 from its
    first use, and T4_STEPS_CELL after the cell tagged parameters."""
    from nbformat.v4 import new_code_cell

    first_code = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
    nb.cells.insert(first_code + 1, new_code_cell(T4_CELL))
    parameters = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    nb.cells.insert(parameters + 1, new_code_cell(T4_STEPS_CELL.format(steps=max_steps)))


# ---- the command line --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--out", required=True, type=Path, help="folder for gpu_check.json and the parts' files (new or empty)")
    add("--device", default="cuda", help="cuda, cuda:N or cpu (the dry run) (default: cuda)")
    add("--part", default="tests,reference,ladder", help=f"comma-separated, of {','.join(PARTS)}")
    add("--preset", default="gpt2", choices=sg.PRESETS, help="model of the ladder and reference run")
    add("--budget-minutes", type=float, default=8.0, help="wall-clock budget of the whole check")
    add("--tests-minutes", type=float, default=2.0, help="time limit of the tests")
    add("--reference-minutes", type=float, default=4.0, help="time limit of the reference run")
    add("--ladder-minutes", type=float, default=math.inf, help="time limit of the ladder (default: the budget's)")
    add("--pytest-args", type=shlex.split, default=[], help="more pytest arguments for the tests, e.g. '-k loss'")
    add("--notebooks", default=",".join(NOTEBOOKS), help=f"comma-separated, of {','.join(NOTEBOOKS)}")
    add("--sweep", default=",".join(SWEEP), help=f"the sweep part's runs, comma-separated, of {','.join(SWEEP)}")
    add("--speed-minutes", type=float, default=2.0, help="time limit of each benchmark of the speed part")
    add("--t4-max-steps", type=int, default=200, help="max_steps of notebook 06's training run in the t4 part")
    add("--reference-max-steps", type=int, help="--max-steps of the reference run (cpu: 20)")
    add("--ladder-batch-size", type=int, help="--batch-size of the ladder (cuda: 16, cpu: 2)")
    add("--ladder-steps", type=int, help="timed steps per rung (cuda: 5, cpu: 2)")
    add("--ladder-warmup", type=int, help="untimed steps per rung (cuda: 2, cpu: 1)")
    add("--ladder-compile", action=argparse.BooleanOptionalAction, help="torch.compile rungs (cuda: on, cpu: off)")
    args = parser.parse_args(argv)
    for option, allowed in (("part", PARTS), ("notebooks", NOTEBOOKS), ("sweep", SWEEP)):
        chosen = getattr(args, option).split(",")
        if not set(chosen) <= set(allowed):
            parser.error(
                f"--{option} takes a comma-separated list of {', '.join(allowed)}, not {getattr(args, option)}"
            )
        setattr(args, option, [item for item in allowed if item in chosen])
    return args


def resolve_device(requested: str) -> torch.device:
    """The device to check; ShakeGPTError when it is absent or not one this check runs on."""
    try:
        device = sg.get_device(requested)
    except RuntimeError as error:  # torch.device("nonsense")
        raise sg.ShakeGPTError(f"--device {requested}: {sg.first_line(error)}") from error
    if device.type not in SIZES:
        raise sg.ShakeGPTError(f"--device {requested}: this check runs on cuda or cpu, not {device.type}.")
    return device


def prepare_out(out: Path) -> None:
    """Create OUT; refuse one that holds files already, whose count the device tool limits."""
    if out.exists() and any(out.iterdir()):
        raise sg.ShakeGPTError(f"--out {out} is not empty: give a new folder.")
    out.mkdir(parents=True, exist_ok=True)


def part_checks(part: str, device: torch.device, args: argparse.Namespace) -> list[tuple]:
    """The checks of one part: (name, the cap on its time limit in seconds, the check given its time limit)."""
    if part == "tests":
        return [("tests", 60 * args.tests_minutes, lambda limit_s: check_tests(args, limit_s))]
    if part == "reference":
        reference = lambda limit_s: check_reference_run(args, limit_s, args.out / "reference")  # noqa: E731
        return [("reference_run", 60 * args.reference_minutes, reference)]
    if part == "ladder":
        return [("ladder", 60 * args.ladder_minutes, lambda limit_s: check_ladder(device, args, limit_s))]
    if part == "sweep":
        run = lambda name: lambda limit_s: check_sweep_run(args, limit_s, name)  # noqa: E731
        return [(f"sweep/{name}", 60 * args.reference_minutes, run(name)) for name in args.sweep]
    if part == "speed":
        bench = lambda which: lambda limit_s: check_bench(which, device, args, limit_s)  # noqa: E731
        return [(f"speed/{which}", 60 * args.speed_minutes, bench(which)) for which in ("profile", "generate")]
    check = lambda name: lambda limit_s: check_notebook(name, device, args, limit_s, t4=part == "t4")
    return [(f"{part}/{name}", math.inf, check(name)) for name in args.notebooks]


def skip(reason: str) -> Findings:
    raise SkipCheck(reason)


def main(argv: list[str] | None = None) -> int:
    """Run the parts asked for; a device or folder that cannot be used is one line on stderr and exit status 1."""
    args = parse_args(argv)
    deadline = time.monotonic() + 60 * args.budget_minutes
    try:
        device = resolve_device(args.device)
        prepare_out(args.out)
    except sg.ShakeGPTError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for option, value in SIZES[device.type].items():
        setattr(args, option, value if getattr(args, option) is None else getattr(args, option))
    report = Report(args.out / "gpu_check.json", device, {k: json_value(v) for k, v in vars(args).items()})
    print(f"{report.data['device']} | results in {report.path}", flush=True)
    for part in args.part:
        started = time.perf_counter()
        for name, cap_s, check in part_checks(part, device, args):
            limit_s = min(cap_s, deadline - time.monotonic() - WRAP_UP_S)  # what the budget leaves, within the cap
            if limit_s < MIN_SUBPROCESS_S:
                run_check(report, name, lambda limit_s=limit_s: skip(f"only {limit_s:.0f} s of the budget left for it"))
            else:
                run_check(report, name, lambda check=check, limit_s=limit_s: check(limit_s))
        report.part(part, time.perf_counter() - started)
    print(f"{'PASSED' if report.data['passed'] else 'FAILED'} in {report.data['total_s']:.0f} s: {report.path}")
    return 0 if report.data["passed"] else 1


def json_value(value: object) -> object:
    """A setting as the report stores it: paths as strings, an unlimited time as None."""
    return str(value) if isinstance(value, Path) else None if value == math.inf else value


if __name__ == "__main__":
    raise SystemExit(main())
