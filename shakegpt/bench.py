"""Section 9 — benchmarks: the optimization ladder, our model against transformers' GPT-2, and generation speed.

Every number is measured on the device it names: steps are timed with the device synchronised, warm-up (and the
compilation it triggers) is timed apart, and contestants compared with each other run alternately in one process so
that a busy machine slows them alike.
"""

from __future__ import annotations

import copy
import json
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn

from .config import GPT2_VOCAB_SIZE, PADDED_VOCAB_SIZE, GPTConfig, ShakeGPTError, first_line
from .data import TokenBatches
from .hardware import (
    DTYPES,
    auto_dtype,
    describe_device,
    enable_tf32,
    get_device,
    get_precision,
    gpu_has_native_bf16,
    peak_flops,
    set_seed,
    synchronize,
    versions,
)
from .model import GPT
from .optim import configure_optimizer, estimate_mfu
from .plots import figures_dir, save_figure
from .sampling import generate
from .train import train_step

# ---- settings and measurement ------------------------------------------------------------------------------------


@dataclass
class BenchSettings:
    """What every training benchmark shares: the model preset, the batch, and how many steps to run and time."""

    preset: str = "small"
    batch_size: int = 8
    seq_len: int | None = None  # None: the preset's context length
    steps: int = 5
    warmup: int = 2
    device: str = "auto"
    seed: int = 1337

    def check(self) -> GPTConfig:
        """The preset's config, after refusing settings that cannot run."""
        config = GPTConfig.preset(self.preset)
        for name in ("batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ShakeGPTError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}.")
        if self.warmup < 0:
            raise ShakeGPTError(f"--warmup must not be negative, not {self.warmup}.")
        if self.seq_len is not None and not 1 <= self.seq_len <= config.block_size:
            raise ShakeGPTError(f"--seq-len must be in 1..{config.block_size} for the {self.preset} preset.")
        return config

    @property
    def tokens(self) -> int:
        return self.seq_len or GPTConfig.preset(self.preset).block_size


def timed_call(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    """Seconds `fn` takes, measured from an idle device until its queued work is done, and what it returned."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def summarise_times(seconds: list[float], tokens_per_call: int) -> dict:
    """Median and spread of per-call times in milliseconds, and the throughput at the median."""
    median = statistics.median(seconds)
    return {
        "ms_median": 1000 * median,
        "ms_min": 1000 * min(seconds),
        "ms_max": 1000 * max(seconds),
        "tokens_per_s": tokens_per_call / median,
    }


def fixed_batches(vocab: int, batch_size: int, seq_len: int, seed: int) -> TokenBatches:
    """Batches cut from one seeded stream of random tokens: no corpus needed, and every rung sees the same data."""
    generator = np.random.default_rng(seed)
    tokens = generator.integers(0, vocab, size=batch_size * (seq_len + 1) * 4, dtype=np.int64)
    return TokenBatches(tokens.astype(np.uint16), batch_size, seq_len, shuffle=False)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new high-water mark: CUDA's allocator counter, or the process's peak resident size on Linux."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif Path("/proc/self/clear_refs").exists():
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory since reset_peak_memory: tensors on CUDA, the whole process (resident set) on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def header(kind: str, device: torch.device, settings: dict) -> dict:
    """The part of every result file that says what was measured, where and with what."""
    return {
        "benchmark": kind,
        "device": describe_device(device),
        "device_type": device.type,
        "versions": versions(),
        "settings": settings,
        "torch_threads": torch.get_num_threads(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


# ---- the ladder --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rung:
    """One step of the ladder: what it changes on top of the rungs below, and why that should be faster."""

    name: str
    change: dict
    why: str


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
        Rung("vocab 50304", {"vocab_size": PADDED_VOCAB_SIZE}, "a vocabulary padded to a multiple of 128"),
        Rung("fused AdamW", {"fused_adamw": True}, "the optimizer update in one kernel instead of one per tensor"),
        Rung(
            "larger batch + accumulation",
            {"batch_size": 2 * batch_size, "grad_accum": grad_accum},
            f"{2 * batch_size} sequences per micro-step, {grad_accum} micro-steps per optimizer step",
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


def compile_problem(device: torch.device, compile_allowed: bool) -> str | None:
    """Why torch.compile is not tried here, or None: switched off, no C compiler for the CPU, or Apple's MPS."""
    if not compile_allowed:
        return "switched off (--no-compile): compiling takes a minute or more, which a quick run cannot afford"
    if device.type == "mps":
        return "torch.compile for Apple's MPS is still experimental in PyTorch"
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "cl")):
        return "torch.compile needs a C++ compiler for CPU code, and none was found (on Windows: Visual Studio)"
    return None


def rung_problem(rung: Rung, device: torch.device, compile_allowed: bool) -> str | None:
    """Why this device cannot take this rung (a sentence), or None when it can."""
    if rung.change.get("tf32") and not gpu_has_native_bf16(device):
        return (
            f"TF32 is a tensor-core format of NVIDIA GPUs from Ampere (compute capability 8.0) on; {device.type} "
            "has none, so float32 products stay float32"
        )
    if rung.change.get("dtype") == "auto" and auto_dtype(device) == "fp32":
        return (
            "no native bf16 here (and fp16 with loss scaling needs a CUDA GPU): autocast would only add casts, so "
            "this device trains in float32"
        )
    if rung.change.get("compile"):
        return compile_problem(device, compile_allowed)
    if rung.change.get("fused_adamw"):
        return fused_adamw_problem(device)
    return None


class Ladder:
    """The optimization ladder on one device, climbed a rung at a time (a notebook measures each in its own cell)
    or all at once. Each rung adds its change to the features of the last rung that ran; a rung the device cannot
    take is recorded as skipped, with the reason, and changes nothing."""

    def __init__(
        self,
        settings: BenchSettings | None = None,
        compile_allowed: bool = True,
        grad_accum: int = 2,
        log: Callable[[str], None] = print,
    ):
        self.settings = settings or BenchSettings()
        self.settings.check()
        if grad_accum < 1:
            raise ShakeGPTError(f"--grad-accum must be at least 1, not {grad_accum}.")
        self.device = get_device(self.settings.device)
        self.compile_allowed, self.grad_accum, self.log = compile_allowed, grad_accum, log
        self.rungs = ladder_rungs(self.settings.batch_size, grad_accum)
        self.features = {**BASELINE_FEATURES, "batch_size": self.settings.batch_size}
        self.rows: list[dict] = []

    def climb(self, name: str | None = None) -> dict:
        """Measure the next rung (which must be `name`, when given) and return its row."""
        if len(self.rows) == len(self.rungs):
            raise ShakeGPTError("every rung of the ladder has been measured already.")
        rung = self.rungs[len(self.rows)]
        if name is not None and name != rung.name:
            raise ShakeGPTError(f"the next rung is {rung.name!r}, not {name!r}: the ladder is climbed in order.")
        candidate = {**self.features, **rung.change}
        if candidate["dtype"] == "auto":
            candidate["dtype"] = auto_dtype(self.device)
        row = {"name": rung.name, "why": rung.why, "features": candidate}
        reason = rung_problem(rung, self.device, self.compile_allowed)
        if reason is None:
            reason = self.try_measure(candidate, row)
        if reason is not None:
            row = {**row, "features": self.features, "skipped": True, "reason": reason}
        else:
            self.features = candidate
        self.rows.append(row)
        add_speedups(self.rows)
        self.log(format_row(row))
        return row

    def climb_all(self) -> dict:
        """Measure every rung left and return the result."""
        while len(self.rows) < len(self.rungs):
            self.climb()
        return self.result()

    def result(self) -> dict:
        """What was measured so far, with the device, versions and settings."""
        settings = {**vars(self.settings), "grad_accum": self.grad_accum, "compile": self.compile_allowed}
        return {**header("ladder", self.device, settings), "rows": self.rows}

    def build(self, features: dict) -> tuple[nn.Module, GPT, torch.optim.Optimizer]:
        """A freshly initialised model (same seed every rung), maybe compiled, and its optimizer."""
        set_seed(self.settings.seed)
        config = GPTConfig.preset(
            self.settings.preset,
            vocab_size=features["vocab_size"],
            attn_impl=features["attn_impl"],
            loss_impl=features["loss_impl"],
        )
        model = GPT(config).to(self.device)
        optimizer = configure_optimizer(model, device_type=self.device.type, fused=features["fused_adamw"])
        runnable = torch.compile(model) if features["compile"] else model
        return runnable, model, optimizer

    def measure(self, features: dict) -> dict:
        """Warm up, then time `steps` optimizer steps of the configuration `features` describes."""
        s = self.settings
        if features["tf32"]:
            enable_tf32(self.device)
        precision = get_precision(self.device, features["dtype"])
        runnable, model, optimizer = self.build(features)
        batches = fixed_batches(GPT2_VOCAB_SIZE, features["batch_size"], s.tokens, s.seed)
        step = lambda: train_step(runnable, optimizer, batches, features["grad_accum"], precision, self.device)[0]  # noqa: E731
        reset_peak_memory(self.device)
        warmup_seconds = sum(timed_call(step, self.device)[0] for _ in range(s.warmup))
        timings = [timed_call(step, self.device) for _ in range(s.steps)]
        tokens_per_step = features["batch_size"] * s.tokens * features["grad_accum"]
        row = summarise_times([t for t, _ in timings], tokens_per_step)
        peak = peak_flops(self.device, precision.dtype)
        row["mfu"] = estimate_mfu(model.num_params(), model.config, s.tokens, row["tokens_per_s"], peak)
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
            return f"out of memory at {features['batch_size']} sequences of {self.settings.tokens} tokens"
        except Exception as error:  # noqa: BLE001  (the compiler raises many types; any of them skips the rung)
            if not features["compile"]:
                raise
            return f"torch.compile failed here: {type(error).__name__}: {first_line(error)}"
        return None


def add_speedups(rows: list[dict]) -> None:
    """Each measured row's throughput relative to the first measured row."""
    measured = [row for row in rows if not row["skipped"]]
    for row in measured:
        row["speedup"] = row["tokens_per_s"] / measured[0]["tokens_per_s"]


def format_row(row: dict) -> str:
    """One printed line per rung."""
    if row["skipped"]:
        return f"{row['name']:<28} skipped: {row['reason']}"
    mfu = f"{100 * row['mfu']:5.1f}%" if row.get("mfu") is not None else "   n/a"
    memory = f"{row['peak_memory_mb']:8.0f} MB" if row["peak_memory_mb"] is not None else "     n/a"
    return (
        f"{row['name']:<28} {row['ms_median']:9.1f} ms/step ({row['ms_min']:.0f}-{row['ms_max']:.0f})"
        f" {row['tokens_per_s']:10.0f} tok/s  MFU {mfu}  peak {memory}  loss {row['loss']:.3f}"
        f"  warm-up {row['warmup_s']:.1f} s"
    )


def bench_ladder(
    settings: BenchSettings | None = None,
    compile_allowed: bool = True,
    grad_accum: int = 2,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the whole optimization ladder on this device and return the result (save it with save_bench)."""
    ladder = Ladder(settings, compile_allowed, grad_accum, log)
    log(describe_device(ladder.device))
    return ladder.climb_all()


def save_bench(result: dict, out: str | Path | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """Write a result as JSON (default figures/bench_KIND_DEVICE.json) and its chart as figures/bench_KIND_DEVICE
    .png and .svg; return the three paths."""
    path = Path(out) if out else figures_dir() / f"bench_{result['benchmark']}_{result['device_type']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    if result["benchmark"] == "ladder":
        fig = plot_ladder(result)
    else:
        unit = "training" if result["benchmark"] == "peer" else "generated (batch 1, greedy)"
        fig = plot_throughput(result, f"{unit} tokens per second")
    figure = save_figure(fig, f"bench_{result['benchmark']}_{result['device_type']}")
    plt.close(fig)
    log(f"wrote {path} and {figure[0].name} (+ .svg) in {figure[0].parent}")
    return [path, *figure]


def device_label(result: dict) -> str:
    """The device line, with the number of CPU threads torch used when it ran on a CPU."""
    if result["device_type"] != "cpu":
        return result["device"]
    return f"{result['device']}; {result['torch_threads']} torch thread(s)"


def plot_ladder(result: dict) -> plt.Figure:
    """Tokens per second of each rung as horizontal bars, with the speed-up over the baseline; skipped rungs keep
    their place, marked as skipped."""
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    names = [row["name"] for row in rows]
    values = [0 if row["skipped"] else row["tokens_per_s"] for row in rows]
    ax.barh(names, values, color=["lightgray" if row["skipped"] else "tab:blue" for row in rows])
    for y, row in enumerate(rows):
        label = "skipped" if row["skipped"] else f"{row['tokens_per_s']:,.0f} tok/s (x{row['speedup']:.2f})"
        ax.text(max(values) * 0.01, y, label, va="center", fontsize=8, color="black")
    ax.invert_yaxis()
    ax.set_xlabel("training tokens per second")
    title = f"optimization ladder — {result['settings']['preset']} preset\n{device_label(result)}"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# ---- our GPT against transformers' GPT-2 -------------------------------------------------------------------------


def hf_model(config: GPTConfig):
    """transformers' GPT2LMHeadModel of the same shape, without dropout."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as error:
        raise ShakeGPTError("this benchmark compares with transformers: pip install transformers.") from error
    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        loss_type="ForCausalLM",
    )
    return GPT2LMHeadModel(hf_config)


class HFTrainingAdapter(nn.Module):
    """Lets train_step drive transformers' model: (x, y) in, (None, loss) out, labels shifted inside as HF does."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, self.hf(input_ids=x, labels=x).loss


def alternate(
    contestants: dict[str, Callable[[], torch.Tensor]], device: torch.device, rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Call every contestant `warmup` times, then `rounds` times each in turn, timing each call."""
    for fn in contestants.values():
        for _ in range(warmup):
            timed_call(fn, device)
    seconds: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, fn in contestants.items():
            seconds[name].append(timed_call(fn, device)[0])
    return seconds


def bench_peer(
    settings: BenchSettings | None = None,
    vocab_size: int = PADDED_VOCAB_SIZE,
    log: Callable[[str], None] = print,
) -> dict:
    """Training steps of our GPT and transformers' GPT2LMHeadModel, same shape, batch and optimizer, timed
    alternately; at float32 for both, and with our automatic precision against theirs at float32 and at ours."""
    settings = settings or BenchSettings()
    config = settings.check().replace(vocab_size=vocab_size)
    device = get_device(settings.device)
    log(describe_device(device))
    set_seed(settings.seed)
    hf = hf_model(config).to(device)
    ours = GPT.from_hf(hf).to(device)
    auto = auto_dtype(device)
    fused = fused_adamw_problem(device) is None
    batches = fixed_batches(GPT2_VOCAB_SIZE, settings.batch_size, settings.tokens, settings.seed)
    contestants = {}
    for name, model in (("ours", ours), ("transformers", HFTrainingAdapter(hf))):
        optimizer = configure_optimizer(model, device_type=device.type, fused=fused)
        for dtype in dict.fromkeys(("fp32", auto)):
            precision = get_precision(device, dtype)
            contestants[f"{name} {dtype}"] = lambda m=model, o=optimizer, p=precision: train_step(
                m, o, batches, 1, p, device
            )[0]
    seconds = alternate(contestants, device, settings.steps, settings.warmup)
    tokens = settings.batch_size * settings.tokens
    rows = [{"name": name, **summarise_times(times, tokens)} for name, times in seconds.items()]
    result = header("peer", device, {**vars(settings), "vocab_size": vocab_size, "fused_adamw": fused})
    result["rows"] = rows
    result["ratios"] = peer_ratios(rows, auto)
    for row in rows:
        log(f"{row['name']:<20} {row['ms_median']:9.1f} ms/step {row['tokens_per_s']:10.0f} tok/s")
    for name, ratio in result["ratios"].items():
        log(f"{name}: x{ratio:.2f}")
    return result


def peer_ratios(rows: list[dict], auto: str) -> dict[str, float]:
    """Our throughput over transformers': same precision (fp32), our automatic one against their fp32, and both at
    the automatic precision when it is not fp32."""
    speed = {row["name"]: row["tokens_per_s"] for row in rows}
    ratios = {"ours fp32 / transformers fp32": speed["ours fp32"] / speed["transformers fp32"]}
    ratios[f"ours {auto} (auto) / transformers fp32"] = speed[f"ours {auto}"] / speed["transformers fp32"]
    if auto != "fp32":
        ratios[f"ours {auto} / transformers {auto}"] = speed[f"ours {auto}"] / speed[f"transformers {auto}"]
    return ratios


def plot_throughput(result: dict, xlabel: str) -> plt.Figure:
    """One horizontal bar per contestant, labelled with its throughput, and the ratios in the title."""
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 2))
    ax.barh([row["name"] for row in rows], [row["tokens_per_s"] for row in rows], color="tab:blue")
    for y, row in enumerate(rows):
        ax.text(row["tokens_per_s"], y, f" {row['tokens_per_s']:,.1f}", va="center", fontsize=8)
    ax.set_xlim(right=1.2 * max(row["tokens_per_s"] for row in rows))
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ratios = "; ".join(f"{name} x{value:.2f}" for name, value in result["ratios"].items())
    ax.set_title(f"{device_label(result)}\n{ratios}", fontsize=8)
    fig.tight_layout()
    return fig


# ---- generation --------------------------------------------------------------------------------------------------


def bench_generate(
    preset: str = "small",
    new_tokens: int = 200,
    prompt_len: int = 16,
    repeats: int = 3,
    dtypes: tuple[str, ...] | None = None,
    device: str = "auto",
    seed: int = 1337,
    log: Callable[[str], None] = print,
) -> dict:
    """Greedy decoding of `new_tokens` tokens for one sequence: our model with its key/value cache, without it, and
    transformers' generate with its cache, all with the same weights; at each precision in `dtypes` (default
    float32, plus bf16 where the device computes it natively)."""
    config = GPTConfig.preset(preset)
    if new_tokens < 1 or prompt_len < 1 or repeats < 1:
        raise ShakeGPTError("--new-tokens, --prompt-len and --steps must be at least 1.")
    if prompt_len + new_tokens > config.block_size:
        raise ShakeGPTError(
            f"--prompt-len + --new-tokens = {prompt_len + new_tokens} is above the {preset} preset's context of "
            f"{config.block_size}; transformers' GPT-2 cannot go past it."
        )
    target = get_device(device)
    dtypes = dtypes or tuple(dict.fromkeys(("fp32", auto_dtype(target))))
    log(describe_device(target))
    set_seed(seed)
    hf = hf_model(config).to(target).eval()
    prompt = torch.randint(GPT2_VOCAB_SIZE, (1, prompt_len), device=target)
    rows, ratios = [], {}
    for dtype in dtypes:
        rows += generation_rows(hf, prompt, new_tokens, repeats, dtype, target)
        speed = {row["decoder"]: row["tokens_per_s"] for row in rows if row["dtype"] == dtype}
        ratios[f"{dtype}: ours cached / transformers generate"] = speed["ours cached"] / speed["transformers generate"]
        ratios[f"{dtype}: ours cached / ours uncached"] = speed["ours cached"] / speed["ours uncached"]
    settings = {"preset": preset, "new_tokens": new_tokens, "prompt_len": prompt_len, "repeats": repeats}
    result = header("generate", target, {**settings, "dtypes": list(dtypes), "device": device, "seed": seed})
    result["rows"], result["ratios"] = rows, ratios
    for row in rows:
        log(f"{row['name']:<28} {row['tokens_per_s']:9.1f} tok/s  same tokens as transformers: {row['same_tokens']}")
    for name, ratio in ratios.items():
        log(f"{name}: x{ratio:.2f}")
    return result


def generation_rows(
    hf: nn.Module, prompt: torch.Tensor, new_tokens: int, repeats: int, dtype: str, device: torch.device
) -> list[dict]:
    """Time the three decoders with the weights cast to `dtype`, alternating, and check they choose the same tokens
    as transformers."""
    if dtype not in ("fp32", auto_dtype(device)):
        raise ShakeGPTError(f"{dtype} inference is not native on {device.type}; use fp32 or {auto_dtype(device)}.")
    weights_dtype = DTYPES[dtype]
    ours = GPT.from_hf(hf).to(device=device, dtype=weights_dtype).eval()
    theirs = copy.deepcopy(hf).to(dtype=weights_dtype)
    decoders = {
        "ours cached": lambda: generate(ours, prompt, new_tokens, temperature=0),
        "ours uncached": lambda: generate(ours, prompt, new_tokens, temperature=0, use_cache=False),
        "transformers generate": lambda: hf_generate(theirs, prompt, new_tokens),
    }
    outputs = {name: fn() for name, fn in decoders.items()}  # also the warm-up
    seconds = alternate(decoders, device, repeats, warmup=0)
    return [
        {
            "name": f"{name} ({dtype})",
            "decoder": name,
            "dtype": dtype,
            **summarise_times(times, new_tokens),
            "same_tokens": bool(torch.equal(outputs[name], outputs["transformers generate"])),
        }
        for name, times in seconds.items()
    ]


def hf_generate(hf: nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """transformers' greedy generate with its key/value cache, made to produce exactly `new_tokens` tokens."""
    return hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=GPT2_VOCAB_SIZE - 1,
    )
