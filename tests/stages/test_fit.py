"""fit and evaluate from the cache: the paper's head, saved without pickle, reused when unchanged."""

from __future__ import annotations

import json

import numpy as np

from pipeline.config import FitConfig
from pipeline.heads import NumpyMlp, feature_matrix, load_head, train_mlp
from pipeline.runner import make_stage, run_stage
from tests.conftest import tiny


def test_fit_saves_safetensors_and_json_and_is_reused(full_run):
    config = tiny()
    stage = make_stage("fit", config, full_run)
    model_dir = stage.model_dir
    assert (model_dir / "model.safetensors").exists()
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["fit"]["epochs"] == 50 and saved["fit"]["lr"] == 1e-3 and saved["fit"]["weight_decay"] == 1e-3
    assert saved["features"]["fingerprint"] == make_stage("distance", config, full_run).fingerprint
    assert not list(model_dir.glob("*.pkl")) and not list(model_dir.glob("*.pt"))
    again = run_stage("fit", config, full_run)
    assert again.computed == 0
    assert (full_run.models / "LATEST").read_text().strip() == model_dir.name


def test_evaluate_reports_acc_and_ap_per_generator(full_run):
    stage = make_stage("evaluate", tiny(), full_run)
    stage.run()
    result = stage.result
    assert set(result["generators"]) <= {"toygan", "toydiff"}
    assert 0 <= result["all"]["acc"] <= 1
    assert result["all"]["ap"] is None or 0 <= result["all"]["ap"] <= 1
    assert (full_run.reports / "metrics.json").exists()


def test_mlp_learns_a_planted_signal_and_numpy_inference_matches():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    d_g = rng.normal(size=(400, 16)).astype(np.float32)
    d_g[:, 0] += 4.0 * y  # the label lives in one direction of D_g (Bayes accuracy 0.98)
    d_l = np.zeros_like(d_g)
    x = feature_matrix(d_g, d_l, "both", 1.0, 1.0)
    cfg = FitConfig(hidden_dim=32, epochs=20, batch_size=32)
    weights = train_mlp(x, y, cfg)
    assert set(weights) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert weights["fc1.weight"].shape == (32, 16) and weights["fc2.weight"].shape == (2, 32)
    p = NumpyMlp(weights, {}).predict_proba(x)
    assert ((p >= 0.5) == y).mean() > 0.93
    import torch

    from pipeline.heads import build_mlp

    model = build_mlp(16, 32)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    with torch.no_grad():
        p_torch = torch.softmax(model(torch.from_numpy(x)), dim=1)[:, 1].numpy()
    np.testing.assert_allclose(p, p_torch, atol=1e-5)


def test_feature_choice_and_weights():
    d_g, d_l = np.ones((2, 3)), np.full((2, 3), 2.0)
    assert feature_matrix(d_g, d_l, "both", 1.0, 1.0)[0, 0] == 3.0
    assert feature_matrix(d_g, d_l, "both", 0.5, 2.0)[0, 0] == 4.5
    assert feature_matrix(d_g, d_l, "global", 1.0, 1.0)[0, 0] == 1.0
    assert feature_matrix(d_g, d_l, "local", 1.0, 1.0)[0, 0] == 2.0


def test_head_round_trip(full_run):
    head = load_head(make_stage("fit", tiny(), full_run).model_dir)
    p = head.predict_proba(np.zeros((3, head.config["in_dim"]), dtype=np.float32))
    assert p.shape == (3,) and np.all((p >= 0) & (p <= 1))
