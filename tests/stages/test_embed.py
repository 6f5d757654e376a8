"""embed rows: raw CLIP vectors, one per object and phrase, finite float32."""

from __future__ import annotations

import numpy as np
import polars as pl
from PIL import Image

from pipeline.app.runner import make_stage
from stages.embed import crop_box
from tests.conftest import tiny


def test_embed_rows_shapes_dtypes_and_object_alignment(full_run):
    config = tiny()
    embed = pl.from_arrow(full_run.features("embed", make_stage("embed", config, full_run).fingerprint).read())
    ground = pl.from_arrow(full_run.features("ground", make_stage("ground", config, full_run).fingerprint).read())
    assert embed.schema["image_embed"] == pl.Array(pl.Float32, 768)
    assert embed.schema["object_image_embeds"] == pl.List(pl.Array(pl.Float32, 768))
    image = embed["image_embed"].to_numpy()
    assert image.shape == (24, 768) and np.isfinite(image).all()
    # raw embeddings: not normalised
    assert not np.allclose(np.linalg.norm(image, axis=1), 1.0)
    joined = embed.join(ground, on="image_id")
    assert (joined["object_image_embeds"].list.len() == joined["objects"].list.len()).all()
    assert (joined["object_text_embeds"].list.len() == joined["objects"].list.len()).all()


def test_crop_box_rounds_outward_and_clamps():
    img = Image.new("RGB", (10, 8))
    assert crop_box(img, [1.2, 2.7, 3.1, 4.0]).size == (3, 2)
    assert crop_box(img, [-5, -5, 50, 50]).size == (10, 8)
    assert crop_box(img, [9.5, 7.9, 9.5, 7.9]).size == (1, 1)  # degenerate box: one pixel
