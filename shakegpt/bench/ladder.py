"""The optimization ladder, taught in notebook 05: each classic speed-up added on top of the ones before it, and the
training step timed on this device after each. `python -m shakegpt_utils bench ladder` runs it from a terminal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from ..basics import ShakeGPTError, first_line, setting
from ..data import fixed_batches
from ..hardware import (
    DTYPES,
    attention_kernel,
    describe_device,
    enable_tf32,
    peak_flops,
    set_seed,
)
from ..memory import MemoryFit, fit_micro_batch, memory_of
from ..model import GPT
from ..optim import configure_optimizer, estimate_mfu
from ..tokenizer import GPT2_VOCAB_SIZE
from ..train import steps_at_any_batch, train_step
from .rungs import Rung, RungSetup, ladder_rungs, rung_problem
from .settings import BenchSettings, device_label, resolve_for_device, result_header
from .timing import peak_memory_mb, reset_peak_memory, summarise_times, timed_call


class Ladder:
    """The optimization ladder on one device. A notebook measures each rung in its own cell, in any order and as
    often as it likes, and may pass the rung's code as a function of a RungSetup (the library's is used otherwise). A
    rung is measured on a fresh RungSetup: the baseline with the code of every rung below it that this device keeps
    (and that did not fail here), the compiler's caches cleared and TF32 off first, so a cell re-run on its own
    measures the same thing. A rung the device cannot take is recorded as skipped, with the reason."""

    def __init__(self, settings: BenchSettings | None = None, log: Callable[[str], None] = print):
        self.settings, self.device = resolve_for_device(settings)
        self.log = log
        self.memory_fit = self.fit_to_memory()
        # The last rung accumulates grad_accum micro-steps; at least 2, since a training run's default 1 accumulates
        # nothing.
        self.rungs = ladder_rungs(self.settings.batch_size, max(2, self.settings.grad_accum))
        self.changes = {rung.name: rung.change for rung in self.rungs}  # the code each rung runs: a cell's, once given
        self.rows: dict[str, dict] = {}

    def baseline(self) -> RungSetup:
        """The bottom rung: float32, textbook attention, full logits, GPT-2's vocabulary, AdamW with fused=False."""
        config = self.settings.model_config(vocab_size=GPT2_VOCAB_SIZE, attn_impl="manual", loss_impl="full")
        device_type = self.device.type
        return RungSetup(
            self.device, config, lambda model: configure_optimizer(model, device_type=device_type, fused=False)
        )

    def fit_to_memory(self) -> MemoryFit | None:
        """On a GPU, one micro-batch for every rung: the largest (a divisor of the one asked for) with which the
        baseline, the most memory-hungry rung (float32, textbook attention, full logits), fits the GPU's memory. Off
        CUDA, or with fit_memory off, the micro-batch asked for."""
        memory = memory_of(self.device)
        if memory is None or not self.settings.fit_memory:
            return None
        setup = self.fresh(self.baseline())
        _, model, optimizer = self.build(setup)
        step = steps_at_any_batch(model, optimizer, setup, self.device, self.settings.seq_len)
        fit = fit_micro_batch(step, self.settings.batch_size, self.settings.seq_len, memory)
        self.settings = replace(self.settings, batch_size=fit.batch_size)
        self.log(f"every rung: {fit.line()}")
        return fit

    def fresh(self, setup: RungSetup) -> RungSetup:
        """`setup` with TF32 off, whatever an earlier rung (or cell) switched on: only its rungs switch it."""
        enable_tf32(self.device, False)
        return setup

    def taken(self, rung: Rung) -> bool:
        """Whether the rungs above build on this one here: the device takes it, keeps it, and it did not fail."""
        failed = self.rows.get(rung.name, {}).get("skipped", False)
        problem = rung_problem(rung, self.device, self.settings.compile)
        return not failed and problem is None and rung.kept(self.device)

    def setup_below(self, index: int) -> RungSetup:
        """A fresh RungSetup with the code of every rung below `index` that this device keeps (see `taken`)."""
        setup = self.fresh(self.baseline())
        for rung in self.rungs[:index]:
            if self.taken(rung):
                self.changes[rung.name](setup)
        return setup

    def features_below(self, index: int) -> dict:
        """What the rung at `index` starts from, by name (see RungSetup.features)."""
        try:
            return {**self.setup_below(index).features(), "batch_size": self.settings.batch_size}
        finally:
            enable_tf32(self.device, False)

    @property
    def features(self) -> dict:
        """The configuration at the top of the ladder: every rung this device keeps (and that did not fail)."""
        return self.features_below(len(self.rungs))

    def rung_index(self, name: str) -> int:
        names = [rung.name for rung in self.rungs]
        if name not in names:
            raise ShakeGPTError(f"no rung called {name!r}; the rungs are: {', '.join(names)}.")
        return names.index(name)

    def climb(self, name: str | None = None, change: Callable[[RungSetup], None] | None = None) -> dict:
        """Measure the rung called `name` (by default the lowest one not measured yet) and return its row. `change`
        is the rung's code as a cell writes it; from then on it replaces the library's, also under the rungs above.
        Measuring a rung again replaces its row."""
        if name is None:
            name = next((rung.name for rung in self.rungs if rung.name not in self.rows), None)
            if name is None:
                raise ShakeGPTError("every rung of the ladder has been measured already.")
        index = self.rung_index(name)
        rung = self.rungs[index]
        if change is not None:
            self.changes[name] = change
        self.rows.pop(name, None)  # a rung measured again starts clean; one that failed may be taken now
        below = self.features_below(index)
        reason = rung_problem(rung, self.device, self.settings.compile)
        row = {"name": name, "why": rung.why, "kept": rung.kept(self.device)}
        if reason is None:
            setup = self.setup_below(index)
            self.changes[name](setup)
            reason = self.try_measure(setup, row)
        if reason is not None:
            row = {"name": name, "why": rung.why, "kept": False, "features": below, "skipped": True, "reason": reason}
        self.rows[name] = row
        self.add_gains()
        self.log(rung_line(row, self.device))
        return row

    def climb_all(self) -> dict:
        """Measure every rung not measured yet and return the result."""
        for rung in self.rungs:
            if rung.name not in self.rows:
                self.climb(rung.name)
        return self.result()

    def ordered_rows(self) -> list[dict]:
        return [self.rows[rung.name] for rung in self.rungs if rung.name in self.rows]

    def result(self) -> dict:
        """What was measured so far, with the device, versions and settings."""
        return {**result_header("ladder", self.device, self.settings.to_dict()), "rows": self.ordered_rows()}

    def add_gains(self) -> None:
        """Each measured row's speed-up over the baseline, and its gain over the rung it was built on (the nearest
        rung below it that this device keeps), when that one is measured: what this rung alone bought here."""
        baseline = next((row for row in self.ordered_rows() if not row["skipped"]), None)
        built_on = None
        for rung in self.rungs:
            row = self.rows.get(rung.name)
            if row is not None and not row["skipped"]:
                row["speedup"] = row["tokens_per_s"] / baseline["tokens_per_s"]
                row.pop("gain", None)
                if built_on is not None and not built_on["skipped"]:
                    row["gain"], row["built_on"] = row["tokens_per_s"] / built_on["tokens_per_s"], built_on["name"]
                    row["new_kernel"] = row.get("attention_kernel") != built_on.get("attention_kernel")
            if self.taken(rung):
                built_on = row if row is not None else {"skipped": True}

    def build(self, setup: RungSetup) -> tuple[nn.Module, GPT, torch.optim.Optimizer]:
        """A freshly initialised model of the setup (the same seed every rung), what trains (it, or its compiled
        form), and its optimizer. The compiler's caches are cleared first: nothing compiled for another rung is
        reused."""
        torch._dynamo.reset()
        set_seed(self.settings.seed)
        model = GPT(setup.config).to(self.device)
        return setup.compile(model), model, setup.optimizer(model)

    def measure(self, setup: RungSetup) -> dict:
        """Warm up, then time `steps` optimizer steps of what `setup` describes."""
        s, seq_len = self.settings, self.settings.seq_len
        features = {**setup.features(), "batch_size": s.batch_size}
        runnable, model, optimizer = self.build(setup)
        batches = fixed_batches(GPT2_VOCAB_SIZE, s.batch_size, seq_len, s.seed)
        step = lambda: train_step(runnable, optimizer, batches, setup.grad_accum, setup, self.device)[0]  # noqa: E731
        reset_peak_memory(self.device)
        warmup_seconds = sum(timed_call(step, self.device)[0] for _ in range(s.warmup))
        timings = [timed_call(step, self.device) for _ in range(s.steps)]
        tokens_per_step = s.batch_size * seq_len * setup.grad_accum
        row = summarise_times([t for t, _ in timings], tokens_per_step)
        dtype = DTYPES[features["dtype"]]
        peak = peak_flops(self.device, dtype)
        row["mfu"] = estimate_mfu(model.num_params(), model.config, seq_len, row["tokens_per_s"], peak)
        row.update(
            features=features,
            peak_memory_mb=peak_memory_mb(self.device),
            loss=float(timings[-1][1]),
            warmup_s=warmup_seconds,
            tokens_per_step=tokens_per_step,
        )
        if features["attn_impl"] == "sdpa":
            config = setup.config
            row["attention_kernel"] = attention_kernel(self.device, dtype, config.n_head, config.head_size, seq_len)
        return row

    def try_measure(self, setup: RungSetup, row: dict) -> str | None:
        """Measure into `row`; a compile failure or running out of memory becomes the reason to skip the rung."""
        compiling = setup.features()["compile"]
        try:
            row.update(skipped=False, **self.measure(setup))
        except torch.OutOfMemoryError:
            batch_size = self.settings.batch_size
            return (
                f"out of memory at {batch_size} sequences of {self.settings.seq_len:,} tokens per micro-step; a "
                f"smaller {setting('batch_size')} (such as {max(1, batch_size // 2)}) fits more rungs"
            )
        except Exception as error:  # noqa: BLE001  (the compiler raises many types; any of them skips the rung)
            if not compiling:
                raise
            return f"torch.compile failed here: {type(error).__name__}: {first_line(error)}"
        finally:
            enable_tf32(self.device, False)
        return None


def gain_note(row: dict) -> str:
    """What a measured rung bought over the rung it was built on, in words when it bought nothing."""
    if "gain" not in row:
        return ""
    gain, verdict = row["gain"], ""
    if gain < 0.97:
        verdict = ": slower here"
    elif gain < 1.03:
        verdict = ": buys nothing here"
    return f"  x{gain:.2f} over {row['built_on']}{verdict}"


def rung_line(row: dict, device: torch.device) -> str:
    """One printed line per rung."""
    if row["skipped"]:
        return f"{row['name']:<28} skipped: {row['reason']}"
    mfu = f"{100 * row['mfu']:5.1f}%" if row.get("mfu") is not None else "   n/a"
    memory = f"{row['peak_memory_mb']:8.0f} MB" if row["peak_memory_mb"] is not None else "     n/a"
    shown = "attention_kernel" in row and row.get("new_kernel", True)  # where it changed
    kernel = f"  attention kernel: {row['attention_kernel']}" if shown else ""
    beside = "" if row["kept"] else f"  (beside the ladder: not kept on {device.type})"
    return (
        f"{row['name']:<28} {row['ms_median']:9.1f} ms/step ({row['ms_min']:.0f}-{row['ms_max']:.0f})"
        f" {row['tokens_per_s']:10.0f} tok/s  MFU {mfu}  peak {memory}  loss {row['loss']:.3f}"
        f"  warm-up {row['warmup_s']:.1f} s{kernel}{gain_note(row)}{beside}"
    )


def bench_ladder(settings: BenchSettings | None = None, log: Callable[[str], None] = print) -> tuple[dict, plt.Figure]:
    """Run the whole optimization ladder on this device; the result and its figure (save them with save_bench)."""
    ladder = Ladder(settings, log)
    log(describe_device(ladder.device))
    result = ladder.climb_all()
    return result, plot_ladder(result)


def plot_ladder(result: dict) -> plt.Figure:
    """Tokens per second of each rung as horizontal bars with the min-max range of its step times as error bars, and
    the speed-up over the baseline; a rung measured beside the ladder (not kept on this device) in another colour,
    skipped rungs in their place, marked as skipped."""
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    names = [row["name"] for row in rows]
    values = [0 if row["skipped"] else row["tokens_per_s"] for row in rows]
    # The whiskers reach the throughput of the slowest and of the fastest timed step, as the rows record them.
    below = [0 if row["skipped"] else v - row["tokens_per_s_min"] for row, v in zip(rows, values, strict=True)]
    above = [0 if row["skipped"] else row["tokens_per_s_max"] - v for row, v in zip(rows, values, strict=True)]
    beside = [not row["skipped"] and not row.get("kept", True) for row in rows]  # measured, not built upon
    colors = [
        "lightgray" if row["skipped"] else "tab:orange" if aside else "tab:blue"
        for row, aside in zip(rows, beside, strict=True)
    ]
    ax.barh(names, values, color=colors, xerr=[below, above], capsize=3, ecolor="black")
    for y, (row, aside) in enumerate(zip(rows, beside, strict=True)):
        label = "skipped" if row["skipped"] else f"{row['tokens_per_s']:,.0f} tok/s (x{row['speedup']:.2f})"
        ax.text(max(values) * 0.01, y, label + (", beside the ladder" if aside else ""), va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("training tokens per second (bars: median step; whiskers: fastest and slowest step)")
    ax.set_title(f"optimization ladder — {result['settings']['preset']} preset\n{device_label(result)}", fontsize=9)
    fig.tight_layout()
    return fig
