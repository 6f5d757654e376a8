"""Figures as PNG (matplotlib, Agg): PR and ROC curves, per-generator bars, robustness lines, t-SNE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pr_roc(labels: np.ndarray, scores: np.ndarray, path: Path, title: str = "") -> Path:
    """Precision-recall and ROC curves side by side (scikit-learn's curves)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    precision, recall, _ = precision_recall_curve(labels, scores)
    a.plot(recall, precision)
    a.set(xlabel="recall", ylabel="precision", title=f"PR (AP {100 * average_precision_score(labels, scores):.1f})")
    fpr, tpr, _ = roc_curve(labels, scores)
    b.plot(fpr, tpr)
    b.plot([0, 1], [0, 1], ls="--", c="grey")
    b.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"ROC (AUC {100 * roc_auc_score(labels, scores):.1f})",
    )
    fig.suptitle(plain(title))
    return _save(fig, path)


def generator_bars(results: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """One group of bars per generator, one bar per method/head."""
    plt = _pyplot()
    generators = sorted({g for r in results for g in r["generators"]})
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(generators) * max(1, len(results)) ** 0.5), 4))
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        values = [100 * (r["generators"].get(g, {}).get(metric) or 0) for g in generators]
        ax.bar(np.arange(len(generators)) + i * width, values, width, label=plain(r["model"]))
    ticks = np.arange(len(generators)) + width * (len(results) - 1) / 2
    ax.set_xticks(ticks, [plain(g) for g in generators], rotation=30, ha="right")
    ax.set(ylabel=f"{metric.upper()} (%)", ylim=(0, 100))
    ax.legend(fontsize=8)
    return _save(fig, path)


def robustness_lines(table: dict[str, list[tuple[float, float]]], clean: float, path: Path, metric: str = "AP") -> Path:
    """Fig. 4's layout: one panel per perturbation, the metric against its level (level 0 = clean)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(table), figsize=(4 * len(table), 3.5), squeeze=False)
    for ax, (kind, points) in zip(axes[0], table.items(), strict=True):
        xs = [0, *[p[0] for p in points]]
        ys = [100 * clean, *[100 * p[1] for p in points]]
        ax.plot(range(len(xs)), ys, marker="o")
        ax.set_xticks(range(len(xs)), ["clean", *[f"{x:g}" for x in xs[1:]]])
        ax.set(title=kind, ylabel=f"{metric} (%)", ylim=(0, 100))
    return _save(fig, path)


def tsne(x: np.ndarray, labels: np.ndarray, generators: list[str], path: Path, seed: int = 0, title: str = "") -> Path:
    """t-SNE of D (scikit-learn), coloured by real/fake (left) and by generator (right), under `title`."""
    from sklearn.manifold import TSNE

    plt = _pyplot()
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.5))
    for value, name in ((0, "real"), (1, "fake")):
        sel = labels == value
        a.scatter(emb[sel, 0], emb[sel, 1], s=8, label=name)
    a.set(title="t-SNE of D: real / fake")
    a.legend()
    gens = np.array(generators, dtype=object)
    for g in sorted(set(generators)):
        sel = gens == g
        b.scatter(emb[sel, 0], emb[sel, 1], s=8, label=plain(g))
    b.set(title="by generator")
    b.legend(fontsize=8)
    if title:
        fig.suptitle(plain(title))
    return _save(fig, path)


def plain(text: str) -> str:
    """`text` as matplotlib draws it literally: a `$` in a name would start its mathtext."""
    return str(text).replace("$", r"\$")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
