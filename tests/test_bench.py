"""The benchmark command: every subcommand on a tiny model with one or two steps, checked for what it writes (JSON
schema, skipped steps with reasons and no numbers, figures) and for one-line errors. Speed itself is never asserted:
it belongs to the measurements, not to the tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from shakegpt.bench import compile_problem
from shakegpt.cli import main

LADDER = [
    "fp32 baseline",
    "TF32",
    "autocast",
    "SDPA flash attention",
    "chunked cross-entropy",
    "torch.compile",
    "vocab 50304",
    "fused AdamW",
    "larger batch + accumulation",
]
SPEED_KEYS = {"ms_median", "ms_min", "ms_max", "tokens_per_s", "mfu", "peak_memory_mb", "loss", "warmup_s"}
TINY = ["--preset", "tiny", "--batch-size", "1", "--seq-len", "8", "--steps", "2", "--warmup", "0"]


@pytest.fixture
def figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Figures go to a temporary folder instead of the repository's figures/."""
    folder = tmp_path / "figures"
    monkeypatch.setenv("SHAKEGPT_FIGURES_DIR", str(folder))
    return folder


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
    """Times ordered and positive, throughput consistent with the median time."""
    assert 0 < row["ms_min"] <= row["ms_median"] <= row["ms_max"]
    assert row["tokens_per_s"] == pytest.approx(tokens_per_call / (row["ms_median"] / 1000))


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
    last = rows["larger batch + accumulation"]
    assert not last["skipped"] and not last["features"]["tf32"] and not last["features"]["compile"]
    # Rungs accumulate: the last one has everything that ran below it, plus its own change.
    assert last["features"]["attn_impl"] == "sdpa" and last["features"]["loss_impl"] == "chunked"
    assert last["features"]["vocab_size"] == 50304
    assert (last["features"]["batch_size"], last["features"]["grad_accum"]) == (2, 3)
    assert last["tokens_per_step"] == 2 * 8 * 3
    assert rows["fp32 baseline"]["speedup"] == 1.0
    assert_figure(figures, "bench_ladder_cpu")
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == result["device"]
    assert "TF32" in printed and "skipped:" in printed


def test_compile_is_skipped_with_a_reason_where_no_compiler_is_found(monkeypatch):
    import torch

    monkeypatch.setattr("shutil.which", lambda name: None)
    assert "C++ compiler" in compile_problem(torch.device("cpu"), compile_allowed=True)


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
    assert_figure(figures, "bench_peer_cpu")
    assert "ours fp32 / transformers fp32: x" in capsys.readouterr().out


def test_generate_decoders_agree_on_the_tokens_and_ratios_follow_the_rows(tmp_path, figures):
    args = ["generate", "--preset", "tiny", "--new-tokens", "6", "--prompt-len", "4", "--steps", "1", "--dtype", "fp32"]
    result = run_bench(args, tmp_path / "generate.json")
    assert_header(result, "generate")
    rows = {row["decoder"]: row for row in result["rows"]}
    assert set(rows) == {"ours cached", "ours uncached", "transformers generate"}
    for row in rows.values():
        assert row["dtype"] == "fp32"
        assert row["same_tokens"], f"{row['decoder']} chose other tokens than transformers with the same weights"
        assert_timing(row, 6)
    ratio = result["ratios"]["fp32: ours cached / transformers generate"]
    assert ratio == pytest.approx(rows["ours cached"]["tokens_per_s"] / rows["transformers generate"]["tokens_per_s"])
    assert_figure(figures, "bench_generate_cpu")


@pytest.mark.parametrize(
    "args, message",
    [
        (["ladder", "--steps", "0"], "error: --steps must be at least 1, not 0."),
        (["ladder", "--preset", "tiny", "--seq-len", "65"], "error: --seq-len must be in 1..64 for the tiny preset."),
        (["peer", "--preset", "huge"], "error: unknown preset 'huge'; choose one of gpt2, small, tiny."),
        (["ladder", "--warmup", "-1"], "error: --warmup must not be negative, not -1."),
        (["ladder", "--threads", "0"], "error: --threads must be at least 1, not 0."),
        (["generate", "--preset", "tiny", "--new-tokens", "60"], "is above the tiny preset's context of 64"),
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
