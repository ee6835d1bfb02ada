"""The benchmark command: every subcommand on a tiny model with one or two steps, checked for what it writes (JSON
schema, skipped steps with reasons and no numbers, figures) and for one-line errors. Speed itself is never asserted:
it belongs to the measurements, not to the tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.container
import matplotlib.pyplot as plt
import pytest
import torch

import shakegpt.bench.ladder
import shakegpt.bench.peers
import shakegpt_utils as sg
from shakegpt.bench.ladder import Ladder
from shakegpt.bench.settings import BenchSettings
from shakegpt.cli import main
from shakegpt.hardware import DTYPES, attention_kernel

LADDER = [
    "fp32 baseline",
    "TF32",
    "autocast",
    "SDPA attention",
    "torch.compile",
    "chunked cross-entropy",
    "vocab 50304",
    "fused AdamW",
    "gradient accumulation",
    "Muon",
]
SPEED_KEYS = {"ms_median", "ms_min", "ms_max", "tokens_per_s", "tokens_per_s_min", "tokens_per_s_max", "mfu"}
SPEED_KEYS |= {"peak_memory_mb", "loss", "warmup_s"}
TINY = ["--preset", "tiny", "--batch-size", "1", "--seq-len", "8", "--steps", "2", "--warmup", "0"]


@pytest.fixture
def figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the figures must land: beside the --out file, in tmp_path. The default figures/ folder is redirected to
    a folder that must stay empty, so that a figure written there instead is caught."""
    monkeypatch.setenv("SHAKEGPT_FIGURES_DIR", str(tmp_path / "default-figures"))
    yield tmp_path
    assert not (tmp_path / "default-figures").exists()


def run_bench(args: list[str], out: Path) -> dict:
    """Run `python -m shakegpt_utils bench ARGS --out OUT` in this process; the JSON it wrote."""
    assert main(["bench", *args, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def assert_header(result: dict, kind: str) -> None:
    assert result["benchmark"] == kind
    assert result["device_type"] == "cpu"
    assert result["device"].startswith("cpu: ")
    assert {"python", "torch"} <= set(result["versions"])
    assert result["torch_threads"] >= 1


def assert_figure(folder: Path, stem: str) -> None:
    """PNG and SVG written under their stable name and readable as such."""
    assert (folder / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (folder / f"{stem}.svg").read_text()[:500]


def assert_timing(row: dict, tokens_per_call: int) -> None:
    """Times ordered and positive, throughput consistent with the median, slowest and fastest times."""
    assert 0 < row["ms_min"] <= row["ms_median"] <= row["ms_max"]
    assert row["tokens_per_s"] == pytest.approx(tokens_per_call / (row["ms_median"] / 1000))
    assert row["tokens_per_s_min"] == pytest.approx(tokens_per_call / (row["ms_max"] / 1000))
    assert row["tokens_per_s_max"] == pytest.approx(tokens_per_call / (row["ms_min"] / 1000))


def test_ladder_reports_every_rung_measured_or_skipped_with_a_reason(tmp_path, figures, capsys):
    result = run_bench(["ladder", *TINY, "--no-compile", "--grad-accum", "3"], tmp_path / "ladder.json")
    assert_header(result, "ladder")
    rows = {row["name"]: row for row in result["rows"]}
    assert [row["name"] for row in result["rows"]] == LADDER
    for row in result["rows"]:
        if row["skipped"]:
            assert isinstance(row["reason"], str) and len(row["reason"]) > 20
            assert not SPEED_KEYS & set(row), f"{row['name']} is skipped but carries numbers"
        else:
            assert_timing(row, row["tokens_per_step"])
            assert math.isfinite(row["loss"]) and 9 < row["loss"] < 12  # a few steps from ln(50257) = 10.8
            assert row["peak_memory_mb"] > 0 and row["warmup_s"] == 0
            assert row["mfu"] is None  # no known peak FLOP/s for a CPU
    # What a CPU cannot do, and what this run switched off, is skipped with the reason and not enabled afterwards.
    assert rows["TF32"]["skipped"] and "TF32" in rows["TF32"]["reason"]
    assert rows["torch.compile"]["skipped"] and "--no-compile" in rows["torch.compile"]["reason"]
    last = rows["gradient accumulation"]
    assert not last["skipped"] and not last["features"]["tf32"] and not last["features"]["compile"]
    # Rungs accumulate: the last one has everything that ran below it, plus its own change.
    assert last["features"]["attn_impl"] == "sdpa" and last["features"]["loss_impl"] == "chunked"
    assert last["features"]["vocab_size"] == 50304
    # Only accumulation changes on the last rung: the micro-batch stays at --batch-size, the step has 3 of them.
    assert (last["features"]["batch_size"], last["features"]["grad_accum"]) == (1, 3)
    assert last["tokens_per_step"] == 1 * 8 * 3
    below = rows["fused AdamW"]
    assert {**below["features"], "grad_accum": 3} == last["features"]
    assert rows["fp32 baseline"]["speedup"] == 1.0
    # Muon is measured on top of everything the ladder keeps, and beside it: it changes what a step computes.
    muon = rows["Muon"]
    assert not muon["kept"] and muon["features"] == {**last["features"], "optimizer": "muon"}
    assert muon["built_on"] == "gradient accumulation" and last["features"]["optimizer"] == "adamw"
    assert_figure(figures, "ladder")
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == result["device"]
    assert "TF32" in printed and "skipped:" in printed
    # The attention rung names the kernel SDPA runs here, as PyTorch's dispatcher picks it for the rung's precision.
    sdpa = rows["SDPA attention"]
    kernel = attention_kernel("cpu", DTYPES[sdpa["features"]["dtype"]], n_head=2, head_size=32, seq_len=8)
    assert sdpa["attention_kernel"] == kernel == "flash (CPU)"
    assert f"attention kernel: {kernel}" in next(line for line in printed.splitlines() if line.startswith("SDPA"))
    measured = [row for row in result["rows"] if not row["skipped"]]
    assert all(("attention_kernel" in row) == (row["features"]["attn_impl"] == "sdpa") for row in measured)
    assert sum("attention kernel: " in line for line in printed.splitlines()) == 1  # printed where it changed


def test_peer_compares_the_same_shapes_and_writes_the_ratios(tmp_path, figures, capsys):
    result = run_bench(["peer", *TINY[:-4], "--steps", "1", "--warmup", "0"], tmp_path / "peer.json")
    assert_header(result, "peer")
    speed = {row["name"]: row["tokens_per_s"] for row in result["rows"]}
    assert {"ours fp32", "transformers fp32"} <= set(speed)
    for row in result["rows"]:
        assert_timing(row, 1 * 8)
    ratios = result["ratios"]
    assert ratios["ours fp32 / transformers fp32"] == pytest.approx(speed["ours fp32"] / speed["transformers fp32"])
    auto = next(name for name in ratios if "(auto)" in name)
    ours_auto = auto.split(" (auto)")[0]
    assert ratios[auto] == pytest.approx(speed[ours_auto] / speed["transformers fp32"])
    assert_figure(figures, "peer")
    assert "ours fp32 / transformers fp32: x" in capsys.readouterr().out


@pytest.mark.parametrize("compiled", [False, True])
def test_generate_decoders_agree_on_the_tokens_and_ratios_follow_the_rows(tmp_path, figures, monkeypatch, compiled):
    """With --compile, the compiled decoder is a fourth row (its step run as written here: tests/test_sampling.py
    compiles it)."""
    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)
    args = [
        "generate",
        "--preset",
        "tiny",
        "--new-tokens",
        "6",
        "--prompt-len",
        "4",
        "--rounds",
        "1",
        "--dtype",
        "fp32",
        "--compile" if compiled else "--no-compile",
    ]
    result = run_bench(args, tmp_path / "generate.json")
    assert_header(result, "generate")
    rows = {row["decoder"]: row for row in result["rows"]}
    assert set(rows) == {"ours cached", "ours uncached", "transformers generate"} | (
        {"ours compiled step"} if compiled else set()
    )
    for row in rows.values():
        assert row["dtype"] == "fp32"
        assert row["same_tokens"], f"{row['decoder']} chose other tokens than transformers with the same weights"
        assert_timing(row, 6)
    for decoder in set(rows) - {"ours uncached", "transformers generate"}:
        ratio = result["ratios"][f"fp32: {decoder} / transformers generate"]
        assert ratio == pytest.approx(rows[decoder]["tokens_per_s"] / rows["transformers generate"]["tokens_per_s"])
    assert_figure(figures, "generate")


def test_profile_shares_a_steps_time_by_kind_and_draws_them(tmp_path, figures, capsys):
    result = run_bench(["profile", *TINY[:-4], "--steps", "1", "--warmup", "1"], tmp_path / "profile.json")
    assert_header(result, "profile")
    shares = result["shares"]
    assert list(shares) == ["loss", "attention", "matrix products", "optimizer", "the rest"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["matrix products"] > 0 and shares["optimizer"] > 0 and shares["loss"] > 0
    assert 0 < result["busy_ms_per_step"] and "gpu_idle_share" not in result
    assert_figure(figures, "profile")
    assert "matrix products" in capsys.readouterr().out


def test_profiled_operations_are_sorted_by_what_they_compute():
    """By name, then by the nearest enclosing operation that says; the optimizer's whole step is the optimizer's."""
    from types import SimpleNamespace

    from shakegpt.bench.profile import event_kind

    def op(name, parent=None, kernels=()):
        return SimpleNamespace(name=name, cpu_parent=parent, kernels=[SimpleNamespace(name=k) for k in kernels])

    linear = op("aten::linear")
    chunked = op("ChunkedLinearCrossEntropy")
    step = op("Optimizer.step#AdamW.step")
    assert event_kind(op("aten::copy_", op("aten::addmm", linear))) == "matrix products"
    assert event_kind(op("aten::exp_", chunked)) == "loss"
    assert event_kind(op("aten::mm", chunked)) == "matrix products"  # the output layer's product, inside the loss
    assert event_kind(op("aten::_softmax", op("aten::scaled_dot_product_attention"))) == "attention"
    assert event_kind(op("aten::mm", op("aten::_foreach_mul_", step))) == "optimizer"
    assert event_kind(op("aten::native_layer_norm")) == "the rest"
    assert event_kind(op("cudaLaunchKernel", kernels=["sm90_xmma_gemm_bf16bf16_bf16f32"])) == "matrix products"
    assert event_kind(op("triton_red_fused__log_softmax_0")) == "loss"


@pytest.mark.parametrize(
    "args, message",
    [
        (["ladder", "--steps", "0"], "error: steps / --steps must be at least 1, not 0."),
        (["generate", "--rounds", "0"], "error: rounds / --rounds must be at least 1, not 0."),
        (["ladder", "--preset", "tiny", "--seq-len", "65"], "error: seq_len / --seq-len 65 is above the tiny model's"),
        (["ladder", "--seq-len", "0"], "error: seq_len / --seq-len must be at least 1, not 0."),
        (["peer", "--preset", "huge"], "error: unknown preset 'huge'; choose one of gpt2, small, tiny."),
        (["ladder", "--warmup", "-1"], "error: warmup / --warmup must be at least 0, not -1."),
        (["ladder", "--threads", "0"], "error: threads / --threads must be at least 1, not 0."),
        (["generate", "--n-head", "0"], "error: n_head / --n-head must be at least 1, not 0."),
        (["generate", "--preset", "tiny", "--new-tokens", "60"], "is above the model's context of 64"),
        (["generate", "--preset", "tiny", "--new-tokens", "4", "--dtype", "fp8"], "error: unknown dtype 'fp8'"),
    ],
)
def test_bad_arguments_give_one_line_and_a_non_zero_exit(args, message, tmp_path, figures, capsys):
    assert main(["bench", *args, "--out", str(tmp_path / "x.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()


def test_unknown_benchmark_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "everything"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'everything'" in err


def test_generate_takes_a_model_shape_other_than_the_presets(tmp_path, figures):
    args = ["generate", "--preset", "tiny", "--n-layer", "3", "--n-embd", "96", "--n-head", "3", "--new-tokens", "4"]
    result = run_bench([*args, "--prompt-len", "4", "--rounds", "1", "--dtype", "fp32"], tmp_path / "shape.json")
    assert {k: result["settings"]["model"][k] for k in ("n_layer", "n_embd", "n_head")} == dict(
        n_layer=3, n_embd=96, n_head=3
    )
    assert all(row["same_tokens"] for row in result["rows"])


def test_every_rung_can_be_measured_again_on_its_own_with_the_compiler_and_tf32_reset(monkeypatch):
    """A notebook cell re-run measures its rung again, from the same configuration, with nothing left over from
    the rungs measured since: the compiler's caches are cleared and TF32 is off unless the rung asks for it."""
    resets, tf32_while_stepping = [], []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(True))
    real_step = shakegpt.bench.ladder.train_step

    def spying_step(*args, **kwargs):
        tf32_while_stepping.append(torch.backends.cuda.matmul.allow_tf32)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(shakegpt.bench.ladder, "train_step", spying_step)
    settings = BenchSettings(preset="tiny", batch_size=1, seq_len=8, steps=1, warmup=0, compile=False, device="cpu")
    ladder = Ladder(settings, log=lambda line: None)
    first = ladder.climb("SDPA attention")  # out of order: it starts from the rungs below it
    assert first["features"]["attn_impl"] == "sdpa" and first["features"]["loss_impl"] == "full"
    ladder.climb("fp32 baseline")
    torch.backends.cuda.matmul.allow_tf32 = True  # as a TF32 rung on an Ampere GPU would leave it
    try:
        again = ladder.climb("SDPA attention")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    assert again["features"] == first["features"]
    assert [row["name"] for row in ladder.result()["rows"]] == ["fp32 baseline", "SDPA attention"]
    assert len(resets) == 3 and tf32_while_stepping == [False, False, False]
    assert ladder.result()["rows"][0]["speedup"] == 1.0


def test_the_chunked_loss_is_kept_above_its_rung_only_where_training_uses_it(monkeypatch):
    """The chunked loss is measured everywhere; rungs above it train with the loss `train` picks for the device:
    chunked off CUDA, and on CUDA the full loss, the chunked one being measured beside the ladder."""
    # It takes every rung.
    monkeypatch.setattr(shakegpt.bench.ladder, "rung_problem", lambda rung, device, allowed: None)
    ladder = Ladder(BenchSettings(preset="tiny", device="cpu"), log=lambda line: None)
    above, chunked = ladder.rung_index("vocab 50304"), ladder.rungs[ladder.rung_index("chunked cross-entropy")]
    assert ladder.features_below(above)["loss_impl"] == "chunked" and chunked.kept(torch.device("cpu"))
    assert not chunked.kept(torch.device("cuda"))  # only the device's type is read
    ladder.device = torch.device("meta")  # a device type that is not CUDA either, to check the rule is the loss's
    assert chunked.kept(ladder.device) == (sg.default_loss(ladder.device) == "chunked")


def test_the_ladder_figure_draws_each_rung_from_its_slowest_to_its_fastest_step():
    """The whiskers of each measured rung end at the throughput of its slowest and fastest timed step, the numbers
    its row records; a skipped rung has a bar of zero and no spread."""
    from shakegpt.bench.ladder import plot_ladder
    from shakegpt.bench.timing import summarise_times

    rows = []
    for name, seconds, speedup in [("fast", [0.5, 0.4, 0.7], 2.0), ("slow", [1.0, 0.8, 1.5], 1.0)]:
        rows.append({"name": name, "skipped": False, "speedup": speedup, **summarise_times(seconds, 1000)})
    rows.append({"name": "not here", "skipped": True, "reason": "this device cannot"})
    result = {"rows": rows, "settings": {"preset": "tiny"}, "device": "cpu: test", "device_type": "cpu"}
    result["torch_threads"] = 1
    fig = plot_ladder(result)
    try:
        ax = fig.axes[0]
        bars = [patch.get_width() for patch in ax.patches]
        (errorbars,) = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
        whiskers = [x for segment in errorbars.lines[2][0].get_segments() for x in (segment[0][0], segment[1][0])]
    finally:
        plt.close(fig)
    assert bars == pytest.approx([1000 / 0.5, 1000 / 1.0, 0])
    assert whiskers == pytest.approx([1000 / 0.7, 1000 / 0.4, 1000 / 1.5, 1000 / 0.8, 0, 0])
    recorded = [row[key] for row in rows[:2] for key in ("tokens_per_s_min", "tokens_per_s_max")]
    assert whiskers[:4] == pytest.approx(recorded)


def test_peer_out_of_memory_is_one_line_naming_the_batch(tmp_path, figures, monkeypatch, capsys):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.07 GiB (fake)")

    monkeypatch.setattr(shakegpt.bench.peers, "alternate", out_of_memory)
    assert (
        main(["bench", "peer", *TINY[:2], "--batch-size", "6", "--seq-len", "8", "--out", str(tmp_path / "p.json")])
        == 1
    )
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "error: out of memory on cpu with both models training on 6 x 8 tokens per step; use a smaller "
        "batch_size / --batch-size, such as 3."
    )
    assert not (tmp_path / "p.json").exists()
