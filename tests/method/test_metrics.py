"""Metrics against scikit-learn and a hand-checked case; the paper's table layout."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve

from pipeline.method.metrics import detection_metrics, table


def test_hand_checked_tiny_case():
    # ranked by score: 0.9 fake, 0.6 real, 0.4 fake, 0.1 real
    m = detection_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
    assert m["acc"] == 0.5  # predictions 0 1 0 1: first and last right
    assert m["ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # precision 1 at the first fake, 2/3 at the second
    assert m["auc"] == pytest.approx(0.75)  # 3 of the 4 fake-real pairs ordered right
    assert (m["real_acc"], m["fake_acc"]) == (0.5, 0.5)
    # two real images cannot show a 1% or 5% false-positive rate: no TPR figure rather than a wrong one
    assert m["tpr_at_1fpr"] is None and m["tpr_at_5fpr"] is None
    assert (m["n"], m["n_real"], m["n_fake"]) == (4, 2, 2)


def test_matches_scikit_learn_on_a_known_case():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    scores = np.clip(0.3 * labels + rng.normal(0.35, 0.2, 500), 0, 1)
    m = detection_metrics(labels, scores, threshold=0.5)
    assert m["acc"] == accuracy_score(labels, scores >= 0.5)
    assert m["ap"] == average_precision_score(labels, scores)
    assert m["auc"] == roc_auc_score(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    assert m["tpr_at_5fpr"] == tpr[fpr <= 0.05].max() and m["tpr_at_1fpr"] == tpr[fpr <= 0.01].max()
    lo, hi = m["ap_ci95"]
    assert lo < m["ap"] < hi and hi - lo < 0.15  # 500 images: a narrow interval around the figure
    assert m["acc_ci95"][0] < m["acc"] < m["acc_ci95"][1]
    assert m["real_acc"] == accuracy_score(labels[labels == 0], scores[labels == 0] >= 0.5)


def test_one_class_leaves_ranking_metrics_empty():
    m = detection_metrics(np.array([1, 1]), np.array([0.7, 0.2]))
    assert m["acc"] == 0.5 and m["ap"] is None and m["auc"] is None and m["real_acc"] is None


def test_table_rows_are_heads_columns_generators_then_mean():
    results = [
        {"model": "mlp-1", "generators": {"b": {"ap": 0.9}, "a": {"ap": 0.5}}},
        {"model": "logreg-2", "generators": {"a": {"ap": 1.0}}},
    ]
    md = table(results, "ap").splitlines()
    assert md[0] == "| method | a | b | mean |"
    assert md[2] == "| mlp-1 | 50.00 | 90.00 | 70.00 |"
    assert md[3] == "| logreg-2 | 100.00 | - | 100.00 |"
    assert md[4] == "| n (real/fake) | - | - | - |"  # no counts given: none shown, nothing marked
    assert table(results, "ap", markdown=False).splitlines()[0] == "method,a,b,mean"


def test_a_cell_on_few_images_is_marked_and_counted():
    rng = np.random.default_rng(0)
    few = detection_metrics(np.array([0, 1, 0, 1]), np.array([0.2, 0.9, 0.4, 0.7]))
    many = detection_metrics(np.repeat([0, 1], 60), np.concatenate([rng.uniform(0, 0.6, 60), rng.uniform(0.4, 1, 60)]))
    md = table([{"model": "h", "generators": {"gan": few, "sd": many}, "all": many}], "ap")
    lines = md.splitlines()
    assert lines[2].startswith("| h | 100.00† | ") and "†" not in lines[2].split("|")[3]
    assert lines[3] == "| n (real/fake) | 4 (2/2) | 120 (60/60) | 120 (60/60) |"
    assert "fewer than 10 real or 10 fake images" in md


def test_tsne_panels_are_fig_9s_generators_each_with_its_reals_beside_the_pooled_rows():
    import polars as pl

    from pipeline.method.evaluation import tsne_panels

    generators = ["cnndetection/progan"] * 4 + ["cnndetection/stargan"] * 4 + ["ufd/laion/ldm_200"] * 2
    generators += ["ufd/laion/real"] * 2 + ["cnndetection/biggan"] * 4
    labels = [0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1]
    rows = pl.DataFrame(
        {
            "image_id": [f"{k:02d}" for k in range(16)],
            "generator": generators,
            "label": labels,
            "dataset": ["cnndetection"] * 8 + ["ufd"] * 4 + ["cnndetection"] * 4,
        }
    )
    panels = tsne_panels(rows)
    assert list(panels) == ["all", "ProGAN", "LDM", "StarGAN"]
    assert panels["all"].height == 16
    assert panels["ProGAN"]["image_id"].to_list() == ["00", "01", "02", "03"]
    assert panels["LDM"]["image_id"].to_list() == ["08", "09", "10", "11"]  # LDM's fakes with LAION's reals
    assert panels["StarGAN"]["image_id"].to_list() == ["04", "05", "06", "07"]
    assert tsne_panels(rows, limit=5)["all"].height == 5
    demo = rows.with_columns(pl.Series("generator", ["toygan"] * 8 + ["toydiff"] * 8))
    assert list(tsne_panels(demo)) == ["all", "toydiff", "toygan"]
