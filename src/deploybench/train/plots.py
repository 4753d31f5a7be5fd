"""Training figures (matplotlib, Agg): learning curves and the confusion matrix, as PNG and SVG."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def learning_curves(history: list[dict], out: Path) -> None:
    """Loss and top-1 per epoch, train vs validation."""
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
    for ext in ("png", "svg"):
        fig.savefig(out.with_suffix(f".{ext}"), dpi=110)
    plt.close(fig)


def confusion_matrix(cm, classes: list[str], out: Path) -> None:
    """Row-normalized confusion matrix with counts."""
    n = len(classes)
    norm = cm.double() / cm.sum(1, keepdim=True).clamp(min=1)
    size = max(4.0, 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true")
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(out.with_suffix(f".{ext}"), dpi=110)
    plt.close(fig)
