"""Plots for every notebook: each figure is saved as PNG and SVG under a stable name; loss curves and the
learning-rate schedule for notebook 06."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt

from .basics import PROJECT_ROOT

SCREEN_DPI = 72  # what a saved figure is shown at in a notebook (a point per pixel)


def figures_dir() -> Path:
    """figures/ in the repository, or $SHAKEGPT_FIGURES_DIR (tests point it at a temporary folder)."""
    return Path(os.environ.get("SHAKEGPT_FIGURES_DIR") or PROJECT_ROOT / "figures")


def save_figure(fig: plt.Figure, name: str, folder: str | Path | None = None) -> list[Path]:
    """Write `name`.png (150 dpi) and `name`.svg into `folder` (default: figures/); return both paths. A notebook
    then shows the figure at SCREEN_DPI: the files keep the detail, and the notebook stays light."""
    folder = Path(folder) if folder is not None else figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    fig.set_dpi(SCREEN_DPI)
    return paths


def plot_loss_curves(
    metrics: list[dict], target_loss: float | None = None, title: str = "", log_scale: bool = True
) -> plt.Figure:
    """Training and validation loss against optimizer steps (bottom axis) and tokens seen (top axis). The gap
    between the curves is shaded, the best validation point (where best.pt comes from) and the step where the
    training loss first fell below the target are marked, so overfitting shows where the two curves part. A linear
    axis (log_scale=False) shows a run that memorises down to a small target."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = [row["step"] for row in metrics]
    train = [row["loss"] for row in metrics]
    ax.plot(steps, train, label="train", color="tab:blue", lw=1.2)
    evals = [row for row in metrics if row.get("val_loss") is not None]
    if evals:
        eval_steps, val = [r["step"] for r in evals], [r["val_loss"] for r in evals]
        ax.plot(eval_steps, val, "o-", label="validation", color="tab:orange", ms=3, lw=1.2)
        train_at_evals = [r["loss"] for r in evals]
        ax.fill_between(eval_steps, train_at_evals, val, color="tab:orange", alpha=0.12, label="gap (overfitting)")
        best = min(evals, key=lambda r: r["val_loss"])
        ax.scatter([best["step"]], [best["val_loss"]], s=80, facecolors="none", edgecolors="black", zorder=5,
                   label=f"best validation {best['val_loss']:.3f} at step {best['step']}: best.pt")  # fmt: skip
    if target_loss is not None:
        ax.axhline(target_loss, color="tab:green", ls="--", lw=1, label=f"target train loss {target_loss}")
        reached = next((row for row in metrics if row["loss"] < target_loss), None)
        if reached:
            ax.axvline(
                reached["step"], color="tab:green", ls=":", lw=1, label=f"below target at step {reached['step']}"
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats per token)")
    if log_scale:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if metrics and metrics[-1].get("tokens") and metrics[-1]["step"]:
        tokens_per_step = metrics[-1]["tokens"] / metrics[-1]["step"]
        top = ax.secondary_xaxis(
            "top", functions=(lambda s: s * tokens_per_step / 1e6, lambda t: t * 1e6 / tokens_per_step)
        )
        top.set_xlabel("tokens seen (millions)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_lr_schedule(lrs: list[float], title: str = "learning-rate schedule") -> plt.Figure:
    """The learning rate at every step: linear warmup, then cosine decay to the floor."""
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(range(1, len(lrs) + 1), lrs)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
