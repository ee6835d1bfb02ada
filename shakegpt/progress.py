"""A training run's progress on the console (notebook 06): a tqdm bar in a terminal; in a Jupyter notebook one line,
updated in place, so that a saved notebook keeps that line and not hundreds of redraws; nothing when the output goes
to a file or a pipe, where a bar's redraws would only fill it."""

from __future__ import annotations

import sys
import time


def in_jupyter() -> bool:
    """Whether this Python is a Jupyter kernel (JupyterLab, Colab, a notebook being executed)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


class NotebookProgress:
    """One line in a notebook's output, "step 120/400 (30%), 1.9 min so far, about 4.4 min left", updated in place
    at most every `interval_s` seconds, and a last time at the end."""

    def __init__(self, total: int, initial: int = 0, interval_s: float = 0.5):
        from IPython.display import Pretty, display

        self.total, self.n, self.first = total, initial, initial
        self.interval_s, self.started, self.shown = interval_s, time.perf_counter(), 0.0
        self.pretty = Pretty
        self.handle = display(Pretty(self.text()), display_id=True)

    def text(self) -> str:
        done, elapsed = self.n - self.first, time.perf_counter() - self.started
        line = f"step {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%), {elapsed / 60:.1f} min so far"
        if 0 < done and self.n < self.total:
            line += f", about {elapsed / done * (self.total - self.n) / 60:.1f} min left"
        return line

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self.shown >= self.interval_s:
            self.handle.update(self.pretty(self.text()))
            self.shown = time.perf_counter()

    def close(self) -> None:
        self.handle.update(self.pretty(self.text()))


def progress_bar(total: int, initial: int = 0):
    """What shows a run's progress here (an object with update() and close()), or None where nothing should."""
    if in_jupyter():
        return NotebookProgress(total, initial)
    if sys.stdout.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stdout)
    return None
