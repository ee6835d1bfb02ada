"""Our GPT against transformers' GPT-2, with the same weights: the training step (`bench peer`) and greedy decoding
(`bench generate`). These back the README's numbers; notebook 08 measures the key/value cache the same way."""

from __future__ import annotations

import copy
from collections.abc import Callable

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from ..basics import ShakeGPTError, check_choice, setting
from ..data import fixed_batches
from ..fast_decoding import CompiledDecoder
from ..hardware import DTYPES, auto_dtype, compile_problem, describe_device, get_precision, set_seed
from ..hf import from_hf, gpt2_config_values
from ..model import PADDED_VOCAB_SIZE, GPTConfig
from ..optim import configure_optimizer, fused_adamw_problem
from ..sampling import generate
from ..tokenizer import END_OF_TEXT_ID, GPT2_VOCAB_SIZE
from ..train import train_step
from ..train_settings import default_loss
from .settings import BenchSettings, device_label, resolve_for_device, result_header
from .timing import summarise_times, timed_call

# A fixed-size cache and a one-token step compiled once (CUDA graphs on a GPU): fast_decoding.CompiledDecoder.
COMPILED_DECODER = "ours compiled step"


def hf_model(config: GPTConfig) -> nn.Module:
    """transformers' GPT2LMHeadModel of the same shape (dropout as in `config`), randomly initialised."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as error:
        raise ShakeGPTError("this benchmark compares with transformers: pip install transformers.") from error
    values = gpt2_config_values(config, config.vocab_size)
    return GPT2LMHeadModel(GPT2Config(**values, loss_type="ForCausalLM"))


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


def bench_peer(settings: BenchSettings | None = None, log: Callable[[str], None] = print) -> tuple[dict, plt.Figure]:
    """Training steps of our GPT and transformers' GPT2LMHeadModel, same shape (vocabulary padded to 50,304), batch
    and optimizer, timed alternately; at float32 for both, and with our automatic precision against theirs at float32
    and at ours. Our model trains the way `train` does on this device (its loss)."""
    s, device = resolve_for_device(settings)
    log(describe_device(device))
    set_seed(s.seed)
    hf = hf_model(s.model_config(vocab_size=PADDED_VOCAB_SIZE, dropout=0.0)).to(device)
    ours = from_hf(hf, loss_impl=default_loss(device)).to(device)
    dtypes = s.compared_dtypes(device)
    fused = fused_adamw_problem(device) is None
    batches = fixed_batches(GPT2_VOCAB_SIZE, s.batch_size, s.seq_len, s.seed)
    contestants = {}
    for name, model in (("ours", ours), ("transformers", HFTrainingAdapter(hf))):
        optimizer = configure_optimizer(model, device_type=device.type, fused=fused)
        for dtype in dtypes:
            precision = get_precision(device, dtype)
            contestants[f"{name} {dtype}"] = lambda m=model, o=optimizer, p=precision: train_step(
                m, o, batches, 1, p, device
            )[0]
    try:
        seconds = alternate(contestants, device, s.steps, s.warmup)
    except torch.OutOfMemoryError:
        seconds = None  # reported below, once the tensors the exception holds are freed
    if seconds is None:
        raise ShakeGPTError(
            f"out of memory on {device} with both models training on {s.batch_size} x {s.seq_len:,} tokens per step; "
            f"use a smaller {setting('batch_size')}, such as {max(1, s.batch_size // 2)}."
        )
    tokens = s.batch_size * s.seq_len
    rows = [{"name": name, **summarise_times(times, tokens)} for name, times in seconds.items()]
    result = result_header("peer", device, {**s.to_dict(), "vocab_size": PADDED_VOCAB_SIZE, "fused_adamw": fused})
    result["rows"] = rows
    result["ratios"] = peer_ratios(rows, dtypes[-1], s.dtype == "auto")
    for row in rows:
        log(f"{row['name']:<20} {row['ms_median']:9.1f} ms/step {row['tokens_per_s']:10.0f} tok/s")
    for name, ratio in result["ratios"].items():
        log(f"{name}: x{ratio:.2f}")
    return result, plot_throughput(result, "training tokens per second")


def peer_ratios(rows: list[dict], compared: str, automatic: bool) -> dict[str, float]:
    """Our throughput over transformers': same precision (fp32), ours at the compared precision (the device's own,
    marked "(auto)", unless --dtype chose it) against their fp32, and both at it when it is not fp32."""
    speed = {row["name"]: row["tokens_per_s"] for row in rows}
    ratios = {"ours fp32 / transformers fp32": speed["ours fp32"] / speed["transformers fp32"]}
    ours = speed[f"ours {compared}"]
    ratios[f"ours {compared}{' (auto)' if automatic else ''} / transformers fp32"] = ours / speed["transformers fp32"]
    if compared != "fp32":
        ratios[f"ours {compared} / transformers {compared}"] = ours / speed[f"transformers {compared}"]
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


def bench_generate(
    settings: BenchSettings | None = None, log: Callable[[str], None] = print
) -> tuple[dict, plt.Figure]:
    """Greedy decoding of `new_tokens` tokens for one sequence: our model with its key/value cache, without it, and
    transformers' generate with its cache, all with the same weights; at each precision in `dtype` (default float32,
    plus bf16 where the device computes it natively)."""
    s, device = resolve_for_device(settings)
    config = s.model_config(dropout=0.0)
    if s.prompt_len + s.new_tokens > config.block_size:
        raise ShakeGPTError(
            f"{setting('prompt_len')} + {setting('new_tokens')} = {s.prompt_len + s.new_tokens} is above the model's "
            f"context of {config.block_size}; transformers' GPT-2 cannot go past it."
        )
    dtypes = s.compared_dtypes(device)
    log(describe_device(device))
    compiled = s.compile and compile_problem(device) is None
    set_seed(s.seed)
    hf = hf_model(config).to(device).eval()
    prompt = torch.randint(GPT2_VOCAB_SIZE, (1, s.prompt_len), device=device)
    rows, ratios = [], {}
    for dtype in dtypes:
        rows += generation_rows(hf, prompt, s.new_tokens, s.rounds, dtype, device, compiled)
        speed = {row["decoder"]: row["tokens_per_s"] for row in rows if row["dtype"] == dtype}
        for decoder in ("ours cached", *([COMPILED_DECODER] if compiled else [])):
            ratios[f"{dtype}: {decoder} / transformers generate"] = speed[decoder] / speed["transformers generate"]
            ratios[f"{dtype}: {decoder} / ours uncached"] = speed[decoder] / speed["ours uncached"]
    result = result_header("generate", device, {**s.to_dict(), "dtypes": dtypes, "model": config.to_dict()})
    result["rows"], result["ratios"] = rows, ratios
    for row in rows:
        log(f"{row['name']:<28} {row['tokens_per_s']:9.1f} tok/s  same tokens as transformers: {row['same_tokens']}")
    for name, ratio in ratios.items():
        log(f"{name}: x{ratio:.2f}")
    return result, plot_throughput(result, "generated tokens per second (batch 1, greedy)")


def generation_rows(
    hf: nn.Module,
    prompt: torch.Tensor,
    new_tokens: int,
    rounds: int,
    dtype: str,
    device: torch.device,
    compiled: bool = False,
) -> list[dict]:
    """Time the decoders with the weights cast to `dtype`, alternating, and check they choose the same tokens as
    transformers: ours with and without the cache, transformers' generate, and with `compiled` our CompiledDecoder
    (its compilation in the first, untimed call)."""
    check_choice("dtype", dtype, dict.fromkeys(("fp32", auto_dtype(device))))
    weights_dtype = DTYPES[dtype]
    ours = from_hf(hf).to(device=device, dtype=weights_dtype).eval()
    theirs = copy.deepcopy(hf).to(dtype=weights_dtype)
    decoders = {
        "ours cached": lambda: generate(ours, prompt, new_tokens, temperature=0),
        "ours uncached": lambda: generate(ours, prompt, new_tokens, temperature=0, use_cache=False),
        "transformers generate": lambda: hf_generate(theirs, prompt, new_tokens),
    }
    if compiled:
        decoder = CompiledDecoder(ours, batch_size=prompt.size(0))
        decoders[COMPILED_DECODER] = lambda: decoder.generate(prompt, new_tokens, temperature=0)
    outputs = {name: fn() for name, fn in decoders.items()}  # also the warm-up
    seconds = alternate(decoders, device, rounds, warmup=0)
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
        pad_token_id=END_OF_TEXT_ID,
    )
