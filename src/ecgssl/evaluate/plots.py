"""PNG plots of an evaluation: ROC curves, confusion matrix, label-efficiency curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix, roc_curve  # noqa: E402


def roc_plot(path: Path, y, scores, classes, multilabel: bool, title: str) -> Path:
    onehot = y if multilabel else np.eye(len(classes))[y]
    fig, ax = plt.subplots(figsize=(5, 5))
    for c, name in enumerate(classes):
        if 0 < onehot[:, c].sum() < len(onehot):
            fpr, tpr, _ = roc_curve(onehot[:, c], scores[:, c])
            ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def confusion_plot(path: Path, y, pred, classes, title: str) -> Path:
    cm = confusion_matrix(y, pred, labels=range(len(classes)))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cm, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8)
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes,
           yticklabels=classes, xlabel="predicted", ylabel="true", title=title)
    return _save(fig, path)


def label_efficiency_plot(path: Path, curves: dict[str, list[tuple[float, float, float, float]]],
                          metric: str, title: str) -> Path:
    """curves: {name: [(fraction %, value, ci_low, ci_high), ...]}."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, pts in curves.items():
        pts = sorted(pts)
        f, v, lo, hi = (np.array(a, dtype=float) for a in zip(*pts))
        ax.plot(f, v, marker="o", label=name)
        ax.fill_between(f, lo, hi, alpha=0.15)
    ax.set(xscale="log", xlabel="labelled training data (%)", ylabel=metric, title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
