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


# --- the paper's protocol, pinned to the paper's words (values typed here, not read from the code) ---


def test_the_robustness_grid_is_fig_4s_levels_with_sigma_a_standard_deviation_on_0_1():
    """Fig. 4: noise sigma 0.001/0.005/0.01, blur sigma 1/2/3, JPEG quality 75/50/25, mildest first.
    `noise` reads sigma as the standard deviation of pixels on [0, 1]; `noise_var` as the variance."""
    import io

    from PIL import Image

    from pipeline.method.perturbations import GRID, KINDS, apply, label

    assert GRID == {"noise": (0.001, 0.005, 0.01), "blur": (1, 2, 3), "jpeg": (75, 50, 25)}
    assert KINDS["noise_var"] == (0.001, 0.005, 0.01)
    assert [label("noise", 0.001), label("blur", 2), label("jpeg", 75)] == ["noise:0.001", "blur:2", "jpeg:75"]
    grey = Image.new("RGB", (256, 256), (128, 128, 128))  # mid-grey: no clipping
    for kind, std in (("noise", 0.01), ("noise_var", 0.1)):  # level 0.01: std 0.01, or a variance 0.01
        data, _ = apply(grey, kind, 0.01, seed=0, source_id="x")
        diff = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float64) / 255 - 128 / 255
        assert abs(diff.std() / std - 1) < 0.05, kind
    # sigma 0.001 as a standard deviation: |noise| > half a grey level on about 5% of the pixels
    data, _ = apply(grey, "noise", 0.001, seed=0, source_id="x")
    changed = (np.asarray(Image.open(io.BytesIO(data))) != 128).mean()
    assert 0.04 < changed < 0.06


def test_eq_8_weights_are_the_papers_one_and_one_and_weight_each_distance(tmp_path):
    """D = w1 * D_g + w2 * D_l with w1 = w2 = 1.0 ("We empirically set both the weights ... to 1.0");
    the head trains on exactly that D, or on w1 * D_g (global) or w2 * D_l (local) alone."""
    from benchmarks.synthetic import write_synthetic
    from pipeline.method.rows import to_numpy

    fit = resolve("paper").stage("fit")
    assert (fit.w1, fit.w2, fit.features) == (1.0, 1.0, "both")
    store = Store(tmp_path)
    write_synthetic(store, make_stage("distance", resolve("tiny"), store), 40, dim=768, seed=1)
    weights = (("both", (1.0, 1.0)), ("both", (2.0, 0.5)), ("global", (3.0, 1.0)), ("local", (1.0, 0.25)))
    for features, (w1, w2) in weights:
        config = resolve("tiny", {"fit": {"features": features, "w1": w1, "w2": w2}})
        stage = make_stage("fit", config, store)
        rows = stage.vectors("train")
        d_g, d_l = to_numpy(rows["d_global"]), to_numpy(rows["d_local"])
        assert np.abs(d_l).sum() > 0 and np.abs(d_g - d_l).sum() > 0  # the two distances differ
        expected = {"both": w1 * d_g + w2 * d_l, "global": w1 * d_g, "local": w2 * d_l}[features]
        np.testing.assert_allclose(stage.matrix(rows), expected, rtol=1e-6, atol=1e-7)
