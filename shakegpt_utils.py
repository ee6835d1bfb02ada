"""The ShakeGPT helper module: everything the notebooks build, in reusable form, grouped by the notebook that teaches
it. The code lives in the `shakegpt` package; this file is its table of contents and the one import learners use.
`python -m shakegpt_utils train|sample|bench|space|push ...` is the command line.
"""

from shakegpt.benchmark import BenchSettings, estimate_run, save_bench
from shakegpt.checkpoint import (
    load_checkpoint,
    load_model,
    model_from_checkpoint,
    resume_training,
    save_checkpoint,
    unwrap_model,
)
from shakegpt.chunked_loss import ChunkedLinearCrossEntropy, chunked_cross_entropy
from shakegpt.cli import OneLineParser, main
from shakegpt.colab import keep_runs_on_drive, on_colab
from shakegpt.config import (
    GPT2_VOCAB_SIZE,
    PADDED_VOCAB_SIZE,
    PRESETS,
    PROJECT_ROOT,
    SMOKE,
    GPTConfig,
    ShakeGPTError,
    colab_badge,
    first_line,
    repository_url,
    show_errors_in_one_line,
)
from shakegpt.data import CORPORA, TokenBatches, evaluation_windows, load_corpus, load_tokens, split_tokens
from shakegpt.diagrams import draw_attention_shapes, draw_model_flow, draw_prenorm_block
from shakegpt.exercises import exercise_check, forbidden
from shakegpt.fast_decoding import CompiledDecoder
from shakegpt.hardware import (
    Precision,
    attention_kernel,
    compile_problem,
    cpu_has_native_bf16,
    describe_device,
    enable_tf32,
    get_device,
    get_precision,
    gpu_has_native_bf16,
    peak_flops,
    set_seed,
    synchronize,
)
from shakegpt.hf import export_hf, from_hf, from_pretrained, load_exported
from shakegpt.hub import push_space, push_to_hub
from shakegpt.ladder import Ladder, RungSetup, bench_ladder, plot_ladder
from shakegpt.memorisation import CorpusIndex, corpus_indexes, memorisation_line, memorisation_report
from shakegpt.memory import fit_micro_batch
from shakegpt.model import GPT, MLP, Block, CausalSelfAttention, KVCache, causal_mask
from shakegpt.optim import (
    MuonWithAdamW,
    configure_optimizer,
    decay_groups,
    estimate_mfu,
    flops_per_token,
    get_lr,
    hidden_matrices,
)
from shakegpt.peers import bench_generate, bench_peer
from shakegpt.plots import plot_loss_curves, plot_lr_schedule, save_figure
from shakegpt.sampling import encode_prompt, generate, generate_stream, sample_text, sampling_probabilities
from shakegpt.space import build_space
from shakegpt.tokenizer import END_OF_TEXT, get_tokenizer
from shakegpt.train import (
    MEMORISATION_RUN,
    TrainConfig,
    default_loss,
    evaluate,
    fit_to_memory,
    read_metrics,
    train,
    train_step,
)

__all__ = [
    # every notebook: set-up, the device it runs on, the smoke switch, figures
    "SMOKE",
    "PROJECT_ROOT",
    "repository_url",
    "colab_badge",
    "describe_device",
    "get_device",
    "cpu_has_native_bf16",
    "gpu_has_native_bf16",
    "attention_kernel",
    "compile_problem",
    "on_colab",
    "save_figure",
    "ShakeGPTError",
    "first_line",
    "exercise_check",
    "forbidden",
    # 01 tokenizer: byte-pair encoding, the corpora, the split, the batch loader
    "get_tokenizer",
    "END_OF_TEXT",
    "CORPORA",
    "load_corpus",
    "load_tokens",
    "split_tokens",
    "TokenBatches",
    "evaluation_windows",
    # 02 attention
    "causal_mask",
    "CausalSelfAttention",
    "draw_attention_shapes",
    # 03 transformer block
    "MLP",
    "Block",
    "draw_prenorm_block",
    # 04 GPT-2 model, and conversion to and from transformers
    "GPTConfig",
    "PRESETS",
    "GPT2_VOCAB_SIZE",
    "PADDED_VOCAB_SIZE",
    "GPT",
    "draw_model_flow",
    "from_hf",
    "from_pretrained",
    "export_hf",
    "load_exported",
    # 05 optimizations: precision, TF32, the chunked loss, the optimizer, the ladder
    "Precision",
    "get_precision",
    "enable_tf32",
    "synchronize",
    "ChunkedLinearCrossEntropy",
    "chunked_cross_entropy",
    "configure_optimizer",
    "decay_groups",
    "hidden_matrices",
    "MuonWithAdamW",
    "flops_per_token",
    "peak_flops",
    "estimate_mfu",
    "fit_micro_batch",
    "BenchSettings",
    "Ladder",
    "RungSetup",
    "bench_ladder",
    "plot_ladder",
    # 06 training: the settings, one step, the run, checkpoints, curves; 07 evaluation: evaluate, the memorisation run
    "TrainConfig",
    "MEMORISATION_RUN",
    "default_loss",
    "fit_to_memory",
    "estimate_run",
    "keep_runs_on_drive",
    "get_lr",
    "set_seed",
    "train_step",
    "evaluate",
    "train",
    "read_metrics",
    "plot_loss_curves",
    "plot_lr_schedule",
    "save_checkpoint",
    "load_checkpoint",
    "resume_training",
    "model_from_checkpoint",
    "unwrap_model",
    # 08 sampling (and 07's memorisation measure): generation, the key/value cache, a trained model
    "KVCache",
    "encode_prompt",
    "generate",
    "generate_stream",
    "sampling_probabilities",
    "sample_text",
    "CompiledDecoder",
    "load_model",
    "CorpusIndex",
    "corpus_indexes",
    "memorisation_report",
    "memorisation_line",
    # the command line, the self-contained Space, publishing on the Hub, and the comparisons with transformers
    # behind the README's numbers
    "main",
    "OneLineParser",
    "build_space",
    "push_to_hub",
    "push_space",
    "bench_peer",
    "bench_generate",
    "save_bench",
]

show_errors_in_one_line()  # in a notebook: a ShakeGPTError is its one-line message, as on the command line

if __name__ == "__main__":
    raise SystemExit(main())
