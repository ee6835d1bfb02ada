"""Configuration: the model's shape and its presets (notebook 04), the smoke switch and the Colab badge (every
notebook), the error type and the checks of settings that every entry point shares."""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

# The GPT-2 tokenizer has 50,257 tokens; anything above that in a padded vocabulary is never a real token.
GPT2_VOCAB_SIZE = 50257
# 50,304 = 50,257 rounded up to a multiple of 128, which GPU matrix kernels like better.
PADDED_VOCAB_SIZE = 50304

# Read once: SHAKEGPT_SMOKE=1 shrinks every notebook and demo so that it runs on 2 CPU cores in CI.
SMOKE = os.environ.get("SHAKEGPT_SMOKE", "").strip().lower() not in ("", "0", "false", "no")

# The repository root (this package's parent), where data/, figures/ and runs/ live.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def repository_url() -> str:
    """Where the course is published, as pyproject.toml's [project.urls] says: the one place that holds the address."""
    import tomllib  # here, not at the top: a Space runs this package without pyproject.toml, on Python 3.10 too

    with (PROJECT_ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)["project"]["urls"]["Repository"]


def colab_badge(notebook: str) -> str:
    """Markdown for an "Open in Colab" badge that opens `notebooks/<notebook>` from the published repository."""
    repository = repository_url().removeprefix("https://github.com/")
    url = f"https://colab.research.google.com/github/{repository}/blob/main/notebooks/{notebook}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


class ShakeGPTError(Exception):
    """A user-facing failure: the message says what went wrong and what to do about it."""


def show_errors_in_one_line() -> None:
    """In Jupyter (IPython), show a ShakeGPTError as its one-line message instead of a traceback, as the command line
    does: the message already says what went wrong and what to do. Other errors keep their tracebacks."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc(
            (ShakeGPTError,),
            lambda shell, etype, value, tb, tb_offset=None: shell._showtraceback(
                etype, value, [f"{etype.__name__}: {value}"]
            ),
        )


def option(default, help: str):
    """A settings field (TrainConfig, BenchSettings) with its help text: the command line's flags are made from them."""
    return field(default=default, metadata={"help": help})


def setting(name: str) -> str:
    """A setting as a learner passes it in Python and as the flag on the command line: `batch_size / --batch-size`."""
    return f"{name} / --{name.replace('_', '-')}"


def check_at_least(name: str, value: int | float, minimum: int | float) -> None:
    """Refuse a setting below `minimum`, naming it both ways."""
    if value < minimum:
        raise ShakeGPTError(f"{setting(name)} must be at least {minimum}, not {value}.")


def check_fraction(name: str, value: float) -> None:
    """Refuse a setting outside (0, 1]: a share of something, where 0 would leave nothing."""
    if not 0 < value <= 1:
        raise ShakeGPTError(f"{setting(name)} must be in (0, 1], not {value}.")


def check_choice(name: str, value: str, choices) -> None:
    """Refuse a setting that is not one of `choices` (anything iterable over names), listing them."""
    if value not in choices:
        raise ShakeGPTError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}.")


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when the message is empty), for one-line reports."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass
class GPTConfig:
    """The shape of a GPT-2 model; the defaults are the 124M model OpenAI released."""

    block_size: int = 1024
    vocab_size: int = GPT2_VOCAB_SIZE
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    attn_impl: str = "sdpa"  # "sdpa" (flash attention where available) or "manual" (masked softmax)
    loss_impl: str = "full"  # "full" (logits, then cross-entropy: the textbook) or "chunked" (never builds all logits)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd"):  # the sizes that --n-layer, --n-head and --n-embd set
            check_at_least(name, getattr(self, name), 1)
        if self.n_embd % self.n_head:
            raise ShakeGPTError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}.")
        if self.attn_impl not in ("sdpa", "manual"):
            raise ShakeGPTError(f"attn_impl must be 'sdpa' or 'manual', not {self.attn_impl!r}.")
        if self.loss_impl not in ("chunked", "full"):
            raise ShakeGPTError(f"loss_impl must be 'chunked' or 'full', not {self.loss_impl!r}.")

    @classmethod
    def gpt2(cls, **overrides) -> GPTConfig:
        """GPT-2 small, 124M parameters: 12 layers, 12 heads, 768 wide, 1024 tokens of context."""
        return cls(**overrides)

    @classmethod
    def small(cls, **overrides) -> GPTConfig:
        """A 4-layer, 256-wide model that trains on Shakespeare in minutes on a laptop CPU."""
        return cls(**{"block_size": 256, "n_layer": 4, "n_head": 4, "n_embd": 256, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> GPTConfig:
        """A 2-layer, 64-wide model for tests and smoke runs: seconds per hundred steps."""
        return cls(**{"block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """The preset called `name` ('gpt2', 'small' or 'tiny') with some fields overridden."""
        check_choice("preset", name, PRESETS)
        return getattr(cls, name)(**overrides)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        """Rebuild a config saved with `to_dict`, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self, **changes) -> GPTConfig:
        return replace(self, **changes)


PRESETS = ("gpt2", "small", "tiny")
