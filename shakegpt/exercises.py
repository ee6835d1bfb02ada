"""Exercises, in every notebook: a check cell runs inside `exercise_check`, so an exercise a learner has not done yet
says so and the notebook goes on, while a wrong answer fails the cell with the check's message."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def solutions_notebook(notebook: str) -> str:
    """Where the solutions of notebook `notebook` ("05") are, relative to the notebooks/ folder."""
    return f"solutions/{notebook}_solutions.ipynb"


@contextmanager
def exercise_check(notebook: str, number: int) -> Iterator[None]:
    """Run the asserts of exercise `number` of notebook `notebook`; the learner's cell raises NotImplementedError until
    it is done, which prints a hint instead of an error."""
    try:
        yield
    except NotImplementedError:
        print(
            f"Exercise {number}: not done yet. Complete the cell above and run this one again "
            f"(a solution: {solutions_notebook(notebook)})."
        )
        return
    print(f"Exercise {number}: correct.")
