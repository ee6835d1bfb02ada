"""The training run: its files, exact resume after kill -9, DDP equals one process, NaN stops, bad arguments."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import shakegpt.run as run_module
import shakegpt.train as train_module
import shakegpt_utils as sg

ROOT = Path(__file__).resolve().parent.parent
# A tiny run: 2 layers, 64 wide, 64 tokens of context, fp32 so every run repeats bit for bit.
TINY = ["--preset", "tiny", "--batch-size", "4", "--seq-len", "32", "--dtype", "fp32", "--no-progress"]
TINY_SCHEDULE = ["--max-steps", "12", "--warmup-steps", "3", "--lr", "3e-3", "--log-interval", "1"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Environment for runs: corpora from SHAKEGPT_DATA_DIR (set by CI), caches in a temporary folder."""
    if not os.environ.get("SHAKEGPT_DATA_DIR"):
        pytest.skip("set SHAKEGPT_DATA_DIR to a folder holding tinyshakespeare.txt")
    cache = tmp_path_factory.mktemp("cache")
    values = {**os.environ, "SHAKEGPT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    sg.load_tokens("tinyshakespeare", cache)  # encode once for every run below
    return values


@pytest.fixture()
def in_process_env(env, monkeypatch) -> None:
    monkeypatch.setenv("SHAKEGPT_CACHE_DIR", env["SHAKEGPT_CACHE_DIR"])


def cli(
    args: list[str], env: dict[str, str], timeout: float = 300, processes: int | None = None
) -> subprocess.CompletedProcess:
    """`python -m shakegpt_utils ARGS`, or with `processes` started by torchrun (`--standalone`)."""
    launcher = [sys.executable, "-m"]
    if processes is not None:
        launcher += ["torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m"]
    return subprocess.run(
        [*launcher, "shakegpt_utils", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def losses(out: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in sg.read_metrics(out / "metrics.jsonl")]


def run_config(out: Path, **changes) -> sg.TrainConfig:
    values = dict(
        preset="tiny",
        batch_size=4,
        seq_len=32,
        dtype="fp32",
        progress=False,
        max_steps=12,
        warmup_steps=3,
        lr=3e-3,
        log_interval=1,
        eval_interval=6,
        ckpt_interval=3,
        sample_interval=0,
        sample_tokens=8,
        device="cpu",
        tensorboard=False,
        out=str(out),
    )
    values.update(changes)
    return sg.TrainConfig(**values)


@pytest.fixture(scope="module")
def tiny_run(env, tmp_path_factory) -> tuple[Path, dict]:
    """One run of 12 steps, with dropout, samples at steps 6 and 12 and TensorBoard events: its folder and summary."""
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHAKEGPT_CACHE_DIR", env["SHAKEGPT_CACHE_DIR"])
        summary = sg.train(run_config(out, dropout=0.1, sample_interval=6, tensorboard=True))
    return out, summary


def test_a_run_logs_every_step_and_learns(tiny_run):
    out, _ = tiny_run
    rows = sg.read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, 13))
    for row in rows:
        assert {"step", "loss", "lr", "grad_norm", "dt_ms", "tok_per_s"} <= set(row)
        assert row["tokens"] == row["step"] * 4 * 32
    assert [row["step"] for row in rows if "val_loss" in row] == [6, 12]
    assert rows[0]["loss"] == pytest.approx(torch.log(torch.tensor(50257.0)).item(), abs=0.3)  # untrained ≈ ln V
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0  # it learns


def test_the_summary_on_disk_agrees_with_the_metrics(tiny_run):
    out, summary = tiny_run
    rows = sg.read_metrics(out / "metrics.jsonl")
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    for key in (
        "steps",
        "tokens",
        "wall_time_s",
        "time_to_target_s",
        "best_val_loss",
        "best_val_step",
        "final_train_loss",
        "device",
        "dtype",
        "versions",
    ):
        assert key in saved
    assert saved["steps"] == 12 and saved["tokens"] == 12 * 128
    best_row = min((row for row in rows if "val_loss" in row), key=lambda row: row["val_loss"])
    assert (saved["best_val_step"], saved["best_val_loss"]) == (best_row["step"], best_row["val_loss"])
    assert saved["final_train_loss"] == rows[-1]["loss"]


def test_best_and_last_checkpoints_hold_their_steps(tiny_run):
    out, summary = tiny_run
    best = sg.load_checkpoint(out / "best.pt")
    last = sg.load_checkpoint(out / "last.pt")
    assert best["step"] == summary["best_val_step"] and last["step"] == 12


def test_a_run_writes_its_figure_and_a_sample_at_each_interval(tiny_run):
    out, summary = tiny_run
    for name in ("loss.png", "loss.svg", "samples.txt"):
        assert (out / name).stat().st_size > 0
    assert (out / "samples.txt").read_text().count("=== step") == 2  # steps 6 and 12, the last one not repeated
    assert summary["sample"].startswith("ROMEO:")


def test_tensorboard_holds_the_curves_and_the_samples(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = tiny_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    train_curve = [event.value for event in events.Scalars("loss/train")]
    assert train_curve == pytest.approx([row["loss"] for row in sg.read_metrics(out / "metrics.jsonl")])
    assert len(events.Scalars("loss/val")) == 2
    assert "sample" in " ".join(events.Tags()["tensors"])


def test_a_fresh_run_in_the_same_folder_replaces_the_last_runs_tensorboard_curves(tmp_path, in_process_env):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    sg.train(run_config(out, max_steps=4, eval_interval=4, tensorboard=True))
    sg.train(run_config(out, max_steps=3, eval_interval=3, tensorboard=True, seed=7))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    rows = sg.read_metrics(out / "metrics.jsonl")
    assert [event.step for event in events.Scalars("loss/train")] == [1, 2, 3]
    assert [event.value for event in events.Scalars("loss/train")] == pytest.approx([row["loss"] for row in rows])


def test_target_loss_stops_the_run_and_is_recorded(tmp_path, in_process_env):
    out = tmp_path / "target"
    summary = sg.train(run_config(out, max_steps=40, target_loss=9.5, log_interval=2))
    rows = sg.read_metrics(out / "metrics.jsonl")
    assert summary["stop_reason"] == "target_loss"
    reached = next(row for row in rows if row["loss"] < 9.5)
    assert summary["target_step"] == reached["step"] == rows[-1]["step"] < 40
    assert summary["time_to_target_s"] > 0
    assert sg.load_checkpoint(out / "last.pt")["step"] == reached["step"]


def test_resume_after_kill_9_continues_exactly(tmp_path, env):
    """Kill the run hard after its first checkpoint, resume, and compare with an uninterrupted run step by step."""
    common = [
        *TINY,
        *TINY_SCHEDULE,
        "--dropout",
        "0.1",
        "--ckpt-interval",
        "2",
        "--eval-interval",
        "4",
        "--sample-interval",
        "0",
        "--no-tensorboard",
    ]
    reference = tmp_path / "reference"
    assert cli(["train", *common, "--out", str(reference)], env).returncode == 0

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "shakegpt_utils", "train", *common, "--out", str(interrupted)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        metrics = interrupted / "metrics.jsonl"
        if (interrupted / "last.pt").exists() and metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed; make it longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = len(sg.read_metrics(interrupted / "metrics.jsonl"))
    assert killed_at < 12

    resumed = cli(["train", *common, "--out", str(interrupted), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert losses(interrupted) == losses(reference)  # exactly equal, every step
    val = [row.get("val_loss") for row in sg.read_metrics(interrupted / "metrics.jsonl")]
    assert val == [row.get("val_loss") for row in sg.read_metrics(reference / "metrics.jsonl")]


# fp16: the T4's path, with a GradScaler whose state resumes; Muon: an optimizer of two, whose states both resume.
@pytest.mark.parametrize("dtype, optimizer", [("fp32", "adamw"), ("fp16", "adamw"), ("fp32", "muon")])
def test_crash_during_checkpoint_write_keeps_previous_and_resume_is_exact(
    tmp_path, in_process_env, monkeypatch, dtype, optimizer
):
    # A loss scale high enough to overflow fp16 at first: the scaler skips steps and lowers it, so a resume that
    # lost the scaler's state would start again from this one and skip other steps.
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0**24))
    reference = tmp_path / "reference"
    sg.train(run_config(reference, dropout=0.1, dtype=dtype, optimizer=optimizer))

    out = tmp_path / "crashed"
    real_save = torch.save
    calls = {"n": 0}

    def save_then_die(obj, f, *args, **kwargs):
        calls["n"] += 1
        if obj.get("step") == 9:  # die half-way through writing the step-9 checkpoint
            f.write(b"PK\x03\x04 half a checkpoint")
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        sg.train(run_config(out, dropout=0.1, dtype=dtype, optimizer=optimizer))
    monkeypatch.setattr(torch, "save", real_save)
    checkpoint = sg.load_checkpoint(out / "last.pt")
    assert checkpoint["step"] == 6
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    if dtype == "fp16":  # the loss scale has come down from its start: resuming must not reset it
        assert checkpoint["scaler"]["scale"] < 2.0**24

    summary = sg.train(run_config(out, dropout=0.1, dtype=dtype, optimizer=optimizer, resume=True))
    assert losses(out) == losses(reference)
    assert summary["dtype"] == dtype and summary["config"]["optimizer"] == optimizer


def test_checkpoints_only_at_the_end_keep_the_best_weights_in_memory(tmp_path, in_process_env, monkeypatch):
    """With ckpt_interval 0 nothing is written while the run is timed: last.pt at the last step, then best.pt,
    holding the weights of the best validation step, equal to those a run writing best.pt at that step saves."""
    written = []
    real_save = run_module.save_checkpoint

    def recorded(path, model, optimizer=None, step=0, *args, **kwargs):
        written.append((Path(path).name, step, optimizer is not None))
        return real_save(path, model, optimizer, step, *args, **kwargs)

    monkeypatch.setattr(run_module, "save_checkpoint", recorded)
    # 256 training tokens and a high learning rate: validation is best at step 3 and worse after it.
    changes = dict(max_steps=9, eval_interval=3, lr=3e-2, warmup_steps=1, train_tokens=256)
    at_the_end = sg.train(run_config(tmp_path / "end", ckpt_interval=0, **changes))
    assert at_the_end["best_val_step"] < 9, "the test needs a best step before the last one"
    assert written == [("last.pt", 9, True), ("best.pt", at_the_end["best_val_step"], False)]

    written.clear()
    as_it_goes = sg.train(run_config(tmp_path / "steps", ckpt_interval=3, **changes))
    assert ("best.pt", as_it_goes["best_val_step"], True) in written and len(written) > 2
    assert as_it_goes["best_val_step"] == at_the_end["best_val_step"]
    best_now = sg.load_checkpoint(tmp_path / "steps" / "best.pt")["model"]
    best_kept = sg.load_checkpoint(tmp_path / "end" / "best.pt")
    assert best_kept["step"] == at_the_end["best_val_step"] and best_kept["optimizer"] is None
    for name, weight in best_now.items():
        torch.testing.assert_close(best_kept["model"][name], weight, atol=0, rtol=0, msg=name)
    last = sg.load_checkpoint(tmp_path / "end" / "last.pt")["model"]
    assert any(not torch.equal(last[name], weight) for name, weight in best_now.items())


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, env):
    base = [
        "--preset",
        "tiny",
        "--seq-len",
        "32",
        "--dtype",
        "fp32",
        "--no-progress",
        "--max-steps",
        "6",
        "--warmup-steps",
        "2",
        "--lr",
        "3e-3",
        "--log-interval",
        "1",
        "--eval-interval",
        "3",
        "--eval-batches",
        "2",
        "--sample-interval",
        "0",
        "--no-tensorboard",
        "--device",
        "cpu",
    ]
    single = tmp_path / "single"
    one = cli(["train", *base, "--batch-size", "4", "--grad-accum", "2", "--out", str(single)], env)
    assert one.returncode == 0, one.stderr
    double = tmp_path / "ddp"
    # --total-batch in tokens: 2 processes x 2 sequences x 32 tokens x 2 micro-steps
    two = cli(["train", *base, "--batch-size", "2", "--total-batch", "256", "--out", str(double)], env, processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stdout
    assert two.stdout.count("training tiny") == 1  # only rank 0 logs
    a, b = sg.read_metrics(single / "metrics.jsonl"), sg.read_metrics(double / "metrics.jsonl")
    assert [row["step"] for row in a] == [row["step"] for row in b] == list(range(1, 7))
    for row_a, row_b in zip(a, b, strict=True):
        assert row_b["loss"] == pytest.approx(row_a["loss"], abs=1e-5)
        assert row_b["tokens"] == row_a["tokens"]
        if "val_loss" in row_a:
            assert row_b["val_loss"] == pytest.approx(row_a["val_loss"], abs=1e-5)


@pytest.mark.parametrize("batch_size", [64, 3, 1])
def test_evaluation_is_a_mean_over_tokens_for_any_batch_size(batch_size, device):
    """10 windows: one batch of 10 (more asked for than there are), batches of 3, 3, 3 and 1, or ten of 1."""
    torch.manual_seed(0)
    model = sg.GPT(sg.GPTConfig(block_size=16, vocab_size=101, n_layer=1, n_head=1, n_embd=16)).to(device)
    tokens = torch.randint(101, (10 * 16 + 5,)).numpy().astype("uint16")
    windows = torch.from_numpy(tokens[: 10 * 16 + 1].astype("int64")).to(device)
    x, y = windows[:-1].view(10, 16), windows[1:].view(10, 16)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()
    batches = sg.evaluation_windows(tokens, batch_size, 16)
    measured = sg.evaluate(model, batches, sg.get_precision(device, "fp32"), device)
    assert measured == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "device, preset, loss, expected",
    [("cuda", None, None, ("gpt2", "full")), ("cpu", None, None, ("small", "chunked")), ("cuda", "tiny", "chunked",
      ("tiny", "chunked")), ("mps", "gpt2", None, ("gpt2", "chunked"))],
)  # fmt: skip
def test_resolve_picks_the_preset_and_the_loss_for_the_device(device, preset, loss, expected):
    cfg = sg.TrainConfig(preset=preset, loss_impl=loss).resolve(torch.device(device))
    assert (cfg.preset, cfg.loss_impl) == expected
    assert cfg.compile == (device == "cuda")
    with torch.device("meta"):  # shapes only: the 124M model costs nothing to build there
        assert run_module.build_model(cfg).config.loss_impl == cfg.loss_impl


def test_defaults_follow_the_preset_not_the_device():
    on_cpu = sg.TrainConfig(preset="gpt2").resolve("cpu")
    on_gpu = sg.TrainConfig(preset="gpt2").resolve(torch.device("cuda"))
    assert (on_cpu.max_steps, on_cpu.lr, on_cpu.batch_size) == (on_gpu.max_steps, on_gpu.lr, on_gpu.batch_size)
    assert (on_cpu.max_steps, on_cpu.batch_size) != (sg.TrainConfig(preset="small").resolve("cpu").max_steps, 8)


def test_total_batch_counts_tokens_over_all_processes():
    cfg = sg.TrainConfig(preset="tiny", batch_size=4, seq_len=32, total_batch=4 * 32 * 2 * 3).resolve("cpu", 2)
    assert cfg.grad_accum == 3


def test_evaluation_runs_the_plain_model_never_the_compiled_one(tmp_path, in_process_env, monkeypatch):
    """A compiled model called without gradients in eval mode compiles again; evaluation uses the plain model."""
    calls = []

    class Compiled(torch.nn.Module):  # stands in for torch.compile's wrapper, recording how it is called
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *args, **kwargs):
            calls.append((torch.is_grad_enabled(), self.training))
            return self.model(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", Compiled)
    monkeypatch.setattr(run_module, "compile_problem", lambda device: None)  # the stand-in compiles anything
    summary = sg.train(run_config(tmp_path / "run", compile=True))
    assert summary["compile"] and summary["best_val_loss"] is not None
    assert len(calls) == 12 and set(calls) == {(True, True)}  # one call per training step, never for evaluation


@pytest.fixture
def data_seen(monkeypatch) -> tuple[list, list]:
    """Two lists that collect, during a run, the tokens its batch loader trains on and those it validates on."""
    trained_on, validated_on = [], []

    class RecordingBatches(sg.TokenBatches):
        def __init__(self, tokens, *args, **kwargs):
            trained_on.append(tokens.copy())
            super().__init__(tokens, *args, **kwargs)

    def recording_windows(tokens, *args, **kwargs):
        validated_on.append(tokens.copy())
        return sg.evaluation_windows(tokens, *args, **kwargs)

    monkeypatch.setattr(run_module, "TokenBatches", RecordingBatches)
    monkeypatch.setattr(train_module, "evaluation_windows", recording_windows)
    return trained_on, validated_on


def test_train_tokens_trains_on_a_slice_and_keeps_the_whole_validation_split(tmp_path, in_process_env, data_seen):
    trained_on, validated_on = data_seen
    summary = sg.train(run_config(tmp_path / "slice", train_tokens=2000, max_steps=6))
    train, validation = sg.split_tokens(sg.load_tokens("tinyshakespeare"))
    assert [len(tokens) for tokens in trained_on] == [2000]
    assert (trained_on[0] == train[:2000]).all()
    assert validated_on and all(len(v) == len(validation) and (v == validation).all() for v in validated_on)
    assert summary["train_tokens"] == 2000 and summary["config"]["train_tokens"] == 2000


def own_text(lines: int) -> str:
    """A text of one's own, not Shakespeare: a made-up diary, a few accents and symbols included."""
    return "".join(
        f"Day {i}: the naïve café served {i % 7} cakes ☃, and the fox jumped over the dog.\n" for i in range(lines)
    )


def test_a_run_trains_on_a_text_file_split_and_recorded_like_a_corpus(
    tmp_path, in_process_env, data_seen, monkeypatch, capsys
):
    trained_on, validated_on = data_seen
    text = own_text(120)
    (tmp_path / "diary.txt").write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # a path relative to where the run starts
    summary = sg.train(run_config(tmp_path / "run", text_file="diary.txt", max_steps=4, eval_interval=2))
    tokens = sg.get_tokenizer().encode_ordinary(text)
    cut = int(len(tokens) * 0.9)  # the first 90% trains, the last 10% validates
    assert [t.tolist() for t in trained_on] == [tokens[:cut]]
    assert validated_on and all(v.tolist() == tokens[cut:] for v in validated_on)
    assert summary["train_tokens"] == cut and summary["best_val_loss"] is not None
    recorded = str((tmp_path / "diary.txt").resolve())  # absolute: sample --memorisation finds it from anywhere
    assert summary["config"]["text_file"] == recorded
    assert sg.load_checkpoint(tmp_path / "run" / "best.pt")["train_config"]["text_file"] == recorded
    assert "parameters) on diary.txt | " in capsys.readouterr().out


def test_a_text_file_that_cannot_train_is_one_line_and_nothing_written(tmp_path, in_process_env, capsys):
    out, short = tmp_path / "run", "A short note.\n" * 20
    n = len(sg.get_tokenizer().encode_ordinary(short))
    validation = n - int(n * 0.9)
    cases = {
        None: f"cannot read text_file / --text-file {tmp_path / 'mine.txt'}: No such file or directory.",
        b"": f"{tmp_path / 'mine.txt'} is empty: there is no text in it to train on.",
        "na\u00efve".encode("latin-1"): f"{tmp_path / 'mine.txt'} is not UTF-8 text (byte 2 is not valid UTF-8); save "
        "it as UTF-8 and try again.",
        short.encode(): f"mine.txt is too short for one sequence of 32 tokens in its validation split: its {n} tokens "
        f"leave {validation} in the last 10%; use a longer text or a smaller seq_len / --seq-len.",
    }
    assert validation < 33  # one sequence of 32 inputs and its 32 targets needs 33 tokens
    for content, message in cases.items():
        (tmp_path / "mine.txt").unlink(missing_ok=True)
        if content is not None:
            (tmp_path / "mine.txt").write_bytes(content)
        assert sg.main(["train", *TINY, "--text-file", str(tmp_path / "mine.txt"), "--out", str(out)]) == 1
        assert capsys.readouterr().err == f"error: {message}\n"
        assert not out.exists()


def test_torchrun_with_one_process_trains_through_distributed_data_parallel(tmp_path, env):
    """One GPU under torchrun takes the DDP path (process group, wrapper, all-reduce), and learns the same."""
    args = [*TINY, *TINY_SCHEDULE, "--max-steps", "4", "--eval-interval", "2", "--sample-interval", "0"]
    args += ["--no-tensorboard", "--device", "cpu"]
    single = cli(["train", *args, "--out", str(tmp_path / "single")], env)
    assert single.returncode == 0, single.stderr
    ddp = cli(["train", *args, "--out", str(tmp_path / "ddp")], env, processes=1)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "1 process(es) with DistributedDataParallel" in ddp.stdout
    assert "DistributedDataParallel" not in single.stdout
    a, b = sg.read_metrics(tmp_path / "single" / "metrics.jsonl"), sg.read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-6)
    assert [r["val_loss"] for r in a if "val_loss" in r] == pytest.approx([r["val_loss"] for r in b if "val_loss" in r])


def test_a_run_trains_the_shape_and_threads_it_is_given(tmp_path, in_process_env, monkeypatch):
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    sg.train(run_config(tmp_path / "run", max_steps=2, n_layer=1, n_head=4, n_embd=32, threads=1))
    checkpoint = sg.load_checkpoint(tmp_path / "run" / "last.pt")
    shape = {key: checkpoint["model_config"][key] for key in ("n_layer", "n_head", "n_embd", "block_size")}
    assert shape == dict(n_layer=1, n_head=4, n_embd=32, block_size=64)  # the rest is the tiny preset's
    model = sg.model_from_checkpoint(checkpoint, torch.device("cpu"))
    assert len(model.transformer.h) == 1 and model.lm_head.weight.shape[1] == 32
    assert threads == [1]


def test_summary_times_the_first_step_apart(tmp_path, in_process_env):
    summary = sg.train(run_config(tmp_path / "run", max_steps=40, target_loss=9.5, log_interval=2))
    rows = sg.read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert summary["warmup_s"] > 0 and summary["checkpoint_s"] > 0
    assert summary["wall_time_s"] == pytest.approx(rows[-1]["elapsed_s"])
    assert summary["wall_time_s"] > summary["warmup_s"] + summary["time_to_target_s"] - 1e-9
    assert 0 < summary["time_to_target_s"] < summary["wall_time_s"]
    # Each row covers the steps since the one before; the first step (the warm-up) is in no row's timing.
    timed = [row["step"] - before["step"] for before, row in zip([{"step": 1}, *rows[:-1]], rows, strict=True)]
    step_time = sum(row["dt_ms"] / 1000 * n for row, n in zip(rows, timed, strict=True))
    assert summary["mean_tok_per_s"] == pytest.approx((summary["steps"] - 1) * 4 * 32 / step_time, rel=1e-6)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, in_process_env, monkeypatch, capsys
):
    real_step = train_module.train_step
    calls = {"n": 0}

    def step_that_goes_nan(*args, **kwargs):
        calls["n"] += 1
        loss, norm = real_step(*args, **kwargs)
        return (loss * float("nan"), norm) if calls["n"] == 8 else (loss, norm)

    monkeypatch.setattr(train_module, "train_step", step_that_goes_nan)
    out = tmp_path / "nan"
    args = [
        "train",
        *TINY,
        *TINY_SCHEDULE,
        "--ckpt-interval",
        "3",
        "--eval-interval",
        "6",
        "--sample-interval",
        "0",
        "--no-tensorboard",
        "--out",
        str(out),
    ]
    assert sg.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "step 8" in err and "nan" in err
    assert sg.load_checkpoint(out / "last.pt")["step"] == 6  # the checkpoint of step 6 survives, step 9 never written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--preset", "huge"], "unknown preset 'huge'"),
        (["train", "--preset", "tiny", "--seq-len", "65"], "--seq-len 65 is above"),
        (
            ["train", "--preset", "tiny", "--batch-size", "3", "--total-batch", "100"],
            "total_batch / --total-batch 100 tokens is not divisible by batch_size x seq_len x processes = 192",
        ),
        (
            ["train", "--preset", "tiny", "--batch-size", "64", "--total-batch", str(64 * 64 * 200)],
            "one step of 819,200 tokens is more than two epochs of the 304,222-token training split",
        ),
        (["train", "--preset", "tiny", "--batch-size", "5000"], "use --batch-size 4752 at most"),
        (["train", "--train-tokens", "0"], "train_tokens / --train-tokens must be at least 1, not 0."),
        (
            ["train", "--train-tokens", "999999999"],
            "999,999,999 is more than the 304,222 tokens of the tinyshakespeare",
        ),
        (["train", "--corpus", "sonnets"], "unknown corpus 'sonnets'"),
        (["train", "--optimizer", "sgd"], "unknown optimizer 'sgd'"),
        (["train", "--schedule", "linear"], "unknown schedule 'linear'"),
        (
            ["train", "--schedule", "wsd", "--decay-fraction", "0"],
            "decay_fraction / --decay-fraction must be in (0, 1]",
        ),
        (["train", "--ckpt-interval", "-1"], "ckpt_interval / --ckpt-interval must be at least 0, not -1."),
        (["train", "--text-file", "no/such/notes.txt"], "--text-file no/such/notes.txt: No such file or directory."),
        (["train", "--preset", "tiny", "--n-head", "0"], "n_head / --n-head must be at least 1, not 0."),
        (["train", "--preset", "tiny", "--n-head", "3"], "n_embd=64 must be divisible by n_head=3"),
        (["train", "--preset", "tiny", "--seq-len", "0"], "seq_len / --seq-len must be at least 1, not 0."),
        (["train", "--preset", "tiny", "--threads", "0"], "threads / --threads must be at least 1, not 0."),
        (["train", "--batch-size", "many"], "invalid int value: 'many'"),
        (["train", "--preset", "tiny", "--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["sample", "--ckpt", "no/such/file.pt"], "no checkpoint at no/such/file.pt"),
        (["sample", "--ckpt", "no/such/file.pt", "--top-p", "0"], "top_p / --top-p must be in (0, 1], not 0.0."),
        (["sample", "--ckpt", "no/such/file.pt", "--top-p", "1.5"], "top_p / --top-p must be in (0, 1], not 1.5."),
    ],
)
def test_bad_arguments_give_one_line_and_nonzero_exit(args, message, in_process_env, capsys):
    """In this process, as `python -m shakegpt_utils` runs it: main's exit status, or argparse's."""
    try:
        status = sg.main(args)
    except SystemExit as exit:
        status = exit.code
    err = capsys.readouterr().err
    assert status != 0
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0 and message in err


def test_missing_corpus_offline_says_where_to_put_it(tmp_path, env):
    offline = {k: v for k, v in env.items() if k != "SHAKEGPT_DATA_DIR"}
    offline.update(SHAKEGPT_CACHE_DIR=str(tmp_path), HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    result = cli(["train", *TINY, "--max-steps", "1", "--out", str(tmp_path / "run")], offline, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "could not download tinyshakespeare.txt" in result.stderr and "SHAKEGPT_DATA_DIR" in result.stderr
    assert not list(tmp_path.glob("*.txt"))


def test_unreadable_checkpoints_are_refused_for_resume_and_sample(tmp_path, env):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"PK\x03\x04 not really a zip")
    resume = cli(["train", *TINY, "--max-steps", "2", "--out", str(out), "--resume"], env)
    assert resume.returncode == 1 and "is not a readable checkpoint" in resume.stderr
    assert "Traceback" not in resume.stderr
    assert (out / "last.pt").read_bytes() == b"PK\x03\x04 not really a zip"  # nothing overwritten
    sample = cli(["sample", "--ckpt", str(out / "last.pt")], env)
    assert sample.returncode == 1 and "is not a readable checkpoint" in sample.stderr


def run_main(args: list[str], capsys) -> str:
    """`python -m shakegpt_utils ARGS` in this process: its standard output, once it has exited with status 0."""
    assert sg.main(args) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_sample_command_prints_seeded_samples_from_a_checkpoint(tmp_path, in_process_env, capsys):
    torch.manual_seed(0)
    model = sg.GPT(sg.GPTConfig.tiny(vocab_size=sg.PADDED_VOCAB_SIZE))
    sg.save_checkpoint(tmp_path / "tiny.pt", model)
    args = [
        "sample",
        "--ckpt",
        str(tmp_path / "tiny.pt"),
        "--prompt",
        "JULIET:",
        "--num-samples",
        "2",
        "--max-new-tokens",
        "12",
        "--seed",
        "7",
        "--device",
        "cpu",
    ]
    first, second = run_main(args, capsys), run_main(args, capsys)
    assert first == second
    expected = sg.sample_text(model.eval(), "JULIET:", 12, 0.8, 200, seed=7, num_samples=2)
    for i, text in enumerate(expected):
        assert f"--- sample {i + 1} ---\n{text}\n" in first
    assert "memorisation:" not in first
    nucleus = sg.sample_text(model, "JULIET:", 12, 0.8, 200, seed=7, num_samples=2, top_p=0.3)
    assert nucleus != expected
    assert run_main([*args, "--top-p", "0.3"], capsys).startswith(f"--- sample 1 ---\n{nucleus[0]}\n")

    measured = run_main([*args, "--memorisation"], capsys)
    train_index, validation_index = sg.corpus_indexes("tinyshakespeare")
    for i, text in enumerate(expected):
        written = text[len("JULIET:") :]  # what the model wrote, without the prompt
        line = measured.split(f"--- sample {i + 1} ---\n{text}\n", 1)[1].split("\n")[1]
        assert_memorisation_line(line, written, train_index, validation_index)


def assert_memorisation_line(line: str, written: str, train_index: sg.CorpusIndex, validation_index: sg.CorpusIndex):
    """`line`, printed by sample --memorisation, measures `written` against these training and validation indexes."""
    on_train = sg.memorisation_report(written, train_index)
    on_validation = sg.memorisation_report(written, validation_index)
    assert line.startswith("memorisation: longest span copied from the training text: ")
    assert f"{on_train['longest_span_tokens']} tokens ({on_train['longest_span_chars']} characters)" in line
    assert f"8-grams found there: {on_train['ngram_overlap']:.0%}" in line
    assert f"never trained on): {on_validation['longest_span_tokens']} tokens" in line


def test_sample_measures_memorisation_against_the_text_file_the_model_trained_on(tmp_path, in_process_env, capsys):
    """A checkpoint of a run on a text file that holds, in its training part, what the model writes: the line measures
    that file (its training and validation parts), not tiny Shakespeare."""
    torch.manual_seed(0)
    model = sg.GPT(sg.GPTConfig.tiny(vocab_size=sg.PADDED_VOCAB_SIZE)).eval()
    [text] = sg.sample_text(model, "Dear diary,", 16, 0.8, 200, seed=3)
    written = text[len("Dear diary,") :]
    notes = tmp_path / "notes.txt"
    notes.write_text((written + "\n") * 10 + own_text(30), encoding="utf-8")
    trained_on = {"corpus": "tinyshakespeare", "text_file": str(notes)}  # as a run on --text-file records it
    sg.save_checkpoint(tmp_path / "notes.pt", model, step=1, train_config=trained_on)
    args = ["--prompt", "Dear diary,", "--max-new-tokens", "16", "--seed", "3", "--device", "cpu", "--memorisation"]
    out = run_main(["sample", "--ckpt", str(tmp_path / "notes.pt"), *args], capsys)
    assert out.startswith(f"--- sample 1 ---\n{text}\n\nmemorisation: ")
    line = out.split("\n")[-3]
    tokens = sg.get_tokenizer().encode_ordinary(notes.read_text(encoding="utf-8"))
    cut = int(len(tokens) * 0.9)
    assert_memorisation_line(line, written, sg.CorpusIndex(tokens[:cut]), sg.CorpusIndex(tokens[cut:]))
    assert sg.memorisation_report(written, sg.CorpusIndex(tokens[:cut]))["ngram_overlap"] > 0.5  # it is in there
    assert f"memorisation: {sg.memorisation_line(written)}" != line  # tiny Shakespeare measures otherwise
