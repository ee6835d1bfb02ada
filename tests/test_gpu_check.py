"""tools/gpu_check.py: its CPU dry run passes every check and leaves files that agree with what it records; an
over-time subprocess is stopped with everything it started; a missing GPU is one line of error."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import shakegpt_utils as sg
from shakegpt.ladder import ladder_rungs

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.py"
UNIT_CHECKS = [
    "chunked_loss_fp32",
    "chunked_loss_bf16",
    "chunked_loss_fp16",
    "train_step_fp16",
    "train_step_bf16",
    "ddp_one_process",
    "generation",
    "checkpoint_resume",
    "to_device_no_sync",
]
ALL_CHECKS = [*UNIT_CHECKS, "reference_run", "ladder"]


@dataclass
class DryRun:
    result: subprocess.CompletedProcess
    out: Path
    report: dict

    def measured(self, check: str) -> dict:
        return self.report["checks"][check]["measured"]


def run_script(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> DryRun:
    """One dry run for every test below: corpora from SHAKEGPT_DATA_DIR, caches in a temporary folder."""
    if not os.environ.get("SHAKEGPT_DATA_DIR"):
        pytest.skip("set SHAKEGPT_DATA_DIR to a folder holding tinyshakespeare.txt")
    env = {
        **os.environ,
        "SHAKEGPT_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    result = run_script(["--device", "cpu", "--preset", "tiny", "--out", str(out)], env, timeout=300)
    report_path = out / "gpu_check.json"
    assert report_path.is_file(), result.stdout + result.stderr
    return DryRun(result, out, json.loads(report_path.read_text()))


def numbers(value: object) -> Iterator[float]:
    """Every number inside a JSON value (booleans are not numbers here)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield value


def test_dry_run_passes_every_check(dry_run: DryRun):
    assert dry_run.result.returncode == 0, dry_run.result.stdout + dry_run.result.stderr
    report = dry_run.report
    assert report["passed"] is True
    assert list(report["checks"]) == ALL_CHECKS
    for name, check in report["checks"].items():
        if name == "to_device_no_sync":
            assert check["status"] == "SKIP" and "CUDA only" in check["reason"]
        else:
            assert check["status"] == "PASS", f"{name}: {check['reason']}"
            assert check["reason"] is None
        # one console line per check, as it finished
        assert re.search(rf"^{check['status']}\s+{name}\s", dry_run.result.stdout, flags=re.M)
    assert set(report["sections"]) == {"unit_checks", "ladder", "reference_run"}
    assert report["device"] == sg.describe_device("cpu")
    assert report["versions"]["torch"] == torch.__version__
    assert report["settings"]["preset"] == "tiny" and report["settings"]["reference_max_steps"] == 20


def test_every_number_is_present_and_finite(dry_run: DryRun):
    report = dry_run.report
    assert all(math.isfinite(x) for x in numbers(report)), "a NaN or infinity was recorded"
    assert "nan" not in json.dumps(report).lower().replace("nanogpt", "")
    for dtype in ("fp32", "bf16", "fp16"):
        measured = dry_run.measured(f"chunked_loss_{dtype}")
        for path in ("full", "chunked"):
            for error in ("loss_error", "grad_h_error", "grad_w_error"):
                assert 0 <= measured[f"{path}_{error}"] < 0.01
        assert measured["loss_scale"] == (65536.0 if dtype == "fp16" else 1.0)
    for dtype in ("fp16", "bf16"):
        measured = dry_run.measured(f"train_step_{dtype}")
        for loss in ("chunked", "full"):
            assert len(measured[f"{loss}_losses"]) == measured["steps"] == 20
            assert measured[f"{loss}_last_loss"] < measured[f"{loss}_first_loss"] == measured[f"{loss}_losses"][0]
    ddp = dry_run.measured("ddp_one_process")
    assert ddp["backend"] == "gloo" and len(ddp["ddp_losses"]) == len(ddp["plain_losses"]) == 3
    assert ddp["max_difference"] <= 1e-4 and math.isfinite(ddp["ddp_val_loss"])
    assert dry_run.measured("generation") == {"new_tokens": 80, "greedy_mismatches": 0, "sampled_mismatches": 0}
    resume = dry_run.measured("checkpoint_resume")
    assert resume["continued_losses"] == resume["resumed_losses"] and resume["scaler_state_equal"] is True
    for check in ("ladder", "reference_run"):
        measured = dry_run.measured(check)
        assert measured["returncode"] == 0 and measured["cut_by_time_limit"] is False
        assert 0 < measured["wall_s"] < measured["time_limit_s"]


def test_reference_files_agree_with_the_report(dry_run: DryRun, gpu_check):
    folder = dry_run.out / "reference"
    summary = json.loads((folder / "summary.json").read_text())
    metrics = sg.read_metrics(folder / "metrics.jsonl")
    measured = dry_run.measured("reference_run")
    assert measured["source"] == "summary.json"
    for key in (*gpu_check.REFERENCE_KEYS, "stop_reason"):
        assert measured[key] == summary[key], key
    assert summary["steps"] == metrics[-1]["step"] == 20 and summary["stop_reason"] == "max_steps"
    assert summary["target_loss"] == 0.1 and summary["config"]["preset"] == "tiny"
    assert measured["final_train_loss"] == metrics[-1]["loss"] and measured["first_logged_loss"] == metrics[0]["loss"]
    for key in ("warmup_s", "mean_tok_per_s", "best_val_loss"):
        assert measured[key] > 0
    assert (folder / "loss.png").stat().st_size > 0
    assert "step    20/20" in (folder / "train.log").read_text()


def test_summary_rebuilt_from_metrics_matches_the_real_one(dry_run: DryRun, gpu_check):
    """What the report records for a run cut off before summary.json, checked against a run that wrote one."""
    folder = dry_run.out / "reference"
    summary = json.loads((folder / "summary.json").read_text())
    rebuilt = gpu_check.summary_from_metrics(sg.read_metrics(folder / "metrics.jsonl"), summary["target_loss"])
    assert set(rebuilt) == set(gpu_check.REFERENCE_KEYS)
    for key, value in rebuilt.items():
        expected = summary[key]
        assert value == (expected if expected is None else pytest.approx(expected, rel=1e-6)), key


def test_rebuilt_summary_finds_the_target(dry_run: DryRun, gpu_check):
    rows = sg.read_metrics(dry_run.out / "reference" / "metrics.jsonl")
    target = (rows[0]["loss"] + rows[-1]["loss"]) / 2  # reached at the second logged step, not the first
    rebuilt = gpu_check.summary_from_metrics(rows, target)
    assert rebuilt["target_step"] == rows[-1]["step"]
    assert rebuilt["time_to_target_s"] == pytest.approx(rows[-1]["elapsed_s"] - rebuilt["warmup_s"])


def test_ladder_result_has_every_rung(dry_run: DryRun):
    folder = dry_run.out / "ladder"
    result = json.loads((folder / "bench_ladder_cpu.json").read_text())
    names = [row["name"] for row in result["rows"]]
    assert names == [rung.name for rung in ladder_rungs(2, 2)]
    assert result["settings"]["batch_size"] == 2 and result["settings"]["compile"] is False
    assert list(dry_run.measured("ladder")["rungs"]) == names
    measured_rows = [row for row in result["rows"] if not row["skipped"]]
    assert measured_rows and all(row["tokens_per_s"] > 0 for row in measured_rows)
    assert not (folder / "bench_ladder_cpu.png").exists() and not (folder / "bench_ladder_cpu.svg").exists()


def test_samples_of_both_checkpoints_with_memorisation(dry_run: DryRun, gpu_check):
    text = (dry_run.out / "reference" / "samples.txt").read_text()
    sections = text.split("===== ")[1:]
    assert [section.split(" =====")[0] for section in sections] == ["last.pt", "best.pt"]
    for section in sections:
        assert [f"--- sample {i} ---" in section for i in range(1, 7)] == [True] * 5 + [False]
        assert section.count(f"\n{gpu_check.SAMPLE_PROMPT}") == 5
        assert section.count("memorisation: longest span copied from the training text") == 5


def test_output_fits_what_the_device_tool_brings_back(dry_run: DryRun):
    files = [path.relative_to(dry_run.out) for path in dry_run.out.rglob("*") if path.is_file()]
    assert len(files) <= 8, files
    assert all(len(path.parts) <= 3 for path in files), files  # OUT/folder/file at most


def test_an_exception_fails_its_check_only(tmp_path: Path, gpu_check):
    report = gpu_check.Report(tmp_path / "gpu_check.json", torch.device("cpu"), {})
    gpu_check.run_check(report, "raises", lambda: 1 / 0)
    gpu_check.run_check(report, "not_a_number", lambda: ({"loss": float("nan")}, ["loss is nan"]))
    gpu_check.run_check(report, "fine", lambda: ({"loss": 1.0}, []))
    checks = json.loads((tmp_path / "gpu_check.json").read_text())["checks"]  # valid JSON, NaN included
    assert (checks["raises"]["status"], checks["raises"]["reason"]) == ("FAIL", "ZeroDivisionError: division by zero")
    assert "Traceback" in checks["raises"]["measured"]["traceback"]
    assert checks["not_a_number"] == {"status": "FAIL", "seconds": checks["not_a_number"]["seconds"],
                                      "reason": "loss is nan", "measured": {"loss": "nan"}}  # fmt: skip
    assert checks["fine"]["status"] == "PASS" and report.passed is False


def test_over_time_subprocess_is_stopped_with_its_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpu_check):
    """A command that ignores SIGINT is killed at its limit, and so is the process it started."""
    monkeypatch.setattr(gpu_check, "GRACE_S", 1.0)
    child = (
        "import signal, subprocess, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "print(subprocess.Popen(['sleep', '60']).pid, flush=True); time.sleep(60)"
    )
    started = time.perf_counter()
    finished = gpu_check.run_limited([sys.executable, "-c", child], tmp_path / "log", 3.0, dict(os.environ))
    assert finished.cut_by_time_limit and time.perf_counter() - started < 6
    grandchild = Path(f"/proc/{finished.last_line}/status")
    deadline = time.monotonic() + 5
    while grandchild.exists() and "zombie" not in grandchild.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not grandchild.exists() or "zombie" in grandchild.read_text()


def test_subprocess_within_its_limit_is_left_alone(tmp_path: Path, gpu_check):
    finished = gpu_check.run_limited([sys.executable, "-c", "print('done')"], tmp_path / "log", 30.0, dict(os.environ))
    assert (finished.returncode, finished.cut_by_time_limit, finished.last_line) == (0, False, "done")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_missing_cuda_is_one_line_of_error(tmp_path: Path):
    result = run_script(["--out", str(tmp_path / "out")], dict(os.environ), timeout=120)  # --device cuda by default
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --device cuda: no CUDA GPU is available here."
    assert not (tmp_path / "out").exists()


def test_non_empty_out_is_refused(tmp_path: Path):
    (tmp_path / "old.json").write_text("{}")
    result = run_script(["--device", "cpu", "--out", str(tmp_path)], dict(os.environ), timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: --out {tmp_path} is not empty: give a new folder."
