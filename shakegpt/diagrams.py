"""Diagrams drawn from real models and tensors: the shapes through multi-head attention (notebook 02), the pre-norm
block (03) and GPT-2's data flow with each part's parameters (04). The notebooks compute what goes into them; the
drawing, which teaches nothing about transformers, lives here."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
from matplotlib.patches import Circle, FancyBboxPatch, Rectangle

from .model import GPTConfig


def draw_attention_shapes(stages: list[tuple[str, torch.Tensor, tuple[str, ...]]], steps: list[str]) -> plt.Figure:
    """The tensors of multi-head attention, left to right: each (name, tensor, dimension names) a box (a stack of
    boxes for the heads) with sides proportional to the square root of its last two dimensions, the batch left out;
    `steps` label the arrows between them."""
    largest = max(max(tensor.shape[-2:]) for _, tensor, _ in stages)
    side = lambda n: 2.2 * math.sqrt(n / largest)  # noqa: E731 (a box side, in the drawing's units)
    spacing, offset = 4.2, 0.15  # between the stages' centres; between the boxes of a stack of heads
    fig, ax = plt.subplots(figsize=(15, 4.4))
    extents = []  # each stage's left and right edges, for the arrows
    for i, (name, tensor, dims) in enumerate(stages):
        rows, cols = tensor.shape[-2:]
        width, height = side(cols), side(rows)
        n_heads = tensor.shape[1] if tensor.dim() == 4 else 1
        drawn = min(n_heads, 4)  # a few boxes stand for all the heads
        for h in reversed(range(drawn)):
            x0, y0 = i * spacing - width / 2 + offset * h, -height / 2 + offset * h
            ax.add_patch(Rectangle((x0, y0), width, height, fc=plt.cm.Blues(0.25 + 0.15 * h), ec="black", lw=1))
        extents.append((i * spacing - width / 2, i * spacing + width / 2 + offset * (drawn - 1)))
        if n_heads > 1:
            heads = f"{n_heads} heads" + (f" ({drawn} drawn)" if drawn < n_heads else "")
            ax.text(i * spacing - width / 2, height / 2 + offset * drawn + 0.05, heads, fontsize=9)
        label = f"{dims[-2]}={rows} rows\n{dims[-1]}={cols} columns"
        ax.text(i * spacing, -height / 2 - 0.1, label, ha="center", va="top", fontsize=8)
        caption = f"{name}\n({', '.join(dims)})\n{tuple(tensor.shape)}"
        ax.text(i * spacing, -1.9, caption, ha="center", va="top", fontsize=9)
    for i, step in enumerate(steps):
        start, end = extents[i][1] + 0.2, extents[i + 1][0] - 0.2
        ax.annotate("", xy=(end, 0), xytext=(start, 0), arrowprops=dict(arrowstyle="-|>"))
        ax.text((start + end) / 2, 0.12, step, ha="center", va="bottom", fontsize=8, color="dimgray")
    ax.set_xlim(extents[0][0] - 0.3, extents[-1][1] + 0.3)
    ax.set_ylim(-3.3, 2.0)
    ax.set_aspect("equal")
    ax.axis("off")
    batch = stages[0][1].shape[0]
    ax.set_title(f"shapes through multi-head attention (B = {batch}, drawn for one sequence; sides ∝ √size)")
    fig.tight_layout()
    return fig


def rounded_box(ax: plt.Axes, x: float, y: float, w: float, h: float, color: str, **style) -> None:
    """A rounded box of width w and height h centred on (x, y)."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05", fc=color, **style))


def arrow(ax: plt.Axes, start: tuple, end: tuple, label: str = "", **style) -> None:
    """An arrow from start to end, with its label (a shape) beside its middle."""
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color="0.2", **style))
    if label:
        middle = ((start[0] + end[0]) / 2 + 0.12, (start[1] + end[1]) / 2)
        ax.text(*middle, label, fontsize=8.5, color="tab:blue", va="center")


def draw_prenorm_block(block: nn.Module, stream_shape: tuple[int, ...]) -> plt.Figure:
    """A pre-norm block: the residual stream straight up on the left, each part (ln_1, attn, ln_2, mlp, as
    `block.named_children()` gives them) reading a copy of it on the right and adding its result back; each box
    with its module's type and parameter count."""
    parts = dict(block.named_children())
    fig, ax = plt.subplots(figsize=(6.5, 7))
    ax.set_xlim(-2.2, 5.2)
    ax.set_ylim(-0.8, 11.6)
    ax.axis("off")

    def part(name: str, y: float, color: str) -> None:
        n = sum(p.numel() for p in parts[name].parameters())
        rounded_box(ax, 2.9, y, 3.4, 0.9, color, ec="black")
        ax.text(2.9, y, f"{name}: {type(parts[name]).__name__}\n{n:,} parameters", ha="center", va="center", fontsize=9)

    start = 0.0  # where the stream enters the next addition from
    for bottom, norm, layer, color, plus in (
        (0.0, "ln_1", "attn", "tab:blue", 4.6),
        (5.0, "ln_2", "mlp", "tab:orange", 9.6),
    ):
        branch = bottom + 0.8
        ax.plot([0, 2.9], [branch, branch], color="black", lw=1.2)  # copy the stream to the right
        arrow(ax, (2.9, branch), (2.9, bottom + 1.55))
        part(norm, bottom + 2.0, "lightgray")
        arrow(ax, (2.9, bottom + 2.5), (2.9, bottom + 3.05))
        part(layer, bottom + 3.5, color)
        ax.plot([2.9, 2.9], [bottom + 3.95, plus], color="black", lw=1.2)
        arrow(ax, (2.9, plus), (0.3, plus))  # add the result back into the stream
        ax.add_patch(Circle((0, plus), 0.3, fc="white", ec="black", lw=1.2))
        ax.text(0, plus, "+", ha="center", va="center", fontsize=14)
        arrow(ax, (0, start), (0, plus - 0.3))
        start = plus + 0.3
    arrow(ax, (0, start), (0, 10.8))
    ax.text(0, -0.5, f"x {stream_shape}", ha="center", fontsize=10)
    ax.text(0, 11.0, f"out {stream_shape}", ha="center", fontsize=10)
    ax.text(-0.25, 7.0, "residual stream (B, T, C)", rotation=90, ha="right", va="center", fontsize=9)
    ax.text(-0.25, 2.3, "identity path", rotation=90, ha="right", va="center", fontsize=9, color="dimgray")
    ax.set_title("pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))", fontsize=10)
    fig.tight_layout()
    return fig


def draw_model_flow(
    config: GPTConfig, counts: dict[str, int], block_parts: dict[str, int], shapes: dict[str, tuple], idx_shape: tuple
) -> plt.Figure:
    """GPT-2's data flow: token ids, the two embeddings, the blocks, the final LayerNorm and the output layer tied to
    the token embedding, each with its parameters (`counts`, by part) and each arrow with the shape it carries
    (`shapes`, the parts' outputs); one block opened up on the right with its parts' parameters (`block_parts`)."""
    B, T = idx_shape
    C, V, per_block = config.n_embd, config.vocab_size, sum(block_parts.values())
    fig, ax = plt.subplots(figsize=(11, 8.5))
    ax.set_xlim(-0.6, 11)
    ax.set_ylim(0.9, 12.2)
    ax.axis("off")

    def box(x: float, y: float, w: float, h: float, title: str, detail: str, color: str) -> None:
        rounded_box(ax, x, y, w, h, color, ec="0.3")
        ax.text(x, y + 0.15, title, ha="center", va="bottom", fontsize=10, fontweight="bold")
        ax.text(x, y - 0.05, detail, ha="center", va="top", fontsize=9)

    box(3, 11.4, 3.2, 0.75, "token ids", f"(B, T) = {idx_shape}", "0.95")
    box(1.5, 9.6, 2.8, 0.9, "wte: token embedding", f"{V:,} x {C} = {counts['wte']:,}", "#cfe2f3")
    box(4.6, 9.6, 2.8, 0.9, "wpe: position embedding", f"{config.block_size:,} x {C} = {counts['wpe']:,}", "#cfe2f3")
    ax.add_patch(plt.Circle((3, 8.3), 0.22, fc="white", ec="0.3"))
    ax.text(3, 8.3, "+", ha="center", va="center", fontsize=14)
    stack = f"{per_block:,} per block\n{config.n_layer} x {per_block:,} = {counts['h']:,}"
    box(3, 6.6, 4.4, 1.3, f"{config.n_layer} x Block", stack, "#d9ead3")
    box(3, 4.7, 3.2, 0.8, "ln_f: final LayerNorm", f"{counts['ln_f']:,}", "#fff2cc")
    box(3, 3.1, 3.6, 0.9, "lm_head: output layer", f"{counts['lm_head']:,} of its own (tied to wte)", "#f4cccc")
    box(3, 1.5, 3.2, 0.75, "logits", "a score for every token", "0.95")
    arrow(ax, (2.4, 10.95), (1.6, 10.1), f"{idx_shape}")
    arrow(ax, (3.6, 10.95), (4.4, 10.1), "positions 0..T-1")
    arrow(ax, (1.6, 9.1), (2.8, 8.45), str(shapes["wte"]))
    arrow(ax, (4.5, 9.1), (3.2, 8.45), str(shapes["wpe"]))
    arrow(ax, (3, 8.08), (3, 7.3), f"{(B, T, C)}: the residual stream")
    for (top, bottom), part in zip(((5.9, 5.15), (4.25, 3.6), (2.6, 1.95)), ("h", "ln_f", "lm_head"), strict=True):
        arrow(ax, (3, top), (3, bottom), str(shapes[part]))
    tie = dict(arrowstyle="-|>", ls="--", color="tab:red", connectionstyle="arc3,rad=0.25")
    ax.annotate("", xy=(1.2, 3.1), xytext=(0.3, 9.15), arrowprops=tie)
    ax.text(-0.35, 6.2, "the same matrix\n(weight tying)", color="tab:red", fontsize=9, rotation=90, va="center")
    # One block, opened up: its parts in the order the data passes them, and their parameters.
    ax.add_patch(FancyBboxPatch((6.8, 2.2), 4.0, 8.4, boxstyle="round,pad=0.05", fc="#f3f9f1", ec="0.5", ls="--"))
    ax.text(8.8, 10.45, "one block", ha="center", va="top", fontsize=10, fontweight="bold")
    ax.text(8.8, 10.05, "x + attn(ln_1(x)), then x + mlp(ln_2(x))", ha="center", va="top", fontsize=9)
    ax.plot([5.2, 6.8], [7.25, 10.6], color="0.5", ls=":")
    ax.plot([5.2, 6.8], [5.95, 2.2], color="0.5", ls=":")
    for i, (part, n) in enumerate(block_parts.items()):
        y = 9.2 - i * 1.17
        box(8.8, y, 3.4, 0.75, part, f"{n:,}", "#d9ead3")
        if i:
            arrow(ax, (8.8, y + 0.83), (8.8, y + 0.43))
    ax.text(8.8, 2.45, f"sum: {per_block:,}", ha="center", fontsize=9.5)
    title = f"GPT-2 ({config.n_layer} layers, width {C}): {sum(counts.values()):,} parameters, each counted once"
    ax.set_title(title, fontsize=12)
    fig.tight_layout()
    return fig
