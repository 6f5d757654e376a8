"""The paper profile's settings on the tiny models (`tiny-paper`): thresholds 0.35/0.25, the 800/1333
resize, bf16 captioner, 16 objects, so that every branch a real run takes runs offline."""

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
    assert tiny_paper.stage("caption").dtype == "bfloat16" and tiny_paper.stage("embed").dtype == "float32"
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


def test_bf16_end_to_end_on_the_tiny_models(tmp_path):
    """Every model stage in bf16 (CLIP in open_clip's mixed precision): rows ok, float32 vectors close to
    the float32 run's."""
    bf16 = {s: {"dtype": "bfloat16"} for s in ("caption", "ground", "embed")}
    images = make_images(tmp_path / "images", n_per_class=1)
    vectors = {}
    for name, params in (("fp32", {}), ("bf16", bf16)):
        store = Store(tmp_path / name)
        config = resolve("tiny", params, {"device": "cpu", "batch_size": 4})
        run_stage("ingest", config, store, inputs=[images])
        for stage in ("caption", "ground", "embed", "distance"):
            stats = run_stage(stage, config, store)
            assert (stats.ok, stats.error) == (4, 0), (name, stage, stats.errors)
        embed = pl.from_arrow(store.features("embed", make_stage("embed", config, store).fingerprint).read())
        vectors[name] = np.stack(embed.sort("image_id")["image_embed"].to_numpy())
    assert vectors["bf16"].dtype == np.float32 and np.isfinite(vectors["bf16"]).all()
    rel = np.linalg.norm(vectors["bf16"] - vectors["fp32"], axis=1) / np.linalg.norm(vectors["fp32"], axis=1)
    assert 0 < rel.max() < 0.05  # low precision, measurably, and not broken
