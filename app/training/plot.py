"""The training curve saved with each model: perplexity per epoch (train and validation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_history(history: list[dict[str, Any]], path: Path) -> bool:
    """Draw the curve to a PNG; returns False (and writes nothing) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: draw to a file
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [row["epoch"] for row in history]
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    axis.plot(epochs, [row["train_perplexity"] for row in history], "o-", label="train")
    axis.plot(epochs, [row["valid_perplexity"] for row in history], "o-", label="validation")
    axis.set_xlabel("epoch")
    axis.set_ylabel("perplexity")
    axis.set_yscale("log")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    axis.set_title("Training curve")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True
