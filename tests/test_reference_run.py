"""The committed reference run (runs/reference/, measured on a GPU by tools/gpu_check.sh): its files agree with one
another, with what the GPU check recomputes from them, and with the numbers the README quotes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import shakegpt_utils as sg

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "runs" / "reference"


@pytest.fixture(scope="module")
def summary() -> dict:
    return json.loads((RUN / "summary.json").read_text())


@pytest.fixture(scope="module")
def metrics() -> list[dict]:
    return sg.read_metrics(RUN / "metrics.jsonl")


def memorisation_numbers(section: str) -> list[dict[str, int]]:
    """Per sample of one checkpoint's section of samples.txt: the longest span copied from the training and from
    the validation text (tokens), and the share of 8-grams found in each (percent)."""
    pattern = (
        r"memorisation: longest span copied from the training text: (\d+) tokens \(\d+ characters\), "
        r"\d+-grams found there: (\d+)% \| validation text \(never trained on\): (\d+) tokens, (\d+)%"
    )
    keys = ("train_span", "train_ngrams", "val_span", "val_ngrams")
    return [dict(zip(keys, map(int, match), strict=True)) for match in re.findall(pattern, section)]


def samples_by_checkpoint() -> dict[str, str]:
    text = (RUN / "samples.txt").read_text()
    return dict(re.findall(r"===== (\w+)\.pt =====\n(.*?)(?=\n===== |\Z)", text, flags=re.S))


def value_range(values: list[int], unit: str) -> str:
    return f"{min(values)}–{max(values)}{unit}"


def test_the_run_stopped_at_the_first_logged_loss_below_the_target(summary: dict, metrics: list[dict]):
    assert summary["stop_reason"] == "target_loss" and summary["target_loss"] == 0.1
    assert summary["steps"] == summary["target_step"] == metrics[-1]["step"]
    assert summary["final_train_loss"] == metrics[-1]["loss"] < 0.1
    assert all(row["loss"] >= 0.1 for row in metrics[:-1])
    assert summary["config"]["preset"] == "gpt2" and summary["n_params"] == 124_475_904
    assert "H200" in summary["device"] and summary["device"].startswith("cuda")


def test_best_validation_loss_is_the_lowest_evaluation(summary: dict, metrics: list[dict]):
    evaluations = {row["step"]: row["val_loss"] for row in metrics if "val_loss" in row}
    best_step = min(evaluations, key=evaluations.get)
    assert (summary["best_val_step"], summary["best_val_loss"]) == (best_step, evaluations[best_step])


def test_the_gpu_check_report_agrees_with_the_summary(summary: dict, metrics: list[dict], gpu_check):
    report = json.loads((RUN / "gpu_check.json").read_text())
    assert report["passed"] and {check["status"] for check in report["checks"].values()} == {"PASS"}
    measured = report["checks"]["reference_run"]["measured"]
    for key in gpu_check.REFERENCE_KEYS:
        assert measured[key] == summary[key], key


def test_five_samples_from_the_reference_prompt_per_checkpoint(gpu_check):
    sections = samples_by_checkpoint()
    assert list(sections) == ["last", "best"]
    for section in sections.values():
        assert section.count(f"\n{gpu_check.SAMPLE_PROMPT}") == 5
        assert len(memorisation_numbers(section)) == 5


def test_readme_quotes_the_measured_numbers(summary: dict, metrics: list[dict]):
    readme = ROOT.joinpath("README.md").read_text()
    section = " ".join(readme.split("### On an NVIDIA H200", 1)[1].split())  # line breaks as spaces
    val_at_last_evaluation = [row for row in metrics if "val_loss" in row][-1]
    quoted = [
        f"training loss {summary['final_train_loss']:.3f} at step {summary['target_step']:,}",
        f"{summary['time_to_target_s']:.1f} s of training after a {summary['warmup_s']:.1f} s compile",
        f"{summary['mean_tok_per_s']:,.0f} tokens/s",
        f"best validation loss {summary['best_val_loss']:.3f} at step {summary['best_val_step']}",
        f"{val_at_last_evaluation['val_loss']:.2f} at step {val_at_last_evaluation['step']:,}",
    ]
    for sweep in ("b32", "lr1e-3"):
        swept = json.loads((RUN / "sweep" / sweep / "summary.json").read_text())
        quoted += [f"below 0.1 at step {swept['target_step']:,}", f"{swept['mean_tok_per_s']:,.0f} tokens/s"]
    last, best = (memorisation_numbers(section) for section in samples_by_checkpoint().values())
    quoted += [
        f"{value_range([s['train_span'] for s in last], '')} tokens long and "
        f"{value_range([s['train_ngrams'] for s in last], '%')} of its 8-grams",
        f"{value_range([s['val_span'] for s in last], '')} tokens and "
        f"{value_range([s['val_ngrams'] for s in last], '%')}",
        f"copies {value_range([s['train_span'] for s in best], '')} tokens, "
        f"{value_range([s['train_ngrams'] for s in best], '%')}",
    ]
    for text in quoted:
        assert text in section, text
