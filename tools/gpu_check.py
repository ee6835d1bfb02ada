#!/usr/bin/env python3
"""A one-shot check of ShakeGPT on a GPU machine without internet, in parts (README: "The GPU check"), each check
within what the budget leaves and its own cap. OUT/gpu_check.json is rewritten after each, so a run cut short keeps
what it measured; OUT holds at most 8 files, OUT/a/b at the deepest (what the device tool brings back). Exit status 0
when no check failed, else 1. tools/gpu_check.sh runs it on the GPU; tests/test_gpu_check.py runs it on a CPU."""

import argparse
import json
import math
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]  # run from a copy of the checkout, without installing the package

from timed_run import GRACE_S, PYTEST, Findings, run_limited, run_pytest  # noqa: E402

import shakegpt_utils as sg  # noqa: E402

PARTS = ("tests", "reference", "ladder", "notebooks", "t4", "sweep", "speed")
NOTEBOOKS = ("05_optimizations", "06_training", "07_evaluation", "08_sampling")
# The reference run with one lever changed (issue 23); "complete" trains on the seed's own corpus and writes samples.
SWEEP = {"batch32": ["--batch-size", "32"], "wsd": ["--schedule", "wsd", "--max-steps", "1500"],
         "muon": ["--optimizer", "muon"], "complete": ["--corpus", "complete"]}  # fmt: skip
# More arguments by device type: of the training runs (--train-args), the ladder (--ladder-args), the speed part.
DEVICE_ARGS = {"cuda": {"train": "", "ladder": "--batch-size 16 --steps 5 --warmup 2", "speed": ""},
               "cpu": {"train": "--max-steps 20", "ladder": "--batch-size 2 --steps 2 --warmup 1 --no-compile",
                       "speed": "--steps 1 --new-tokens 8"}}  # fmt: skip
CLI = [sys.executable, "-m", "shakegpt_utils"]
NOTEBOOK_PASS = [*PYTEST, "-o", "junit_family=xunit1"]  # that JUnit report keeps the test's property `measured`
NOTEBOOK_TEST = "tests/test_notebook_passes.py::test_notebook_pass"
SPEED = ("profile", "generate")  # the speed part's benchmarks
TARGET_LOSS = 0.1  # the reference run's --target-loss
SAMPLE_PROMPT = "Hello world: tell to"  # the reference result's five samples start from it
KEPT = ("train.log", "summary.json", "metrics.jsonl", "loss.png", "samples.txt")  # of the reference run
REFERENCE_KEYS = ("steps", "target_step", "time_to_target_s", "warmup_s", "mean_tok_per_s", "best_val_loss")
# What the report keeps of a ladder rung's row and of a speed benchmark's result (their JSON has it all).
RUNG_KEYS = ("skipped", "reason", "tokens_per_s", "speedup", "ms_median", "mfu", "peak_memory_mb", "warmup_s", "loss")
SPEED_KEYS = ("shares", "ms_per_step", "gpu_idle_share", "ratios")
SAMPLES_LIMIT_S = 90.0  # for loading a checkpoint and writing five samples
WRAP_UP_S = 15.0  # kept back from the budget for copying results and the report
MIN_SUBPROCESS_S = 30.0  # below this a subprocess could not even import torch and start; it is skipped instead


class SkipCheck(Exception):
    """Raised by a check that cannot run here; the message says why."""


def json_safe(value: object) -> object:
    """`value` with NaN and infinities as strings and paths as text, so the report stays valid JSON and shows them."""
    return json.loads(json.dumps(value, default=str), parse_constant=str)


class Report(dict):
    """OUT/gpu_check.json: device, versions, settings, every check's result and the parts' timings."""

    def __init__(self, path: Path, device: str, settings: dict):
        super().__init__(started_at=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), device=device)
        self.update(versions=sg.versions(), settings=settings, checks={}, parts={}, passed=True)
        self.path, self.started = path, time.perf_counter()
        self.write()

    def write(self) -> None:
        self["total_s"] = time.perf_counter() - self.started
        self.path.write_text(json.dumps(json_safe(self), indent=2) + "\n")

    def run(self, name: str, check: Callable[[float], Findings], limit_s: float) -> None:
        """Run and record one check: SKIP below MIN_SUBPROCESS_S, FAIL on any exception, so the others still run."""
        started = time.perf_counter()
        try:
            if limit_s < MIN_SUBPROCESS_S:
                raise SkipCheck(f"only {limit_s:.0f} s of the budget left for it")
            measured, problems = check(limit_s)
            status, reason = ("FAIL", "; ".join(problems)) if problems else ("PASS", None)
        except SkipCheck as skip:
            measured, status, reason = {}, "SKIP", str(skip)
        except Exception as error:
            measured, status = {"traceback": traceback.format_exc()}, "FAIL"
            reason = f"{type(error).__name__}: {sg.first_line(error)}"
        seconds = time.perf_counter() - started
        self["checks"][name] = {"status": status, "seconds": seconds, "reason": reason, "measured": measured}
        self["passed"] = self["passed"] and status != "FAIL"
        print(f"{status:<4} {name:<30} {seconds:6.1f} s  {reason or measured.get('last_line', '')}", flush=True)
        self.write()


def check_tests(args: argparse.Namespace, limit_s: float) -> Findings:
    """`pytest -m device` on the device, its JUnit report in OUT/tests."""
    command = [*PYTEST, "-m", "device", "--device", args.device, *args.pytest_args]
    return run_pytest(command, args.out / "tests" / "junit.xml", limit_s)


def check_notebook(args: argparse.Namespace, name: str, notebook_pass: str, limit_s: float) -> Findings:
    """Notebook `name` through tests/test_notebook_passes.py (the quick mode on a CPU): its failing cell's error, its
    peak memory and skipped rungs; the device pass saves it into OUT/notebooks."""
    minutes = f"{(limit_s - 2 * GRACE_S) / 60:.3f}"  # the notebook's own limit ends before run_limited's SIGINT
    command = [*NOTEBOOK_PASS, f"{NOTEBOOK_TEST}[{name}]", "--notebook-pass", notebook_pass, "--notebook-minutes",
               minutes, "--t4-max-steps", str(args.t4_max_steps)]  # fmt: skip
    command += ["--executed-dir", str(args.out / "notebooks")] if notebook_pass == "device" else []
    with tempfile.TemporaryDirectory(prefix="shakegpt-notebook-") as scratch:
        junit, smoke = Path(scratch) / "junit.xml", "" if args.device_type == "cuda" else "1"
        measured, problems = run_pytest(command, junit, limit_s, SHAKEGPT_SMOKE=smoke)
        cases = ElementTree.parse(junit).iter("testcase") if junit.is_file() else ()
        outcomes = {child.tag: child for case in cases for child in case}
    if "skipped" in outcomes:
        raise SkipCheck(outcomes["skipped"].get("message"))
    if "properties" in outcomes:
        measured.update(json.loads(outcomes["properties"].find("property").get("value")))
    failed = [outcomes["failure"].text.strip()] if "failure" in outcomes else []
    return measured, failed or problems


def check_bench(args: argparse.Namespace, which: str, limit_s: float) -> Findings:
    """`bench WHICH` into OUT/ladder or OUT/speed, its figure and log deleted (the JSON draws it again)."""
    folder, options = ("ladder", args.ladder_args) if which == "ladder" else ("speed", args.speed_args)
    out, cuda = args.out / folder, args.device_type == "cuda"
    out.mkdir(parents=True, exist_ok=True)
    result_path, log = out / f"bench_{which}_{args.device_type}.json", out / f"{which}.log"
    command = [*CLI, "bench", which, "--preset", args.preset, "--device", args.device, "--out", str(result_path)]
    measured, problems = run_limited([*command, *options], log, limit_s, result_path, SHAKEGPT_FIGURES_DIR=str(out))
    for suffix in (".png", ".svg"):
        result_path.with_suffix(suffix).unlink(missing_ok=True)
    if problems:
        return measured, problems
    log.unlink()
    result = json.loads(result_path.read_text())
    if which != "ladder":
        return {**measured, **{key: result[key] for key in SPEED_KEYS if key in result}}, []
    rows = result["rows"]  # every loss finite, no rung skipped on a GPU (a CPU cannot take some)
    measured["rungs"] = {row["name"]: {key: row[key] for key in RUNG_KEYS if key in row} for row in rows}
    problems = [f"{row['name']}: loss {row['loss']}" for row in rows if not math.isfinite(row.get("loss", 0.0))]
    return measured, problems + [f"{row['name']} skipped: {row['reason']}" for row in rows if row["skipped"] and cuda]


def check_training(args: argparse.Namespace, name: str, limit_s: float) -> Findings:
    """The reference run into OUT/reference, or a sweep run (SWEEP[name]) packed into OUT/sweep/NAME.json."""
    out = args.out / ("reference" if name == "reference" else "sweep")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"shakegpt-{name}-") as scratch:  # checkpoints: 1.5 GB each for GPT-2
        run = Path(scratch)
        command = [*CLI, "train", "--preset", args.preset, "--target-loss", str(TARGET_LOSS), "--out", scratch,
                   "--no-progress", "--device", args.device, "--ckpt-interval", "0", "--sample-interval", "0",
                   *SWEEP.get(name, []), *args.train_args]  # fmt: skip
        measured, problems = run_limited(command, run / "train.log", limit_s, run / "summary.json")
        problems += write_samples(args, run) if name in ("reference", "complete") else []
        rows = sg.read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
        problems += training_findings(run, rows, measured)
        if name == "reference":
            shutil.copytree(run, out, dirs_exist_ok=True, ignore=lambda _, names: set(names) - set(KEPT))
            return measured, problems
        log_tail = (run / "train.log").read_text(errors="replace").splitlines()[-40:]
        packed = {"flags": SWEEP[name], "measured": measured, "metrics": rows, "log_tail": log_tail}
        (out / f"{name}.json").write_text(json.dumps(json_safe(packed), indent=1) + "\n")
        if (run / "samples.txt").is_file():
            shutil.copy2(run / "samples.txt", out / f"{name}_samples.txt")
    return measured, problems


def training_findings(run: Path, rows: list[dict], measured: dict) -> list[str]:
    """The run's own summary numbers into `measured`; every logged loss finite, the last below the first."""
    if not (run / "summary.json").is_file():
        return []
    summary, losses = json.loads((run / "summary.json").read_text()), [row["loss"] for row in rows]
    measured.update({key: summary[key] for key in ("stop_reason", *REFERENCE_KEYS, "final_train_loss")})
    measured["first_logged_loss"] = losses[0] if losses else None
    problems = [f"loss {row['loss']} at step {row['step']}" for row in rows if not math.isfinite(row["loss"])]
    if not (losses and losses[-1] < losses[0]):
        problems.append(f"the logged loss did not fall: {losses[:1]} -> {losses[-1:]}")
    if measured["returncode"] != 0 and not measured["cut_by_time_limit"]:  # a run stopped by its limit is no failure
        problems.append(f"train exited with status {measured['returncode']}: {measured['last_line']}")
    return problems


def write_samples(args: argparse.Namespace, run: Path) -> list[str]:
    """RUN/samples.txt: five samples from SAMPLE_PROMPT, with their memorisation, from each checkpoint the run wrote."""
    problems = []
    with (run / "samples.txt").open("w") as samples:
        for name in (name for name in ("last", "best") if (run / f"{name}.pt").is_file()):
            command = [*CLI, "sample", "--ckpt", str(run / f"{name}.pt"), "--prompt", SAMPLE_PROMPT, "--num-samples",
                       "5", "--seed", "1337", "--device", args.device, "--memorisation"]  # fmt: skip
            finished, _ = run_limited(command, run / f"{name}.log", SAMPLES_LIMIT_S)
            samples.write(f"===== {name}.pt =====\n{(run / f'{name}.log').read_text(errors='replace')}\n")
            status = finished["returncode"]
            problems += [f"sampling {name}.pt ended with status {status}: {finished['last_line']}"] if status else []
    return problems


def part_checks(part: str, args: argparse.Namespace) -> list[tuple[str, float | None, Callable[[float], Findings]]]:
    """The checks of one part: (name, the cap on its time limit in minutes or None, the check given its limit)."""
    return {
        "tests": [("tests", args.tests_minutes, partial(check_tests, args))],
        "reference": [("reference_run", args.reference_minutes, partial(check_training, args, "reference"))],
        "ladder": [("ladder", args.ladder_minutes, partial(check_bench, args, "ladder"))],
        "sweep": [(f"sweep/{n}", args.reference_minutes, partial(check_training, args, n)) for n in args.sweep],
        "speed": [(f"speed/{w}", args.speed_minutes, partial(check_bench, args, w)) for w in SPEED],
        "notebooks": [(f"notebooks/{n}", None, partial(check_notebook, args, n, "device")) for n in args.notebooks],
        "t4": [(f"t4/{n}", None, partial(check_notebook, args, n, "t4")) for n in args.notebooks],
    }[part]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--out", required=True, type=Path, help="folder for gpu_check.json and the parts' files (new or empty)")
    add("--device", default="cuda", help="cuda, cuda:N or cpu (the dry run) (default: cuda)")
    add("--part", default="tests,reference,ladder", help=f"comma-separated, of {','.join(PARTS)}")
    add("--preset", default="gpt2", choices=sg.PRESETS, help="model of the ladder and reference run")
    add("--budget-minutes", type=float, default=8.0, help="wall-clock budget of the whole check")
    add("--tests-minutes", type=float, default=2.0, help="time limit of the tests")
    add("--reference-minutes", type=float, default=4.0, help="time limit of the reference run and of each sweep run")
    add("--ladder-minutes", type=float, help="time limit of the ladder (default: what the budget leaves)")
    add("--speed-minutes", type=float, default=2.0, help="time limit of each benchmark of the speed part")
    add("--pytest-args", type=shlex.split, default=[], help="more pytest arguments for the tests, e.g. '-k loss'")
    add("--train-args", type=shlex.split, help="more arguments of the training runs (default: DEVICE_ARGS)")
    add("--ladder-args", type=shlex.split, help="more arguments of bench ladder (default: DEVICE_ARGS)")
    add("--notebooks", default=",".join(NOTEBOOKS), help=f"comma-separated, of {','.join(NOTEBOOKS)}")
    add("--sweep", default=",".join(SWEEP), help=f"the sweep part's runs, comma-separated, of {','.join(SWEEP)}")
    add("--t4-max-steps", type=int, default=200, help="max_steps of notebook 06's training run in the t4 part")
    args = parser.parse_args(argv)
    for option, allowed in (("part", PARTS), ("notebooks", NOTEBOOKS), ("sweep", SWEEP)):
        chosen = getattr(args, option).split(",")
        if not set(chosen) <= set(allowed):
            parser.error(f"--{option} takes a comma-separated list of {', '.join(allowed)}, not {','.join(chosen)}")
        setattr(args, option, [item for item in allowed if item in chosen])
    return args


def prepare(args: argparse.Namespace) -> str:
    """The device's description, its DEVICE_ARGS filled into `args`, OUT made; ShakeGPTError for a bad device or OUT."""
    try:
        device = sg.get_device(args.device)
    except RuntimeError as error:  # torch.device("nonsense")
        raise sg.ShakeGPTError(f"--device {args.device}: {sg.first_line(error)}") from error
    if device.type not in DEVICE_ARGS:
        raise sg.ShakeGPTError(f"--device {args.device}: this check runs on cuda or cpu, not {device.type}.")
    if args.out.exists() and any(args.out.iterdir()):  # the device tool brings back few files
        raise sg.ShakeGPTError(f"--out {args.out} is not empty: give a new folder.")
    args.out.mkdir(parents=True, exist_ok=True)
    args.device_type = device.type
    for what, extra in DEVICE_ARGS[device.type].items():
        if getattr(args, f"{what}_args", None) is None:
            setattr(args, f"{what}_args", shlex.split(extra))
    return sg.describe_device(device)


def main(argv: list[str] | None = None) -> int:
    """Run the parts asked for; a device or folder that cannot be used is one line on stderr and exit status 1."""
    args = parse_args(argv)
    deadline = time.monotonic() + 60 * args.budget_minutes
    try:
        device = prepare(args)
    except sg.ShakeGPTError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    report = Report(args.out / "gpu_check.json", device, dict(vars(args)))
    print(f"{device} | results in {report.path}", flush=True)
    for part in args.part:
        started = time.perf_counter()
        for name, cap_minutes, check in part_checks(part, args):
            cap_s = math.inf if cap_minutes is None else 60 * cap_minutes
            report.run(name, check, min(cap_s, deadline - time.monotonic() - WRAP_UP_S))
        report["parts"][part] = {"seconds": time.perf_counter() - started}
        report.write()
    print(f"{'PASSED' if report['passed'] else 'FAILED'} in {report['total_s']:.0f} s: {report.path}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
