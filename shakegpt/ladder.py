"""The optimization ladder, taught in notebook 05: each classic speed-up added on top of the ones before it, and the
training step timed on this device after each. `python -m shakegpt_utils bench ladder` runs it from a terminal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from .benchmark import (
    BenchSettings,
    device_label,
    peak_memory_mb,
    reset_peak_memory,
    resolve_for_device,
    result_header,
    summarise_times,
    timed_call,
)
from .config import GPT2_VOCAB_SIZE, PADDED_VOCAB_SIZE, ShakeGPTError, first_line, setting
from .data import fixed_batches
from .hardware import (
    DTYPES,
    attention_kernel,
    auto_dtype,
    compile_problem,
    describe_device,
    enable_tf32,
    get_precision,
    gpu_has_native_bf16,
    peak_flops,
    set_seed,
)
from .memory import MemoryFit, fit_micro_batch, memory_of
from .model import GPT
from .optim import configure_optimizer, estimate_mfu
from .train import steps_at_any_batch, train_step


@dataclass(frozen=True)
class Rung:
    """One step of the ladder: what it changes on top of the rungs below, and why that should be faster. A rung
    with `kept_on` is measured everywhere but carried up the ladder only on those device types."""

    name: str
    change: dict
    why: str
    kept_on: tuple[str, ...] | None = None
    requires: tuple[str, ...] = ()  # features a rung below must have switched on


def ladder_rungs(batch_size: int, grad_accum: int) -> list[Rung]:
    """The ladder, cheapest and most general first; each rung keeps everything the rungs below enabled."""
    return [
        Rung("fp32 baseline", {}, "plain float32 everywhere, textbook attention, full logits then cross-entropy"),
        Rung("TF32", {"tf32": True}, "fp32 matrix products on tensor cores with a 10-bit mantissa"),
        Rung("autocast", {"dtype": "auto"}, "matrix products in bf16 (fp16 with loss scaling on older GPUs)"),
        Rung("SDPA flash attention", {"attn_impl": "sdpa"}, "one fused attention kernel, no T x T matrix in memory"),
        Rung(
            "chunked cross-entropy",
            {"loss_impl": "chunked"},
            "output layer and loss by chunks of rows: never the full tokens x vocab logits",
        ),
        Rung("torch.compile", {"compile": True}, "kernels fused by the compiler, fewer trips through memory"),
        Rung(
            "compiled full cross-entropy",
            {"loss_impl": "full"},
            "full logits and F.cross_entropy inside the compiled graph (nanoGPT's way; kept on CUDA, where it wins)",
            kept_on=("cuda",),
            requires=("compile",),
        ),
        Rung("vocab 50304", {"vocab_size": PADDED_VOCAB_SIZE}, "a vocabulary padded to a multiple of 128"),
        Rung(
            "fused AdamW",
            {"fused_adamw": True},
            "the update in fused kernels; below it fused=False, so torch loops over the tensors (no foreach)",
        ),
        Rung(
            "gradient accumulation",
            {"grad_accum": grad_accum},
            f"{grad_accum} micro-steps of {batch_size} sequences (unchanged) per optimizer step: "
            f"{grad_accum}x the tokens per step",
        ),
    ]


BASELINE_FEATURES = {
    "dtype": "fp32",
    "tf32": False,
    "attn_impl": "manual",
    "loss_impl": "full",
    "compile": False,
    "vocab_size": GPT2_VOCAB_SIZE,
    "fused_adamw": False,
    "grad_accum": 1,
}


def fused_adamw_problem(device: torch.device) -> str | None:
    """Why torch's fused AdamW cannot run on this device, or None when one step of it works."""
    try:
        weight = torch.zeros(2, device=device, requires_grad=True)
        weight.grad = torch.ones_like(weight)
        torch.optim.AdamW([weight], fused=True).step()
    except (RuntimeError, ValueError) as error:
        return f"torch {torch.__version__} has no fused AdamW for {device.type}: {first_line(error)}"
    return None


def ladder_compile_problem(device: torch.device, compile_allowed: bool) -> str | None:
    """Why torch.compile is not tried here, or None: switched off, or it cannot build and run code on this device."""
    if not compile_allowed:
        return "switched off (--no-compile, the default off CUDA; --compile tries it): compiling takes a minute or more"
    return compile_problem(device)


def rung_problem(rung: Rung, device: torch.device, compile_allowed: bool) -> str | None:
    """Why this device cannot take this rung (a sentence), or None when it can."""
    if rung.change.get("tf32") and not gpu_has_native_bf16(device):
        return (
            f"TF32 is a tensor-core format of NVIDIA GPUs from Ampere (compute capability 8.0) on; {device.type} "
            "has none, so float32 products stay float32"
        )
    if rung.change.get("dtype") == "auto" and auto_dtype(device) == "fp32":
        return (
            "no native bf16 here (and fp16 with loss scaling is for GPUs without bf16): autocast would only add "
            "casts, so this device trains in float32"
        )
    if rung.change.get("compile"):
        return ladder_compile_problem(device, compile_allowed)
    if rung.change.get("fused_adamw"):
        return fused_adamw_problem(device)
    return None


class Ladder:
    """The optimization ladder on one device. A notebook measures each rung in its own cell, in any order and as
    often as it likes: a rung's configuration is the baseline plus the changes of every rung below it that this
    device takes (and that did not fail here). A rung the device cannot take is recorded as skipped, with the
    reason, and changes nothing."""

    def __init__(self, settings: BenchSettings | None = None, log: Callable[[str], None] = print):
        self.settings, self.device = resolve_for_device(settings)
        self.log = log
        self.memory_fit = self.fit_to_memory()
        # The last rung accumulates grad_accum micro-steps; at least 2, since a training run's default 1 accumulates
        # nothing.
        self.rungs = ladder_rungs(self.settings.batch_size, max(2, self.settings.grad_accum))
        self.rows: dict[str, dict] = {}

    def fit_to_memory(self) -> MemoryFit | None:
        """On a GPU, one micro-batch for every rung: the largest (a divisor of the one asked for) with which the
        baseline, the most memory-hungry rung (float32, textbook attention, full logits), fits the GPU's memory. Off
        CUDA, or with fit_memory off, the micro-batch asked for."""
        memory = memory_of(self.device)
        if memory is None or not self.settings.fit_memory:
            return None
        _, model, optimizer = self.build(BASELINE_FEATURES)
        step = steps_at_any_batch(
            model, optimizer, get_precision(self.device, "fp32"), self.device, self.settings.seq_len
        )
        fit = fit_micro_batch(step, self.settings.batch_size, self.settings.seq_len, memory)
        self.settings = replace(self.settings, batch_size=fit.batch_size)
        self.log(f"every rung: {fit.line()}")
        return fit

    def features_below(self, index: int) -> dict:
        """The configuration the rung at `index` starts from."""
        features = {**BASELINE_FEATURES, "batch_size": self.settings.batch_size}
        for rung in self.rungs[:index]:
            failed = self.rows.get(rung.name, {}).get("skipped", False)
            if failed or rung_problem(rung, self.device, self.settings.compile) is not None:
                continue
            if rung.kept_on is None or self.device.type in rung.kept_on:
                features.update(rung.change)
        if features["dtype"] == "auto":
            features["dtype"] = auto_dtype(self.device)
        return features

    @property
    def features(self) -> dict:
        """The configuration at the top of the ladder: every rung this device takes (and that did not fail)."""
        return self.features_below(len(self.rungs))

    def rung_index(self, name: str) -> int:
        names = [rung.name for rung in self.rungs]
        if name not in names:
            raise ShakeGPTError(f"no rung called {name!r}; the rungs are: {', '.join(names)}.")
        return names.index(name)

    def climb(self, name: str | None = None) -> dict:
        """Measure the rung called `name` (by default the lowest one not measured yet) and return its row; measuring
        a rung again replaces its row."""
        if name is None:
            name = next((rung.name for rung in self.rungs if rung.name not in self.rows), None)
            if name is None:
                raise ShakeGPTError("every rung of the ladder has been measured already.")
        index = self.rung_index(name)
        rung, below = self.rungs[index], self.features_below(index)
        candidate = {**below, **rung.change}
        if candidate["dtype"] == "auto":
            candidate["dtype"] = auto_dtype(self.device)
        row = {"name": rung.name, "why": rung.why, "features": candidate}
        missing = [feature for feature in rung.requires if not below[feature]]
        reason = rung_problem(rung, self.device, self.settings.compile)
        if reason is None and missing:
            reason = f"it needs {', '.join(missing)}, which did not run on this device"
        reason = reason or self.try_measure(candidate, row)
        if reason is None and "attn_impl" in rung.change:
            row["attention_kernel"] = self.attention_kernel(candidate)
        if reason is not None:
            row = {"name": rung.name, "why": rung.why, "features": below, "skipped": True, "reason": reason}
        self.rows[rung.name] = row
        add_speedups(self.ordered_rows())
        self.log(rung_line(row))
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

    def attention_kernel(self, features: dict) -> str:
        """The kernel scaled_dot_product_attention runs for the model of `features` at its precision."""
        config = self.settings.model_config()
        return attention_kernel(
            self.device, DTYPES[features["dtype"]], config.n_head, config.head_size, self.settings.seq_len
        )

    def build(self, features: dict) -> tuple[nn.Module, GPT, torch.optim.Optimizer]:
        """A freshly initialised model (same seed every rung), maybe compiled, and its optimizer. The compiler's
        caches and the TF32 switch are reset first, so a rung measures only what its features say."""
        torch._dynamo.reset()
        enable_tf32(self.device, features["tf32"])
        set_seed(self.settings.seed)
        changes = {name: features[name] for name in ("vocab_size", "attn_impl", "loss_impl")}
        model = GPT(self.settings.model_config(**changes)).to(self.device)
        optimizer = configure_optimizer(model, device_type=self.device.type, fused=features["fused_adamw"])
        runnable = torch.compile(model) if features["compile"] else model
        return runnable, model, optimizer

    def measure(self, features: dict) -> dict:
        """Warm up, then time `steps` optimizer steps of the configuration `features` describes."""
        s, seq_len = self.settings, self.settings.seq_len
        runnable, model, optimizer = self.build(features)
        precision = get_precision(self.device, features["dtype"])
        batches = fixed_batches(GPT2_VOCAB_SIZE, features["batch_size"], seq_len, s.seed)
        grad_accum = features["grad_accum"]
        step = lambda: train_step(runnable, optimizer, batches, grad_accum, precision, self.device)[0]  # noqa: E731
        reset_peak_memory(self.device)
        warmup_seconds = sum(timed_call(step, self.device)[0] for _ in range(s.warmup))
        timings = [timed_call(step, self.device) for _ in range(s.steps)]
        tokens_per_step = features["batch_size"] * seq_len * grad_accum
        row = summarise_times([t for t, _ in timings], tokens_per_step)
        peak = peak_flops(self.device, precision.dtype)
        row["mfu"] = estimate_mfu(model.num_params(), model.config, seq_len, row["tokens_per_s"], peak)
        row.update(
            peak_memory_mb=peak_memory_mb(self.device),
            loss=float(timings[-1][1]),
            warmup_s=warmup_seconds,
            tokens_per_step=tokens_per_step,
        )
        return row

    def try_measure(self, features: dict, row: dict) -> str | None:
        """Measure into `row`; a compile failure or running out of memory becomes the reason to skip the rung."""
        try:
            row.update(skipped=False, **self.measure(features))
        except torch.OutOfMemoryError:
            batch_size = features["batch_size"]
            return (
                f"out of memory at {batch_size} sequences of {self.settings.seq_len:,} tokens per micro-step; a "
                f"smaller {setting('batch_size')} (such as {max(1, batch_size // 2)}) fits more rungs"
            )
        except Exception as error:  # noqa: BLE001  (the compiler raises many types; any of them skips the rung)
            if not features["compile"]:
                raise
            return f"torch.compile failed here: {type(error).__name__}: {first_line(error)}"
        finally:
            enable_tf32(self.device, False)
        return None


def add_speedups(rows: list[dict]) -> None:
    """Each measured row's throughput relative to the first measured row."""
    measured = [row for row in rows if not row["skipped"]]
    for row in measured:
        row["speedup"] = row["tokens_per_s"] / measured[0]["tokens_per_s"]


def rung_line(row: dict) -> str:
    """One printed line per rung."""
    if row["skipped"]:
        return f"{row['name']:<28} skipped: {row['reason']}"
    mfu = f"{100 * row['mfu']:5.1f}%" if row.get("mfu") is not None else "   n/a"
    memory = f"{row['peak_memory_mb']:8.0f} MB" if row["peak_memory_mb"] is not None else "     n/a"
    kernel = f"  attention kernel: {row['attention_kernel']}" if "attention_kernel" in row else ""
    return (
        f"{row['name']:<28} {row['ms_median']:9.1f} ms/step ({row['ms_min']:.0f}-{row['ms_max']:.0f})"
        f" {row['tokens_per_s']:10.0f} tok/s  MFU {mfu}  peak {memory}  loss {row['loss']:.3f}"
        f"  warm-up {row['warmup_s']:.1f} s{kernel}"
    )


def bench_ladder(settings: BenchSettings | None = None, log: Callable[[str], None] = print) -> tuple[dict, plt.Figure]:
    """Run the whole optimization ladder on this device; the result and its figure (save them with save_bench)."""
    ladder = Ladder(settings, log)
    log(describe_device(ladder.device))
    result = ladder.climb_all()
    return result, plot_ladder(result)


def plot_ladder(result: dict) -> plt.Figure:
    """Tokens per second of each rung as horizontal bars with the min-max range of its step times as error bars, and
    the speed-up over the baseline; skipped rungs keep their place, marked as skipped."""
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    names = [row["name"] for row in rows]
    values = [0 if row["skipped"] else row["tokens_per_s"] for row in rows]
    # The whiskers reach the throughput of the slowest and of the fastest timed step, as the rows record them.
    below = [0 if row["skipped"] else v - row["tokens_per_s_min"] for row, v in zip(rows, values, strict=True)]
    above = [0 if row["skipped"] else row["tokens_per_s_max"] - v for row, v in zip(rows, values, strict=True)]
    colors = ["lightgray" if row["skipped"] else "tab:blue" for row in rows]
    ax.barh(names, values, color=colors, xerr=[below, above], capsize=3, ecolor="black")
    for y, row in enumerate(rows):
        label = "skipped" if row["skipped"] else f"{row['tokens_per_s']:,.0f} tok/s (x{row['speedup']:.2f})"
        ax.text(max(values) * 0.01, y, label, va="center", fontsize=8, color="black")
    ax.invert_yaxis()
    ax.set_xlabel("training tokens per second (bars: median step; whiskers: fastest and slowest step)")
    ax.set_title(f"optimization ladder — {result['settings']['preset']} preset\n{device_label(result)}", fontsize=9)
    fig.tight_layout()
    return fig
