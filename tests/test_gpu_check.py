"""tools/gpu_check.py: its CPU dry runs pass every part a CPU can run (the device tests through a -k filter, the
reference run, the ladder, notebook 05 in smoke mode, a sweep run stopped by its time limit, the speed benchmarks; the
T4 part says why it cannot) and leave files that agree with what they record; failing tests are reported with their
cause; bad options are one line of error. How a failing or over-time notebook is reported, and where the T4 cells go:
tests/test_notebook_passes.py."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import nbformat
import pytest
import torch

import shakegpt_utils as sg

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.py"
DEVICE_TESTS = ["tests/test_device.py", "-k", "chunked_loss and fp32 or to_device"]  # one passes, one is CUDA only


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


def dry_run(tmp_path_factory: pytest.TempPathFactory, args: list[str]) -> DryRun:
    """The script on the CPU with the tiny preset: corpora from SHAKEGPT_DATA_DIR, caches in a temporary folder."""
    if not os.environ.get("SHAKEGPT_DATA_DIR"):
        pytest.skip("set SHAKEGPT_DATA_DIR to a folder holding tinyshakespeare.txt")
    env = {
        **os.environ,
        "SHAKEGPT_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    result = run_script(["--device", "cpu", "--preset", "tiny", "--out", str(out), *args], env, timeout=300)
    report_path = out / "gpu_check.json"
    assert report_path.is_file(), result.stdout + result.stderr
    return DryRun(result, out, json.loads(report_path.read_text()))


@pytest.fixture(scope="module")
def default_parts(tmp_path_factory) -> DryRun:
    """The default parts (tests, reference, ladder), the tests cut down to two by a -k filter."""
    return dry_run(tmp_path_factory, ["--pytest-args", shlex.join(DEVICE_TESTS)])


@pytest.fixture(scope="module")
def notebook_parts(tmp_path_factory) -> DryRun:
    """The notebook parts on notebook 05 (10 s in smoke mode), which leave the committed figures as they were."""
    before = {path: path.stat().st_mtime_ns for path in (ROOT / "figures").glob("05_*")}
    run = dry_run(tmp_path_factory, ["--part", "notebooks,t4", "--notebooks", "05_optimizations"])
    assert {path: path.stat().st_mtime_ns for path in (ROOT / "figures").glob("05_*")} == before
    return run


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


def test_default_parts_pass_every_check(default_parts: DryRun):
    assert default_parts.result.returncode == 0, default_parts.result.stdout + default_parts.result.stderr
    report = default_parts.report
    assert report["passed"] is True
    assert list(report["checks"]) == ["tests", "reference_run", "ladder"]
    for name, check in report["checks"].items():
        assert (check["status"], check["reason"]) == ("PASS", None), name
        # one console line per check, as it finished
        assert re.search(rf"^PASS\s+{name}\s", default_parts.result.stdout, flags=re.M)
    assert list(report["parts"]) == ["tests", "reference", "ladder"]
    assert report["device"] == sg.describe_device("cpu")
    assert report["versions"]["torch"] == torch.__version__
    assert report["settings"]["preset"] == "tiny" and report["settings"]["train_args"] == ["--max-steps", "20"]
    assert report["settings"]["pytest_args"] == DEVICE_TESTS


def test_every_number_is_present_and_finite(default_parts: DryRun):
    report = default_parts.report
    assert all(math.isfinite(x) for x in numbers(report)), "a NaN or infinity was recorded"
    assert "nan" not in json.dumps(report).lower().replace("nanogpt", "")
    for check in ("tests", "ladder", "reference_run"):
        measured = default_parts.measured(check)
        assert measured["returncode"] == 0 and measured["cut_by_time_limit"] is False
        assert 0 < measured["wall_s"] < measured["time_limit_s"]
    assert default_parts.measured("tests")["time_limit_s"] == 120


def test_device_tests_are_counted_and_their_junit_report_names_each_skip_and_its_reason(default_parts: DryRun):
    measured = default_parts.measured("tests")
    counts = {key: measured[key] for key in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": 2, "failures": 0, "errors": 0, "skipped": 1}
    assert re.fullmatch(r"1 passed, 1 skipped, \d+ deselected in [\d.]+s", measured["last_line"])
    assert "log_tail" not in measured  # kept only when something went wrong
    cases = ElementTree.parse(default_parts.out / "tests" / "junit.xml").getroot().iter("testcase")
    skips = {
        f"{case.get('classname')}::{case.get('name')}": skip.get("message")
        for case in cases
        for skip in case.iter("skipped")
    }
    assert skips == {
        "tests.test_device::test_to_device_returns_without_waiting_for_the_gpu": "CUDA only: cpu runs every "
        "operation at once, there is no queue to wait for"
    }


def test_reference_files_agree_with_the_report(default_parts: DryRun, gpu_check):
    folder = default_parts.out / "reference"
    summary = json.loads((folder / "summary.json").read_text())
    metrics = sg.read_metrics(folder / "metrics.jsonl")
    measured = default_parts.measured("reference_run")
    for key in (*gpu_check.REFERENCE_KEYS, "stop_reason"):
        assert measured[key] == summary[key], key
    assert summary["steps"] == metrics[-1]["step"] == 20 and summary["stop_reason"] == "max_steps"
    assert summary["target_loss"] == 0.1 and summary["config"]["preset"] == "tiny"
    assert measured["final_train_loss"] == metrics[-1]["loss"] and measured["first_logged_loss"] == metrics[0]["loss"]
    for key in ("warmup_s", "mean_tok_per_s", "best_val_loss"):
        assert measured[key] > 0
    assert (folder / "loss.png").stat().st_size > 0
    assert "step    20/20" in (folder / "train.log").read_text()


def test_ladder_result_has_every_rung(default_parts: DryRun):
    folder = default_parts.out / "ladder"
    result = json.loads((folder / "bench_ladder_cpu.json").read_text())
    names = [row["name"] for row in result["rows"]]
    assert names == [rung.name for rung in sg.Ladder(sg.BenchSettings(preset="tiny", device="cpu")).rungs]
    assert result["settings"]["batch_size"] == 2 and result["settings"]["compile"] is False
    assert list(default_parts.measured("ladder")["rungs"]) == names
    measured_rows = [row for row in result["rows"] if not row["skipped"]]
    assert measured_rows and all(row["tokens_per_s"] > 0 for row in measured_rows)
    assert sorted(path.name for path in folder.iterdir()) == ["bench_ladder_cpu.json"]  # no figure, no log


def test_samples_of_both_checkpoints_with_memorisation(default_parts: DryRun, gpu_check):
    text = (default_parts.out / "reference" / "samples.txt").read_text()
    sections = text.split("===== ")[1:]
    assert [section.split(" =====")[0] for section in sections] == ["last.pt", "best.pt"]
    for section in sections:
        assert [f"--- sample {i} ---" in section for i in range(1, 7)] == [True] * 5 + [False]
        assert section.count(f"\n{gpu_check.SAMPLE_PROMPT}") == 5
        assert section.count("memorisation: longest span copied from the training text") == 5


@pytest.fixture(scope="module")
def speed_parts(tmp_path_factory) -> DryRun:
    """The sweep (its Muon run alone, stopped by a 45 s limit: SIGINT 10 s before it) and the speed benchmarks."""
    limit = ["--reference-minutes", "0.75", "--train-args", "--max-steps 9999"]
    return dry_run(tmp_path_factory, ["--part", "sweep,speed", "--sweep", "muon", *limit])


def test_the_sweep_and_speed_parts_pack_each_run_and_benchmark_into_one_file(speed_parts: DryRun, gpu_check):
    assert speed_parts.result.returncode == 0, speed_parts.result.stdout + speed_parts.result.stderr
    assert list(speed_parts.report["checks"]) == ["sweep/muon", "speed/profile", "speed/generate"]
    packed = json.loads((speed_parts.out / "sweep" / "muon.json").read_text())
    assert packed["flags"] == gpu_check.SWEEP["muon"] == ["--optimizer", "muon"]
    assert packed["measured"] == speed_parts.measured("sweep/muon")
    assert 0 < packed["metrics"][-1]["step"] <= packed["measured"]["steps"] < 9999
    assert packed["log_tail"][-1] == packed["measured"]["last_line"]  # the log's last lines: steps, then the stop
    assert any(line.startswith("step ") and "| loss " in line for line in packed["log_tail"])
    profile = json.loads((speed_parts.out / "speed" / "bench_profile_cpu.json").read_text())
    assert speed_parts.measured("speed/profile")["shares"] == profile["shares"]
    generate = json.loads((speed_parts.out / "speed" / "bench_generate_cpu.json").read_text())
    assert speed_parts.measured("speed/generate")["ratios"] == generate["ratios"]


def test_a_run_stopped_by_its_time_limit_passes_with_its_own_summary(speed_parts: DryRun):
    """The over-time run got SIGINT, wrote its summary and ended with status 130; the report takes its numbers."""
    check = speed_parts.report["checks"]["sweep/muon"]
    measured = check["measured"]
    assert (check["status"], measured["cut_by_time_limit"], measured["returncode"]) == ("PASS", True, 130)
    assert measured["stop_reason"] == "interrupted" and measured["time_limit_s"] == 45
    assert measured["time_limit_s"] - 10 <= measured["wall_s"] < measured["time_limit_s"]
    assert measured["final_train_loss"] < measured["first_logged_loss"] and measured["mean_tok_per_s"] > 0


@pytest.mark.parametrize("parts", ["default_parts", "notebook_parts", "speed_parts"])
def test_output_fits_what_the_device_tool_brings_back(parts: str, request: pytest.FixtureRequest):
    out = request.getfixturevalue(parts).out
    files = [path.relative_to(out) for path in out.rglob("*") if path.is_file()]
    assert len(files) <= 8, files
    assert all(len(path.parts) <= 3 for path in files), files  # OUT/folder/file at most


def test_notebook_parts_run_notebook_05_and_say_why_a_cpu_is_no_t4(notebook_parts: DryRun):
    assert notebook_parts.result.returncode == 0, notebook_parts.result.stdout + notebook_parts.result.stderr
    report = notebook_parts.report
    assert list(report["parts"]) == ["notebooks", "t4"] and report["passed"] is True
    run, t4 = report["checks"]["notebooks/05_optimizations"], report["checks"]["t4/05_optimizations"]
    assert (run["status"], run["reason"]) == ("PASS", None)
    assert (run["measured"]["peak_allocated_mib"], run["measured"]["peak_reserved_mib"]) == (None, None)  # no GPU
    assert (t4["status"], t4["reason"]) == ("SKIP", "a T4 is emulated on a CUDA GPU only: cpu has no memory share or "
                                            "kernels to limit")  # fmt: skip
    assert list(report["checks"]) == ["notebooks/05_optimizations", "t4/05_optimizations"]


def test_the_saved_notebook_is_the_notebook_executed_and_agrees_with_the_report(notebook_parts: DryRun):
    """The committed notebook's cells, every one executed once in order (the measuring cell taken out again), in smoke
    mode; the rungs its ladder printed as skipped are those the report names, with the same reasons."""
    saved = nbformat.read(notebook_parts.out / "notebooks" / "05_optimizations.ipynb", as_version=4)
    committed = nbformat.read(ROOT / "notebooks" / "05_optimizations.ipynb", as_version=4)
    assert [cell.source for cell in saved.cells] == [cell.source for cell in committed.cells]
    code = [cell for cell in saved.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    printed = "".join(output.get("text", "") for cell in code for output in cell.outputs)
    assert "tiny model, 2 x 32 = 64 tokens per micro-step" in printed  # the smoke sizes
    skipped = dict(re.findall(r"^(\S.*?) +skipped: (.*)$", printed, flags=re.M))
    assert skipped and notebook_parts.measured("notebooks/05_optimizations")["skipped_rungs"] == skipped


def test_tests_count_every_outcome_and_keep_pytests_last_lines(tmp_path: Path, gpu_check):
    """A real run of the tests part on device tests of its own (the project's conftest as a plugin gives them the
    device fixture): a pass, a failure, a skip and an error in a fixture."""
    (tmp_path / "test_sample.py").write_text(
        textwrap.dedent("""
        import pytest
        @pytest.fixture
        def broken():
            raise RuntimeError("set-up broke")
        def test_pass(device):
            pass
        def test_fail(device):
            assert 1 == 2, "one is not two"
        def test_skip(device):
            pytest.skip("not here")
        def test_error(device, broken):
            pass
        """)
    )
    pytest_args = [str(tmp_path / "test_sample.py"), "-p", "tests.conftest"]
    args = argparse.Namespace(device="cpu", pytest_args=pytest_args, out=tmp_path / "out")
    measured, problems = gpu_check.check_tests(args, 120)
    counts = {key: measured[key] for key in ("tests", "failures", "errors", "skipped", "returncode")}
    assert counts == {"tests": 4, "failures": 1, "errors": 1, "skipped": 1, "returncode": 1}
    assert re.fullmatch(r"1 failed, 1 passed, 1 skipped, 1 error in [\d.]+s", measured["last_line"])
    assert problems == [f"pytest ended with status 1: {measured['last_line']}"]
    assert any(line.startswith("FAILED") and "::test_fail" in line for line in measured["log_tail"])
    assert any(line.startswith("ERROR") and "::test_error" in line for line in measured["log_tail"])
    cases = ElementTree.parse(args.out / "tests" / "junit.xml").getroot().iter("testcase")
    outcomes = {case.get("name"): (child.tag, child.get("message")) for case in cases for child in case}
    assert outcomes["test_fail"][0] == "failure" and outcomes["test_fail"][1].startswith(
        "AssertionError: one is not two"
    )
    assert outcomes["test_error"][0] == "error" and "RuntimeError: set-up broke" in outcomes["test_error"][1]
    assert outcomes["test_skip"] == ("skipped", "not here") and "test_pass" not in outcomes


def test_tests_that_select_nothing_fail_with_pytests_last_lines(tmp_path: Path, gpu_check):
    args = argparse.Namespace(device="cpu", pytest_args=["tests/test_device.py", "-k", "no_such_test"], out=tmp_path)
    measured, problems = gpu_check.check_tests(args, 120)
    assert (measured["tests"], measured["returncode"]) == (0, 5)  # pytest's status for "no tests collected"
    assert problems == [f"pytest ended with status 5: {measured['last_line']}"]
    assert re.fullmatch(r"\d+ deselected in [\d.]+s", measured["last_line"])
    assert measured["log_tail"][-1] == measured["last_line"]


@pytest.mark.parametrize(
    "option, message",
    [(["--part", "tests,everything"], "--part takes a comma-separated list of tests, reference, ladder, notebooks, t4"),
     (["--notebooks", "08_x"], "--notebooks takes a comma-separated list of 05_optimizations, 06_training"),
     (["--pytest-args", "-k 'unclosed"], "argument --pytest-args: invalid split value")],
)  # fmt: skip
def test_a_bad_option_is_one_line_of_error(capsys, gpu_check, option: list[str], message: str):
    with pytest.raises(SystemExit) as exit_status:
        gpu_check.parse_args(["--out", "unused", *option])
    assert exit_status.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]
