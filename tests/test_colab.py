"""Surviving a Colab disconnect, checked here with a fake Colab whose Google Drive is a temporary folder: run folders
linked to Drive keep their checkpoints when the runtime's disk is wiped, and a run with resume=True continues from
them. And the estimate of a run's duration printed before it starts, from steps timed on this device."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

import shakegpt.bench.timing as timing
import shakegpt.run as run_module
import shakegpt_utils as sg


@pytest.fixture
def fake_colab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A google.colab module whose drive.mount(path) makes path/MyDrive, as Colab's does once you allow it; the
    mount point is returned."""
    mounted = []

    def mount(path: str) -> None:
        mounted.append(path)
        Path(path, "MyDrive").mkdir(parents=True, exist_ok=True)

    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mount)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    if "google" not in sys.modules:
        monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setattr(sys.modules["google"], "colab", colab, raising=False)
    point = tmp_path / "drive"
    yield point
    assert mounted and set(mounted) == {str(point)}


def test_off_colab_nothing_moves(tmp_path, capsys):
    folder = tmp_path / "runs" / "shakespeare"
    assert sg.keep_runs_on_drive(folder) == [folder] and not folder.exists()
    assert capsys.readouterr().out == "not on Google Colab: run folders stay on this machine\n"


def test_a_run_folder_moves_to_drive_and_is_linked(fake_colab, tmp_path):
    folder = tmp_path / "project" / "runs" / "shakespeare"
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"a checkpoint")
    (kept,) = sg.keep_runs_on_drive(folder, mount_point=fake_colab)
    assert kept == fake_colab / "MyDrive" / "shakegpt" / "runs" / "shakespeare"
    assert folder.is_symlink() and folder.resolve() == kept.resolve()
    assert (kept / "last.pt").read_bytes() == b"a checkpoint" == (folder / "last.pt").read_bytes()
    assert sg.keep_runs_on_drive(folder, mount_point=fake_colab) == [kept]  # again: the same link


def test_a_file_on_both_sides_is_refused(fake_colab, tmp_path):
    folder = tmp_path / "runs" / "shakespeare"
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"here")
    on_drive = fake_colab / "MyDrive" / "shakegpt" / "runs" / "shakespeare"
    on_drive.mkdir(parents=True)
    (on_drive / "last.pt").write_bytes(b"there")
    with pytest.raises(sg.ShakeGPTError, match=r"both hold last\.pt: delete or rename one"):
        sg.keep_runs_on_drive(folder, mount_point=fake_colab)
    assert (folder / "last.pt").read_bytes() == b"here" and (on_drive / "last.pt").read_bytes() == b"there"


@pytest.fixture
def in_process_env(tmp_path_factory, monkeypatch):
    if not os.environ.get("SHAKEGPT_DATA_DIR"):
        pytest.skip("set SHAKEGPT_DATA_DIR to a folder holding tinyshakespeare.txt")
    monkeypatch.setenv("SHAKEGPT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def tiny_run(out: Path, **changes) -> sg.TrainConfig:
    values = dict(
        preset="tiny", batch_size=4, seq_len=32, dtype="fp32", max_steps=8, log_interval=2, eval_interval=4,
        eval_batches=1, ckpt_interval=4, sample_interval=0, progress=False, tensorboard=False, device="cpu",
        out=str(out),
    )  # fmt: skip
    return sg.TrainConfig(**{**values, **changes})


def test_after_a_disconnect_the_run_resumes_from_drive(fake_colab, tmp_path, in_process_env, monkeypatch, capsys):
    """Train through the link until the runtime goes away right after the checkpoint of step 4; wipe its disk (the
    project folder); in a fresh clone, link again and resume: the run ends as an uninterrupted one does."""
    folder = tmp_path / "runtime" / "runs" / "shakespeare"
    sg.keep_runs_on_drive(folder, mount_point=fake_colab)
    real_save = run_module.Run.write_checkpoint

    def save_then_disconnect(run, name: str) -> None:
        real_save(run, name)
        if name == "last.pt" and run.state.step == 4:
            raise KeyboardInterrupt  # the runtime disconnects

    monkeypatch.setattr(run_module.Run, "write_checkpoint", save_then_disconnect)
    with pytest.raises(KeyboardInterrupt):
        sg.train(tiny_run(folder))
    monkeypatch.setattr(run_module.Run, "write_checkpoint", real_save)
    for path in sorted((tmp_path / "runtime").rglob("*"), reverse=True):  # the disconnect wipes /content
        path.unlink() if path.is_symlink() or path.is_file() else path.rmdir()
    fresh = tmp_path / "runtime" / "runs" / "shakespeare"
    sg.keep_runs_on_drive(fresh, mount_point=fake_colab)
    capsys.readouterr()
    resumed = sg.train(tiny_run(fresh, resume=True))
    assert f"resumed from {fresh / 'last.pt'} at step 4." in capsys.readouterr().out
    whole = sg.train(tiny_run(tmp_path / "uninterrupted"))
    assert resumed["steps"] == whole["steps"] == 8
    losses = [row["loss"] for row in sg.read_metrics(fresh / "metrics.jsonl")]
    assert losses == [row["loss"] for row in sg.read_metrics(tmp_path / "uninterrupted" / "metrics.jsonl")]


def test_the_estimate_adds_up_what_it_timed(in_process_env, monkeypatch):
    """Steps timed at 1.0 s (the first, with its compile, 5.0 s) and one validation batch at 0.25 s: 400 steps with an
    evaluation every 50 and 20 batches per evaluation take 5 + 399 x 1 + 8 x 5 seconds."""
    times = iter([5.0, 1.0, 1.2, 0.9, 0.25])
    monkeypatch.setattr(timing, "timed_call", lambda fn, device: (next(times), None))
    estimate = sg.estimate_run(sg.TrainConfig(preset="tiny", max_steps=400, eval_interval=50, device="cpu"))
    assert (estimate.first_step_s, estimate.step_s, estimate.evaluations) == (5.0, 1.0, 8)
    assert estimate.evaluation_s == pytest.approx(0.25 * 20)
    assert estimate.total_s == pytest.approx(5 + 399 * 1.0 + 8 * 5.0)
    assert estimate.line().startswith("estimated 7.4 min for 400 steps on this device")


def test_the_estimate_times_the_run_it_describes(in_process_env):
    estimate = sg.estimate_run(tiny_run(Path("unused"), max_steps=10, eval_interval=3), measured_steps=2)
    assert estimate.measured_steps == 2 and estimate.evaluations == 4  # at steps 3, 6, 9 and the last, 10
    assert estimate.step_s > 0 and estimate.first_step_s > 0 and estimate.evaluation_s > 0
    assert estimate.total_s > estimate.first_step_s + 9 * estimate.step_s
