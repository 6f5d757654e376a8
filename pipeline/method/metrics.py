"""Detection metrics (scikit-learn) and the paper's table layout."""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS = ("acc", "ap", "auc", "real_acc", "fake_acc", "tpr_at_1fpr", "tpr_at_5fpr")
LABELS = {
    "acc": "ACC",
    "ap": "AP",
    "auc": "AUC",
    "real_acc": "real ACC",
    "fake_acc": "fake ACC",
    "tpr_at_1fpr": "TPR@1%FPR",
    "tpr_at_5fpr": "TPR@5%FPR",
    "acc_calibrated": "ACC (calibrated)",
}


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, max_fpr: float) -> float:
    """The highest true-positive rate whose false-positive rate is at most `max_fpr` (ROC curve)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def detection_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """ACC at `threshold`, AP, AUC, real/fake accuracy and TPR at 1% and 5% FPR.

    Metrics that need both classes (AP, AUC, TPR@FPR) are None when one is absent.
    """
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    pred = (scores >= threshold).astype(int)
    both = len(set(labels.tolist())) == 2
    real, fake = labels == 0, labels == 1
    return {
        "n": int(len(labels)),
        "n_fake": int(fake.sum()),
        "acc": float(accuracy_score(labels, pred)) if len(labels) else None,
        "ap": float(average_precision_score(labels, scores)) if both else None,
        "auc": float(roc_auc_score(labels, scores)) if both else None,
        "real_acc": float(accuracy_score(labels[real], pred[real])) if real.any() else None,
        "fake_acc": float(accuracy_score(labels[fake], pred[fake])) if fake.any() else None,
        "tpr_at_1fpr": tpr_at_fpr(labels, scores, 0.01) if both else None,
        "tpr_at_5fpr": tpr_at_fpr(labels, scores, 0.05) if both else None,
    }


def mean_over(groups: dict[str, dict[str, Any]], metric: str) -> float | None:
    values = [g[metric] for g in groups.values() if g.get(metric) is not None]
    return float(np.mean(values)) if values else None


def table(results: list[dict[str, Any]], metric: str, markdown: bool = True) -> str:
    """Rows = heads (or runs), columns = generators, last column the mean over generators (paper layout)."""
    generators = sorted({g for r in results for g in r["generators"]})
    header = ["method", *generators, "mean"]

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    rows = [
        [
            r["model"],
            *(cell(r["generators"].get(g, {}).get(metric)) for g in generators),
            cell(mean_over(r["generators"], metric)),
        ]
        for r in results
    ]
    if not markdown:
        return "\n".join(",".join(line) for line in [header, *rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
