"""The loss figure marks what notebook 06 reads from it: the best validation step (best.pt), the step where the
training loss first fell below the target, and the gap between the curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.collections import PolyCollection

import shakegpt_utils as sg


def metrics_that_overfit() -> list[dict]:
    """Training loss 3/step; validation falls to its minimum at step 4, then rises."""
    rows = [{"step": step, "tokens": 10 * step, "loss": 3.0 / step} for step in range(1, 11)]
    for step, val_loss in ((2, 2.0), (4, 1.5), (6, 1.8), (8, 2.2), (10, 2.5)):
        rows[step - 1]["val_loss"] = val_loss
    return rows


def test_loss_figure_marks_the_best_step_the_target_crossing_and_the_gap():
    fig = sg.plot_loss_curves(metrics_that_overfit(), target_loss=0.35, log_scale=False)
    ax = fig.axes[0]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "best validation 1.500 at step 4: best.pt" in labels
    assert "below target at step 9" in labels  # 3/9 < 0.35 < 3/8
    assert "target train loss 0.35" in labels and "gap (overfitting)" in labels
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
    gap = next(c for c in ax.collections if isinstance(c, PolyCollection))
    assert gap.get_paths()[0].vertices[:, 0].min() == 2 and gap.get_paths()[0].vertices[:, 0].max() == 10
    plt.close(fig)


def test_loss_figure_without_a_target_or_evaluations_still_draws_the_training_curve():
    rows = [{"step": step, "tokens": 10 * step, "loss": 3.0 / step} for step in range(1, 6)]
    fig = sg.plot_loss_curves(rows)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["train"]
    plt.close(fig)
