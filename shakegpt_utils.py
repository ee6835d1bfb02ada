"""The ShakeGPT helper module: everything the notebooks build, in reusable form, in the order the course teaches.

The code lives in the `shakegpt` package, one file per section (config, model, tokenizer, data, hardware, optim,
train, sampling, bench, plots, cli), because one file grew past what reads well; this module is the one import
learners use. `python -m shakegpt_utils train|sample|bench ...` is the command line.
"""

from shakegpt.config import (
    GPT2_VOCAB_SIZE,
    PADDED_VOCAB_SIZE,
    PRESETS,
    PROJECT_ROOT,
    REPOSITORY_URL,
    SMOKE,
    GPTConfig,
    ShakeGPTError,
    colab_badge,
    first_line,
)
from shakegpt.model import GPT, MLP, Block, CausalSelfAttention, KVCache, causal_mask, clean_state_dict, export_hf
from shakegpt.tokenizer import END_OF_TEXT, get_tokenizer
from shakegpt.data import (
    CORPORA,
    TokenBatches,
    evaluation_windows,
    load_corpus,
    load_tokens,
    split_tokens,
    strip_gutenberg,
)
from shakegpt.hardware import (
    Precision,
    describe_device,
    enable_tf32,
    get_device,
    get_precision,
    peak_flops,
    set_seed,
    synchronize,
)
from shakegpt.optim import configure_optimizer, estimate_mfu, flops_per_token, get_lr
from shakegpt.checkpoint import load_checkpoint, load_model, model_from_checkpoint, save_checkpoint, unwrap_model
from shakegpt.sampling import encode_prompt, generate, generate_stream, sample_text

__all__ = [
    "GPT2_VOCAB_SIZE",
    "PADDED_VOCAB_SIZE",
    "PRESETS",
    "PROJECT_ROOT",
    "REPOSITORY_URL",
    "colab_badge",
    "describe_device",
    "SMOKE",
    "GPTConfig",
    "ShakeGPTError",
    "first_line",
    "GPT",
    "MLP",
    "Block",
    "CausalSelfAttention",
    "KVCache",
    "causal_mask",
    "clean_state_dict",
    "export_hf",
    "END_OF_TEXT",
    "get_tokenizer",
    "CORPORA",
    "TokenBatches",
    "evaluation_windows",
    "load_corpus",
    "load_tokens",
    "split_tokens",
    "strip_gutenberg",
    "Precision",
    "enable_tf32",
    "get_device",
    "get_precision",
    "peak_flops",
    "set_seed",
    "synchronize",
    "configure_optimizer",
    "estimate_mfu",
    "flops_per_token",
    "get_lr",
    "load_checkpoint",
    "load_model",
    "model_from_checkpoint",
    "save_checkpoint",
    "unwrap_model",
    "encode_prompt",
    "generate",
    "generate_stream",
    "sample_text",
]
from shakegpt.plots import plot_loss_curves, plot_lr_schedule, save_figure
from shakegpt.train import TrainConfig, evaluate, read_metrics, train, train_step
from shakegpt.bench import (
    BenchSettings,
    Ladder,
    bench_generate,
    bench_ladder,
    bench_peer,
    ladder_rungs,
    plot_ladder,
    save_bench,
)
from shakegpt.cli import main

__all__ += [
    "plot_loss_curves",
    "plot_lr_schedule",
    "save_figure",
    "TrainConfig",
    "evaluate",
    "read_metrics",
    "train",
    "train_step",
    "BenchSettings",
    "Ladder",
    "bench_generate",
    "bench_ladder",
    "bench_peer",
    "ladder_rungs",
    "plot_ladder",
    "save_bench",
    "main",
]

if __name__ == "__main__":
    raise SystemExit(main())
