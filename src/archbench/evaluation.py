"""What a classifier's user looks at next: the test set's confusion matrix and accuracy per class."""

import csv
import io
from pathlib import Path

import torch


def confusion(truth: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts, on the CPU: row = true class, column = predicted class."""
    pairs = truth.long() * num_classes + predicted.long()
    return torch.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()


def per_class_accuracy(matrix: torch.Tensor) -> list[float | None]:
    """The share of each class's test samples predicted right (None for a class the test set lacks)."""
    return [row[i] / sum(row) if sum(row) else None for i, row in enumerate(matrix.tolist())]


def csv_text(matrix: torch.Tensor, classes: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, matrix.tolist(), strict=True):
        writer.writerow([name, *row])
    return out.getvalue()


def plot(matrix: torch.Tensor, classes: list[str], path: Path, title: str) -> Path:
    """The matrix as a heat map of each row's shares, with the counts written in."""
    import matplotlib  # imported here: 0.5 s, paid by the first run of a process only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = matrix.double() / matrix.sum(1, keepdim=True).clamp_min(1)
    size = 2.5 + 0.45 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)  # no colour bar: it took 0.05 s of 0.17
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    ax.set_xlabel("predicted (shade: share of the true class)")
    ax.set_ylabel("true")
    if len(classes) <= 20:  # counts stay legible up to 20 classes
        for i, row in enumerate(matrix.tolist()):
            for j, count in enumerate(row):
                color = "white" if shares[i, j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.2, bottom=0.2, right=0.97, top=0.94)  # fixed: tight_layout costs 0.13 s
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
