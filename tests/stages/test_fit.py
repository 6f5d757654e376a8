"""fit and evaluate on the tiny pipeline's cached rows."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import torch

from pipeline.app.runner import make_stage, run_stage
from pipeline.method.evaluation import generator_groups
from pipeline.method.heads import FittedHead, MlpHead, build_mlp, feature_matrix
from tests.conftest import tiny


def test_fit_saves_the_papers_head_and_reuses_it(full_run):
    config = tiny()
    stage = make_stage("fit", config, full_run)
    saved = json.loads((stage.model_dir / "config.json").read_text())
    assert saved["fit"]["epochs"] == 50 and saved["fit"]["lr"] == 1e-3 and saved["fit"]["weight_decay"] == 1e-3
    assert saved["features"]["fingerprint"] == make_stage("distance", config, full_run).fingerprint
    assert saved["pipeline"]["profile"] == "tiny"
    assert run_stage("fit", config, full_run).computed == 0
    assert (full_run.models / "LATEST").read_text().strip() == stage.model_dir.name


def test_numpy_scoring_equals_the_torch_module(full_run):
    head = FittedHead(make_stage("fit", tiny(), full_run).model_dir)
    assert isinstance(head.head, MlpHead)
    w = head.head.weights
    model = build_mlp(w["fc1.weight"].shape[1], w["fc1.weight"].shape[0])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()})
    x = np.random.default_rng(0).normal(0, 0.05, (5, w["fc1.weight"].shape[1])).astype(np.float32)
    with torch.no_grad():
        p_torch = torch.softmax(model(torch.from_numpy(x)), dim=1)[:, 1].numpy()
    np.testing.assert_allclose(head.predict_proba(x), p_torch, atol=1e-6)


def test_evaluate_reports_every_metric_per_generator_and_mean(full_run):
    stage = make_stage("evaluate", tiny(), full_run)
    stage.run()
    result = stage.result
    assert set(result["generators"]) == {"toygan", "toydiff"}
    for metric in ("acc", "ap", "auc", "real_acc", "fake_acc", "tpr_at_1fpr", "tpr_at_5fpr", "acc_calibrated"):
        assert metric in result["all"] and metric in result["mean"]
    for name in ("metrics.json", "ap.csv", "ap.md", "acc.md", "auc.csv", "tpr_at_1fpr.md"):
        assert (full_run.reports / name).exists()
    assert "| method | toydiff | toygan | mean |" in (full_run.reports / "ap.md").read_text()


def test_feature_choice_and_weights():
    d_g, d_l = np.ones((2, 3)), np.full((2, 3), 2.0)
    assert feature_matrix(d_g, d_l, "both", 1.0, 1.0)[0, 0] == 3.0
    assert feature_matrix(d_g, d_l, "both", 0.5, 2.0)[0, 0] == 4.5
    assert feature_matrix(d_g, d_l, "global", 1.0, 1.0)[0, 0] == 1.0
    assert feature_matrix(d_g, d_l, "local", 1.0, 1.0)[0, 0] == 2.0


def test_generators_without_reals_borrow_their_sources_reals():
    rows = pl.DataFrame(
        {
            "generator": ["progan", "progan", "bedroom/adm", "bedroom/ldm", "bedroom/real", "cat/adm", "sd", None],
            "dataset": ["cnn", "cnn", "df", "df", "df", "df", "other", "other"],
            "label": [0, 1, 1, 1, 0, 1, 1, 0],
        }
    )
    groups = {g: sorted(idx.tolist()) for g, idx in generator_groups(rows).items()}
    assert groups == {"progan": [0, 1], "bedroom/adm": [2, 4], "bedroom/ldm": [3, 4], "cat/adm": [5], "sd": [6, 7]}
