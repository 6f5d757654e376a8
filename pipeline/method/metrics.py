"""Detection metrics (scikit-learn) and the paper's table layout."""

from __future__ import annotations

import csv
import io
import re
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


MIN_PER_CLASS = 10  # a table cell resting on fewer real or fake images than this is marked
MIN_REALS_FOR_TPR = {0.01: 100, 0.05: 20}  # below these, an FPR of 1% / 5% cannot even be observed
BOOTSTRAP = 200  # resamples for the 95% intervals of ACC and AP
BOOTSTRAP_MAX_N = 5000  # larger groups: the interval is narrow (about +-1.5 points at most) and not computed


def bootstrap_ci(labels: np.ndarray, scores: np.ndarray, threshold: float, seed: int = 0) -> dict[str, Any]:
    """95% percentile bootstrap intervals of ACC and AP (resampling images), or None where undefined."""
    from sklearn.metrics import average_precision_score

    n = len(labels)
    if n == 0 or n > BOOTSTRAP_MAX_N:
        return {"acc_ci95": None, "ap_ci95": None}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(BOOTSTRAP, n))
    acc = ((scores[idx] >= threshold).astype(int) == labels[idx]).mean(axis=1)
    aps = [average_precision_score(labels[i], scores[i]) for i in idx if 0 < labels[i].sum() < n]
    return {
        "acc_ci95": [float(v) for v in np.percentile(acc, [2.5, 97.5])],
        "ap_ci95": [float(v) for v in np.percentile(aps, [2.5, 97.5])] if len(aps) >= BOOTSTRAP // 2 else None,
    }


def detection_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """ACC at `threshold`, AP, AUC, real/fake accuracy and TPR at 1% and 5% FPR, the counts they rest
    on, and 95% bootstrap intervals of ACC and AP.

    Metrics that need both classes (AP, AUC, TPR@FPR) are None when one is absent; TPR at 1% (5%)
    FPR is None with fewer than 100 (20) real images, where that false-positive rate cannot be seen.
    """
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    pred = (scores >= threshold).astype(int)
    both = len(set(labels.tolist())) == 2
    real, fake = labels == 0, labels == 1
    n_real = int(real.sum())
    return {
        "n": int(len(labels)),
        "n_fake": int(fake.sum()),
        "n_real": n_real,
        "acc": float(accuracy_score(labels, pred)) if len(labels) else None,
        "ap": float(average_precision_score(labels, scores)) if both else None,
        "auc": float(roc_auc_score(labels, scores)) if both else None,
        "real_acc": float(accuracy_score(labels[real], pred[real])) if real.any() else None,
        "fake_acc": float(accuracy_score(labels[fake], pred[fake])) if fake.any() else None,
        "tpr_at_1fpr": tpr_at_fpr(labels, scores, 0.01) if both and n_real >= MIN_REALS_FOR_TPR[0.01] else None,
        "tpr_at_5fpr": tpr_at_fpr(labels, scores, 0.05) if both and n_real >= MIN_REALS_FOR_TPR[0.05] else None,
        **bootstrap_ci(labels, scores, threshold),
    }


def too_few(group: dict[str, Any]) -> bool:
    """Whether a figure rests on fewer than MIN_PER_CLASS real or fake images (unknown counts: no)."""
    if group.get("n") is None:
        return False
    n_fake = group.get("n_fake") or 0
    n_real = group.get("n_real", (group.get("n") or 0) - n_fake)
    return min(n_real, n_fake) < MIN_PER_CLASS


def mean_over(groups: dict[str, dict[str, Any]], metric: str) -> float | None:
    values = [g[metric] for g in groups.values() if g.get(metric) is not None]
    return float(np.mean(values)) if values else None


# Characters that would end a Markdown table cell (|) or start markup or HTML in it; a name keeps them
# backslash-escaped (CommonMark's escapes), so a generator named "a|b<c>" stays one cell, as written.
MARKDOWN_SPECIAL = re.compile(r"([\\|*`\[\]<>])")


def markdown_cell(text: object) -> str:
    """A name as one Markdown table cell: its special characters escaped, its line breaks spaces."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).splitlines()))


def csv_line(cells: list[str]) -> str:
    """One CSV line: a cell holding a comma, quote or line break is quoted (RFC 4180)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    return out.getvalue()


def table(results: list[dict[str, Any]], metric: str, markdown: bool = True) -> str:
    """Rows = heads (or runs), columns = generators, last column the mean over generators (paper layout).

    Markdown adds the images each column rests on and marks (†) cells with fewer than MIN_PER_CLASS
    real or fake images; CSV keeps plain numbers.
    """
    generators = sorted({g for r in results for g in r["generators"]})
    header = ["method", *generators, "mean"]
    marked = False

    def cell(group: dict[str, Any] | None, v: float | None) -> str:
        nonlocal marked
        if v is None:
            return "-"
        text = f"{100 * v:.2f}"
        if markdown and group is not None and too_few(group):
            marked = True
            return text + "†"
        return text

    rows = [
        [
            r["model"],
            *(cell(r["generators"].get(g), r["generators"].get(g, {}).get(metric)) for g in generators),
            cell(None, mean_over(r["generators"], metric)),
        ]
        for r in results
    ]
    if not markdown:
        return "\n".join(csv_line(line) for line in [header, *rows])
    header = [markdown_cell(h) for h in header]
    for row in rows:
        row[0] = markdown_cell(row[0])

    def count(group: dict[str, Any] | None) -> str:
        if not group or group.get("n") is None:
            return "-"
        n_fake = group.get("n_fake") or 0
        return f"{group['n']} ({group['n'] - n_fake}/{n_fake})"

    first = results[0] if results else {"generators": {}, "all": None}
    rows.append(["n (real/fake)", *(count(first["generators"].get(g)) for g in generators), count(first.get("all"))])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if marked:
        lines.append(
            f"\n† rests on fewer than {MIN_PER_CLASS} real or {MIN_PER_CLASS} fake images: "
            "unreliable (95% bootstrap intervals in metrics.json)"
        )
    return "\n".join(lines)
