"""Shared basics of every notebook and entry point: the quick switch, the project's folder and address (the Colab
badge), the error type, and the helpers that name and check a setting as Python and the command line spell it."""

from __future__ import annotations

import functools
import os
from dataclasses import field
from pathlib import Path

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
