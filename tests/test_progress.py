"""A run's progress: nothing but its log lines when the output goes to a file or a pipe, and in a notebook one line
updated in place that the saved notebook keeps, not a redraw per step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = dict(preset="tiny", batch_size=2, seq_len=16, max_steps=30, log_interval=10, eval_interval=15, eval_batches=1)
RUN.update(sample_interval=0, tensorboard=False, dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    if not os.environ.get("SHAKEGPT_DATA_DIR"):
        pytest.skip("set SHAKEGPT_DATA_DIR to a folder holding tinyshakespeare.txt")
    cache = str(tmp_path_factory.mktemp("cache"))
    return {**os.environ, "SHAKEGPT_CACHE_DIR": cache, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_a_run_written_to_a_pipe_has_no_progress_bar(tmp_path, env):
    args = [f"--{name.replace('_', '-')}={value}" for name, value in RUN.items() if name != "tensorboard"]
    result = subprocess.run(
        [sys.executable, "-m", "shakegpt_utils", "train", *args, "--no-tensorboard", "--out", str(tmp_path / "run")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stdout + result.stderr
    steps = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [line.split("|")[0].split()[1] for line in steps] == ["10/30", "15/30", "20/30", "30/30"]


def test_a_run_in_a_notebook_keeps_one_progress_line(tmp_path, env):
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            f"import shakegpt_utils as sg\nsg.train(sg.TrainConfig(**{RUN!r}, out={str(tmp_path / 'run')!r}))"
        )
    ]
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(ROOT)}}
    )
    previous = {name: os.environ.get(name) for name in ("SHAKEGPT_CACHE_DIR", "OMP_NUM_THREADS")}
    os.environ.update(SHAKEGPT_CACHE_DIR=env["SHAKEGPT_CACHE_DIR"], OMP_NUM_THREADS="1")
    try:
        client.execute()
    finally:
        for name, value in previous.items():
            os.environ.pop(name) if value is None else os.environ.update({name: value})
    outputs = nb.cells[0].outputs
    progress = [out for out in outputs if out.output_type == "display_data"]
    assert len(progress) == 1
    assert progress[0].data["text/plain"].startswith("step 30/30 (100%), ")  # the last state, in place
    log = "".join(out.text for out in outputs if out.output_type == "stream").split("sample at step")[0]
    assert "\r" not in log and [line[:10] for line in log.splitlines() if line.startswith("step ")] == [
        "step    10",
        "step    15",
        "step    20",
        "step    30",
    ]  # the log lines, each once, before the final sample (whose random text may hold anything)
