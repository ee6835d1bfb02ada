"""The model card: what a checkpoint's run did (corpus, shape, steps and tokens, best validation loss, whether it
went on past its validation minimum and memorised), read from the checkpoint. The Space's README and the exported
model's README.md (with the Hub's metadata above it) show the same table."""

from __future__ import annotations

import math
from pathlib import Path

from .basics import repository_url
from .data import CORPORA, text_name
from .model import GPT

UNKNOWN = "not recorded in the checkpoint"

# The Hub reads this metadata at the top of a model repository's README.md: it files the model under text
# generation, shows how to load it with transformers, and lists it under each tag.
MODEL_METADATA = """---
license: mit
language:
- en
library_name: transformers
pipeline_tag: text-generation
tags:
{tags}
---
"""
MODEL_TAGS = ("gpt2", "shakespeare", "shakegpt")

MODEL_README = """
# ShakeGPT

A GPT-2 written from scratch in PyTorch and trained on Shakespeare with the [ShakeGPT course]({repository}). It is
stored the way transformers stores OpenAI's GPT-2, with GPT-2's tokenizer beside it, so the usual calls load it:

```python
from transformers import pipeline

generator = pipeline("text-generation", model="USER/NAME")  # this repository's name, or a folder of its files
print(generator("ROMEO:", max_new_tokens=100, do_sample=True, temperature=0.8, top_k=200)[0]["generated_text"])
```

It continues a text in the manner of its training text and knows nothing else: it is no chat model and no source of
facts. `shakegpt_utils.load_exported(FOLDER)` reads the same files back into the course's own GPT.

## Model card

{card}
"""


def run_state(checkpoint: dict) -> dict:
    """The training run's state saved with the checkpoint (best validation loss and step...); empty if none."""
    return checkpoint.get("train_state") or {}


def is_memorised(checkpoint: dict) -> bool:
    """Whether the checkpoint comes from after its run's best validation step: by then the run fitted its training
    text better while getting worse on text it never saw, that is, it was memorising."""
    best_step = run_state(checkpoint).get("best_val_step")
    return best_step is not None and checkpoint.get("step", 0) > best_step


def memorisation_warning(step: int, best_step: int) -> str:
    """The card's warning for a checkpoint saved after its run's best validation step."""
    return (
        f"**It memorised.** This checkpoint is from step {step:,}, after the run's best validation loss at step "
        f"{best_step:,}: from there on it learnt its training text by heart rather than Shakespeare in general, so "
        "it may quote its training text verbatim."
    )


def training_line(checkpoint: dict) -> str:
    """Steps and tokens read. With --total-batch the tokens per step are known across processes; without it the
    checkpoint holds one process's batch only, and the line says so."""
    cfg, state, step = checkpoint.get("train_config") or {}, run_state(checkpoint), checkpoint.get("step")
    if step is None:
        return UNKNOWN
    line = f"{step:,} steps"
    if cfg.get("total_batch"):
        line += f" of {cfg['total_batch']:,} tokens, {step * cfg['total_batch']:,} tokens in all"
    elif cfg.get("batch_size") and cfg.get("seq_len"):
        per_step = cfg["batch_size"] * cfg["seq_len"] * cfg.get("grad_accum", 1)
        line += f" of {per_step:,} tokens per process, {step * per_step:,} tokens in all on one process"
    if cfg.get("target_loss") is not None and state.get("target_step") is not None:
        line += f"; the training loss fell below {cfg['target_loss']} at step {state['target_step']:,}"
    return line


def card_entries(checkpoint: dict | None, model: GPT, source: str) -> dict[str, str]:
    """The card's entries, each read from the checkpoint (None: a model alone, whose run is unknown): what the model
    read, its shape, its training, its validation loss, whether it went on past its validation minimum."""
    checkpoint = checkpoint or {}
    cfg, state, c = checkpoint.get("train_config") or {}, run_state(checkpoint), model.config
    corpus = f"`{text_name(cfg['corpus'], cfg.get('text_file'))}`" if cfg.get("corpus") else UNKNOWN
    if cfg.get("train_tokens"):
        corpus += f", the first {cfg['train_tokens']:,} tokens of its training split only"
    shape = (
        f"{c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, a context of {c.block_size} tokens, "
        f"{model.num_params() / 1e6:.1f}M parameters"
    )
    step, best_loss, best_step = checkpoint.get("step"), state.get("best_val_loss"), state.get("best_val_step")
    validation, past_minimum = UNKNOWN, UNKNOWN
    if best_step is not None and best_loss is not None and math.isfinite(best_loss):
        validation = f"{best_loss:.4f}, the run's lowest, at step {best_step:,}"
    if best_step is not None and step is not None:
        past_minimum = f"yes, by {step - best_step:,} steps" if is_memorised(checkpoint) else "no"
    return {
        "Corpus": corpus,
        "Model": f"`{cfg['preset']}` preset: {shape}" if cfg.get("preset") else shape,
        "Training": training_line(checkpoint),
        "Validation loss": validation,
        "Past its validation minimum": past_minimum,
        "Checkpoint": UNKNOWN if step is None else f"`{source}`, step {step:,}" if source else f"step {step:,}",
    }


def model_card(checkpoint: dict | None, model: GPT, source: str = "") -> str:
    """The card as Markdown: a table of `card_entries`, then the memorisation warning where it applies."""
    rows = "".join(f"| {name} | {value} |\n" for name, value in card_entries(checkpoint, model, source).items())
    card = f"| | |\n|---|---|\n{rows}"
    if checkpoint and is_memorised(checkpoint):
        card += "\n" + memorisation_warning(checkpoint["step"], run_state(checkpoint)["best_val_step"]) + "\n"
    return card


def model_readme(checkpoint: dict | None, model: GPT, source: str = "") -> str:
    """README.md of an exported model: the Hub's metadata (tagged with the corpus where it is one of the course's),
    how to load it, and the card."""
    cfg = (checkpoint or {}).get("train_config") or {}
    tags = MODEL_TAGS
    if cfg.get("corpus") in CORPORA and not cfg.get("text_file"):
        tags += (Path(CORPORA[cfg["corpus"]].filename).stem,)  # tinyshakespeare, shakespeare_complete
    metadata = MODEL_METADATA.format(tags="\n".join(f"- {tag}" for tag in tags))
    body = MODEL_README.format(repository=repository_url(), card=model_card(checkpoint, model, source).rstrip())
    return metadata + body
