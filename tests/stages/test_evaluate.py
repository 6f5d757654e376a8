"""evaluate keeps the paper's protocol: ACC at the fixed threshold 0.5 (Tables I-II), whatever the
calibration fitted on the validation split; the calibrated threshold has its own column."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score

from benchmarks.synthetic import write_synthetic
from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.config import resolve
from pipeline.engine.store import Store
from pipeline.method.heads import FittedHead


def test_acc_is_at_0_5_even_when_calibration_moves_the_threshold(tmp_path):
    store = Store(tmp_path)
    config = resolve("tiny", {"fit": {"head": "logreg"}})
    write_synthetic(store, make_stage("distance", config, store), 3000, dim=768, signal=0.6, seed=3)
    run_stage("fit", config, store)
    fit = make_stage("fit", config, store)
    head = FittedHead(fit.model_dir)
    threshold = head.calibration["threshold"]
    rows = fit.vectors("test")
    labels, x = rows["label"].to_numpy(), fit.matrix(rows)
    at_half = accuracy_score(labels, head.predict_proba(x) >= 0.5)
    at_calibrated = accuracy_score(labels, head.predict_calibrated(x) >= threshold)
    # the test can tell the two apart: calibration moved the threshold and the accuracy with it
    assert head.calibration.get("fitted") and abs(threshold - 0.5) > 0.01 and at_half != at_calibrated
    evaluate = make_stage("evaluate", config, store)
    evaluate.run()
    result = evaluate.result["all"]
    assert np.isclose(result["acc"], at_half) and np.isclose(result["acc_calibrated"], at_calibrated)
    assert evaluate.result["threshold"] == 0.5
