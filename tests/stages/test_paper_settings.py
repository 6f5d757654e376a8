"""The paper profile's settings on the tiny models (`tiny-paper`): thresholds 0.35/0.25, the 800/1333
resize, bf16 captioner and CLIP, 16 objects, so that every branch a real run takes runs offline."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl

from pipeline.app.demo import make_images
from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.config import resolve
from pipeline.engine.store import Store

MODEL_FIELDS = {"model", "pretrained", "min_new_tokens"}  # what tiny-paper changes: models, and text to see


def test_tiny_paper_differs_from_paper_only_in_the_models():
    paper, tiny_paper = resolve("paper"), resolve("tiny-paper")
    for stage in ("caption", "ground", "embed", "distance"):
        a, b = dataclasses.asdict(paper.stage(stage)), dataclasses.asdict(tiny_paper.stage(stage))
        assert {k for k in a if a[k] != b[k]} <= MODEL_FIELDS, stage
    assert tiny_paper.stage("caption").dtype == tiny_paper.stage("embed").dtype == "bfloat16"
    assert (tiny_paper.stage("ground").box_threshold, tiny_paper.stage("ground").text_threshold) == (0.35, 0.25)


def test_every_stage_runs_at_paper_settings(tmp_path):
    store = Store(tmp_path / "data")
    config = resolve("tiny-paper", {}, {"device": "cpu", "batch_size": 4, "chunk_size": 4})
    run_stage("ingest", config, store, inputs=[make_images(tmp_path / "images", n_per_class=1)])
    for stage in ("caption", "ground", "embed", "distance"):
        stats = run_stage(stage, config, store)
        assert (stats.ok, stats.error) == (4, 0), (stage, stats.errors)

    def rows(stage: str) -> pl.DataFrame:
        return pl.from_arrow(store.features(stage, make_stage(stage, config, store).fingerprint).read())

    objects = [o for row in rows("ground")["objects"].to_list() for o in row]
    assert objects and all(o["score"] >= 0.35 and o["phrase"].strip() for o in objects)  # thresholds applied
    assert max(len(row) for row in rows("ground")["objects"].to_list()) <= 16
    embed = rows("embed")
    vectors = np.stack(embed["image_embed"].to_numpy())
    assert vectors.dtype == np.float32 and np.isfinite(vectors).all()  # bf16 model, float32 rows
    assert (rows("distance")["n_objects"] == rows("ground")["objects"].list.len()).all()
