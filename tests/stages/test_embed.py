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


def test_texts_longer_than_clips_context_are_counted_per_row_in_the_summary_and_warned(tmp_path, caplog):
    """No silent truncation: a caption past CLIP's 77 tokens (start and end included) is embedded cut
    to them, and the row, the stage's summary and the log say so. Token counts from open_clip's
    documented tokenizer."""
    import csv
    import logging

    import open_clip

    from pipeline.app.demo import make_images
    from pipeline.app.runner import run_stage
    from pipeline.engine.config import resolve
    from pipeline.engine.store import Store

    files = sorted(make_images(tmp_path / "images", n_per_class=1).rglob("*.png"))
    long = " ".join(["red car on the street"] * 20)  # 100 words
    captions = ["a dog on the grass", long, " ".join(["tree"] * 76), " ".join(["tree"] * 75)]
    tokens = open_clip.get_tokenizer("ViT-L-14")
    assert [len(tokens.encode(c)) + 2 > 77 for c in captions] == [False, True, True, False]  # 75 + 2 fits
    listing = tmp_path / "list.csv"
    with listing.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "caption"), *zip(map(str, files), captions, strict=True)])
    store = Store(tmp_path / "data")
    config = resolve("tiny", {"caption": {"backend": "column"}}, {"device": "cpu"})
    run_stage("ingest", config, store, inputs=[listing])
    for name in ("caption", "ground"):
        run_stage(name, config, store)
    with caplog.at_level(logging.WARNING, logger="stages.embed"):
        run_stage("embed", config, store)
    embed = make_stage("embed", config, store)
    rows = pl.from_arrow(embed.output.read()).join(
        pl.from_arrow(store.features("ground", make_stage("ground", config, store).fingerprint).read()), on="image_id"
    )
    caption_of = dict(pl.from_arrow(store.manifest.read(["image_id", "caption"])).iter_rows())
    expected = {
        r["image_id"]: (len(tokens.encode(caption_of[r["image_id"]])) + 2 > 77)
        + sum(len(tokens.encode(o["phrase"])) + 2 > 77 for o in r["objects"])
        for r in rows.iter_rows(named=True)
    }
    assert dict(rows.select("image_id", "truncated_texts").iter_rows()) == expected
    assert sum(expected.values()) >= 1 and embed.summary()["truncated_texts"] == sum(expected.values())
    assert any("longer than the text encoder's 77 tokens" in r.getMessage() for r in caplog.records)
