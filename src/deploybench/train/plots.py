"""Training figures (matplotlib, Agg): learning curves and the confusion matrix. Drawn from numbers only (the
history rows and the counts), so the report can redraw them from `training.json` rather than trust a file."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def learning_curves_figure(history: list[dict]):
    """Loss and top-1 per epoch, train against validation. Args: history rows (epoch, train_loss, val_loss,
    train_top1, val_top1). Returns the matplotlib figure (the caller saves and closes it)."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss")
    ax2.plot(epochs, [100 * h["train_top1"] for h in history], "o-", label="train")
    ax2.plot(epochs, [100 * h["val_top1"] for h in history], "o-", label="validation")
    ax2.set(xlabel="epoch", ylabel="top-1 (%)")
    ax2.legend()
    fig.tight_layout()
    return fig


def confusion_figure(confusion: list[list[int]], classes: list[str]):
    """The row-normalized confusion matrix with its counts. Args: the n x n counts (true class by row), the n
    class names (drawn as plain text, never parsed as math). Returns the matplotlib figure."""
    n = len(classes)
    norm = [[c / max(1, sum(row)) for c in row] for row in confusion]
    size = max(4.0, 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=7, parse_math=False)
        ax.set_yticks(range(n), classes, fontsize=7, parse_math=False)
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(confusion[i][j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i][j] > 0.5 else "black",
                )
    ax.set(xlabel="predicted", ylabel="true")
    fig.tight_layout()
    return fig


def save(fig, out: Path) -> None:
    """Write `fig` as `out`.png and `out`.svg and close it."""
    for ext in ("png", "svg"):
        fig.savefig(out.with_suffix(f".{ext}"), dpi=110)
    plt.close(fig)


def learning_curves(history: list[dict], out: Path) -> None:
    save(learning_curves_figure(history), out)


def confusion_matrix(cm, classes: list[str], out: Path) -> None:
    """Args: the counts as a tensor or nested lists."""
    save(confusion_figure(cm.tolist() if hasattr(cm, "tolist") else cm, classes), out)
