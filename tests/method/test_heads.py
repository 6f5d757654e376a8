"""Every head learns a planted signal from cached rows and stays at chance on shuffled labels;
heads are saved without pickle; calibration uses the validation split only."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score

from benchmarks.synthetic import synthetic_rows, write_synthetic
from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.config import resolve
from pipeline.engine.store import Store
from pipeline.method.heads import HEADS, FittedHead, best_threshold, fit_temperature, sigmoid

FAST = {"mlp": {"hidden_dim": 64, "epochs": 10}, "lightgbm": {"lgbm_n_estimators": 60}, "logreg": {}}


def split_xy(signal: float, seed: int = 0):
    manifest, distance = synthetic_rows(2000, dim=32, signal=signal, seed=seed)
    frame = pl.from_arrow(manifest).join(pl.from_arrow(distance), on="image_id")
    x = (frame["d_global"].to_numpy() + frame["d_local"].to_numpy()).astype(np.float32)
    y = frame["label"].to_numpy()
    train = frame["split"].to_numpy() == "train"
    return x[train], y[train], x[~train], y[~train]


@pytest.mark.parametrize("name", HEADS.names())
def test_head_learns_planted_signal_and_not_noise(name):
    cfg = resolve("paper", {"fit": {"head": name, **FAST[name]}}).stage("fit")
    x, y, x_test, y_test = split_xy(signal=4.0)
    head = HEADS.get(name)(cfg)
    head.fit(x, y)
    assert average_precision_score(y_test, sigmoid(head.logits(x_test))) > 0.95
    rng = np.random.default_rng(1)
    shuffled = HEADS.get(name)(cfg)
    shuffled.fit(x, rng.permutation(y))
    ap = average_precision_score(y_test, sigmoid(shuffled.logits(x_test)))
    assert abs(ap - y_test.mean()) < 0.1  # chance: AP near the share of fakes


def test_calibration_helpers():
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert 0.3 < best_threshold(scores, labels) <= 0.35
    z = np.array([-4.0, -2.0, 2.0, 4.0, -1.0, 1.0])
    overconfident = np.array([0, 0, 1, 1, 1, 0])
    assert fit_temperature(z, overconfident) > 1.0  # two confident mistakes: soften


@pytest.mark.parametrize("name", HEADS.names())
def test_fit_from_cache_saves_without_pickle_and_calibrates_on_val_only(tmp_path, name):
    store = Store(tmp_path)
    config = resolve("tiny", {"fit": {"head": name, **FAST[name]}})
    fp = make_stage("distance", config, store).fingerprint
    write_synthetic(store, make_stage("distance", config, store), 1500, dim=768, signal=3.0, chunk=500)
    run_stage("fit", config, store)
    stage = make_stage("fit", config, store)
    files = {p.name for p in stage.model_dir.iterdir()}
    assert files == {"config.json", HEADS.get(name).weight_file}
    head = FittedHead(stage.model_dir)
    saved = json.loads((stage.model_dir / "config.json").read_text())
    assert saved["features"]["fingerprint"] == fp and saved["head"] == name
    val = stage.vectors("val")
    x_val = stage.matrix(val)
    expected = best_threshold(head.predict_calibrated(x_val), val["label"].to_numpy())
    assert head.calibration["threshold"] == pytest.approx(expected)
    assert head.calibration["n"] == val.height and head.calibration["fitted"]
    # changing test labels changes neither the head's fingerprint nor its calibration
    manifest = pl.from_arrow(store.manifest.read())
    flipped = manifest.with_columns(
        pl.when(pl.col("split") == "test").then(1 - pl.col("label")).otherwise(pl.col("label")).alias("label")
    )
    for part in store.manifest.parts():
        part.unlink()
    store.manifest.write(flipped.to_arrow())
    again = make_stage("fit", config, store)
    assert again.fingerprint == stage.fingerprint and run_stage("fit", config, store).computed == 0


def test_feature_choice_moves_the_fingerprint(tmp_path):
    store = Store(tmp_path)
    write_synthetic(store, make_stage("distance", resolve("tiny"), store), 50, dim=768)
    fps = {
        f: make_stage("fit", resolve("tiny", {"fit": {"features": f}}), store).fingerprint
        for f in ("both", "global", "local")
    }
    assert len(set(fps.values())) == 3
    mlp_knob = resolve("tiny", {"fit": {"head": "logreg", "hidden_dim": 7}})
    assert (
        make_stage("fit", mlp_knob, store).fingerprint
        == make_stage("fit", resolve("tiny", {"fit": {"head": "logreg"}}), store).fingerprint
    )


def test_a_threshold_is_not_fitted_on_a_handful_of_validation_rows():
    from pipeline.method.heads import MIN_CALIBRATION_PER_CLASS, calibrate

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 100)
    x = (rng.normal(size=(200, 8)) + y[:, None]).astype(np.float32)
    head = HEADS.get("logreg")(resolve("tiny", {"fit": {"head": "logreg"}}).stage("fit"))
    head.fit(x, y)
    few = MIN_CALIBRATION_PER_CLASS - 1
    small = calibrate(head, x[: 2 * few], y[: 2 * few])  # `few` real and `few` fake rows
    assert not small["fitted"] and small["threshold"] == 0.5 and small["temperature"] == 1.0
    assert f"{few} real and {few} fake" in small["note"]
    assert calibrate(head, x, y)["fitted"]


def test_a_head_is_named_by_what_tells_it_apart(tmp_path):
    from pipeline.method.heads import describe, resolve_model, varying

    base = {"head": "mlp", "features": "both", "w1": 1.0, "w2": 1.0, "epochs": 50, "train_generators": []}
    ablation = {**base, "w2": 0.5}
    short = {**base, "epochs": 10, "train_generators": ["progan"]}
    assert describe("mlp-aaa", ablation) == "mlp-aaa (both, w1=1, w2=0.5)"
    assert varying([base, ablation, short]) == ["epochs", "train_generators"]  # w2 is always shown
    assert (
        describe("mlp-ccc", short, varying([base, short])) == "mlp-ccc (both, w1=1, w2=1, epochs=10, "
        "train_generators=progan)"
    )
    (tmp_path / "mlp-aaa").mkdir()
    (tmp_path / "mlp-aaa" / "config.json").write_text("{}")
    assert resolve_model(tmp_path, "mlp-aaa") == tmp_path / "mlp-aaa"  # a name under models/
    assert resolve_model(tmp_path, tmp_path / "elsewhere") == tmp_path / "elsewhere"  # a path stays a path
