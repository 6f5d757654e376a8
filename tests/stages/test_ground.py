"""ground rows with the tiny Grounding DINO (transformers port)."""

from __future__ import annotations

import polars as pl

from pipeline.app.runner import make_stage
from tests.conftest import tiny


def test_ground_rows_hold_phrases_boxes_in_pixels_and_scores(full_run):
    fp = make_stage("ground", tiny(), full_run).fingerprint
    ground = pl.from_arrow(full_run.features("ground", fp).read())
    assert (ground["status"] == "ok").all() and ground.height == 24
    objects = ground.explode("objects").unnest("objects").drop_nulls("phrase")
    assert objects.height > 0
    assert objects.schema["box"] == pl.Array(pl.Float32, 4)
    boxes = objects["box"].to_numpy()
    assert (boxes >= 0).all() and (boxes <= 256).all()  # clipped to the 256x256 images
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert (objects["phrase"].str.len_chars() > 0).all()
    assert objects["score"].is_between(0, 1).all()
    assert ground["objects"].list.len().max() <= tiny().stage("ground").max_objects
