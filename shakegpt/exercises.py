"""Exercises, in every notebook: a check cell runs inside `exercise_check`, so an exercise a learner has not done yet
says so and the notebook goes on, while a wrong answer fails the cell with the check's message. `forbidden` keeps an
answer from being the very function it is checked against."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from unittest import mock


def solutions_notebook(notebook: str) -> str:
    """Where the solutions of notebook `notebook` ("05") are, relative to the notebooks/ folder."""
    return f"solutions/{notebook}_solutions.ipynb"


def unfinished(error: NotImplementedError, number: int) -> bool:
    """Whether `error` is the learner's cell saying it is not done yet (its own message), rather than PyTorch saying
    that an operation is missing on this device, as Apple's MPS does."""
    return str(error).startswith(f"Exercise {number}: your code here")


@contextmanager
def exercise_check(notebook: str, number: int) -> Iterator[None]:
    """Run the asserts of exercise `number` of notebook `notebook`; the learner's cell raises NotImplementedError until
    it is done, which prints a hint instead of an error. Any other error, a NotImplementedError from PyTorch
    included, fails the cell."""
    try:
        yield
    except NotImplementedError as error:
        if not unfinished(error, number):
            raise
        print(
            f"Exercise {number}: not done yet. Complete the cell above and run this one again "
            f"(a solution: {solutions_notebook(notebook)})."
        )
        return
    print(f"Exercise {number}: correct.")


@contextmanager
def forbidden(*functions: tuple[object, str]) -> Iterator[None]:
    """Inside the block, calling any of `functions`, each given as (owner, name): a module or object and its attribute,
    such as (F, "gelu"), or a namespace and its key, such as (globals(), "bigram_log_probs"), fails with an
    AssertionError: an exercise checked against a function must not simply call it."""

    def refuse(name: str):
        def call(*args, **kwargs):
            raise AssertionError(f"{name} is what this check compares your answer with: write it without calling it")

        return call

    with ExitStack() as stack:
        for owner, name in functions:
            if isinstance(owner, dict):  # a namespace: only this name is put back (the block may add others)
                stack.callback(owner.__setitem__, name, owner[name])
                owner[name] = refuse(name)
            else:
                stack.enter_context(mock.patch.object(owner, name, refuse(name)))
        yield
