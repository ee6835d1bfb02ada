"""The ShakeGPT helper module: everything the notebooks build, in reusable form, grouped by the notebook that teaches
it. The code lives in the `shakegpt` package; this file is its table of contents and the one import learners use.
`python -m shakegpt_utils train|sample|bench|space|push ...` is the command line.
"""

# Every notebook: the quick switch, the project, the device it runs on, errors in one line, figures, exercises.
from shakegpt.basics import SMOKE, PROJECT_ROOT, repository_url, colab_badge, ShakeGPTError, first_line
from shakegpt.basics import show_errors_in_one_line
from shakegpt.hardware import describe_device, get_device, cpu_has_native_bf16, ampere_or_newer, versions
from shakegpt.hardware import attention_kernel, compile_problem
from shakegpt.colab import on_colab
from shakegpt.plots import save_figure
from shakegpt.exercises import exercise_check, forbidden

# 01 tokenizer: byte-pair encoding, the corpora, the split, the batch loader.
from shakegpt.tokenizer import get_tokenizer, END_OF_TEXT, GPT2_VOCAB_SIZE
from shakegpt.data import CORPORA, load_corpus, load_tokens, split_tokens, TokenBatches, evaluation_windows

# 02 attention.
from shakegpt.model import causal_mask, CausalSelfAttention
from shakegpt.diagrams import draw_attention_shapes

# 03 transformer block.
from shakegpt.model import MLP, Block
from shakegpt.diagrams import draw_prenorm_block

# 04 GPT-2 model, and conversion to and from transformers.
from shakegpt.model import GPTConfig, PRESETS, PADDED_VOCAB_SIZE, GPT
from shakegpt.diagrams import draw_model_flow
from shakegpt.hf import from_hf, from_pretrained, export_hf, load_exported, EXPORTED_FILES

# 05 optimizations: precision, TF32, the chunked loss, the optimizers, the micro-batch that fits, the ladder.
from shakegpt.hardware import Precision, get_precision, enable_tf32, synchronize, peak_flops
from shakegpt.chunked_loss import ChunkedLinearCrossEntropy, chunked_cross_entropy
from shakegpt.optim import configure_optimizer, decay_groups, hidden_matrices, MuonWithAdamW
from shakegpt.optim import flops_per_token, estimate_mfu
from shakegpt.memory import fit_micro_batch
from shakegpt.bench.settings import BenchSettings
from shakegpt.bench.rungs import RungSetup
from shakegpt.bench.ladder import Ladder, bench_ladder, plot_ladder

# 06 training: the settings, the schedule, one step, the run, its log, checkpoints, curves, Colab's Drive.
from shakegpt.train_settings import TrainConfig, default_loss
from shakegpt.optim import get_lr
from shakegpt.hardware import set_seed
from shakegpt.train import train_step, fit_to_memory, train
from shakegpt.bench.timing import estimate_run
from shakegpt.run_log import read_metrics
from shakegpt.plots import plot_loss_curves, plot_lr_schedule
from shakegpt.checkpoint import save_checkpoint, load_checkpoint, resume_training, model_from_checkpoint, unwrap_model
from shakegpt.colab import keep_runs_on_drive

# 07 evaluation: the validation loss, the memorisation run and its measure.
from shakegpt.train import evaluate
from shakegpt.train_settings import MEMORISATION_RUN
from shakegpt.memorisation import CorpusIndex, corpus_indexes, memorisation_report, memorisation_line

# 08 sampling: generation, the key/value cache, a trained model, decoding on a GPU.
from shakegpt.model import KVCache
from shakegpt.sampling import encode_prompt, generate, generate_stream, sampling_probabilities, sample_text
from shakegpt.sampling import SAMPLING_DEFAULTS
from shakegpt.checkpoint import load_model
from shakegpt.fast_decoding import CompiledDecoder

# The command line and the demo app (and the text a checkpoint trained on), the self-contained Space, publishing on
# the Hub, and the comparisons with transformers behind the README's numbers.
from shakegpt.cli import main, OneLineParser
from shakegpt.checkpoint import training_text
from shakegpt.space import build_space
from shakegpt.hub import push_to_hub, push_space
from shakegpt.bench.peers import bench_peer, bench_generate
from shakegpt.bench.settings import save_bench

__all__ = [name for name in dir() if not name.startswith("_")]  # every name imported above, once

show_errors_in_one_line()  # in a notebook: a ShakeGPTError is its one-line message, as on the command line

if __name__ == "__main__":
    raise SystemExit(main())
