"""Each model stage's rows equal each library's own documented single-image use on the same inputs:
BLIP-2 processor + `generate`; Grounding DINO processor + `post_process_grounded_object_detection`;
open_clip `create_model_and_transforms` + `encode_image`/`encode_text` for crops and phrases, and the
paper's plain 224 centre crop (torchvision `CenterCrop`) for the whole image.

Documented choices on top of the libraries (README, "The method, as implemented"): the grounding
prompt is the lower-cased caption ending in "."; objects with an empty phrase are dropped, boxes are
clipped to the image and the best `max_objects` kept; an image smaller than 224 on a side is resized
the open_clip way before the centre crop."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.store import Store
from pipeline.models.grounders import finish, prompt_of
from pipeline.models.tiny import build_tiny
from tests.conftest import tiny


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A few mixed-size images through caption, ground and embed with the tiny profile."""
    root = tmp_path_factory.mktemp("ref")
    (root / "in").mkdir()
    rng = np.random.default_rng(3)
    for name, (w, h) in {"a.png": (640, 480), "b.png": (301, 517), "c.png": (257, 259), "d.png": (900, 120)}.items():
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / "in" / name)
    store = Store(root / "data")
    config = tiny(batch_size=3)
    run_stage("ingest", config, store, inputs=[root / "in"])
    for stage in ("caption", "ground", "embed"):
        run_stage(stage, config, store)
    manifest = pl.from_arrow(store.manifest.read(["image_id", "path"]))

    def rows(stage: str) -> dict:
        frame = pl.from_arrow(store.features(stage, make_stage(stage, config, store).fingerprint).read())
        return {r["image_id"]: r for r in frame.iter_rows(named=True)}

    images = {i: Image.open(p).convert("RGB") for i, p in manifest.iter_rows()}
    return config, images, rows("caption"), rows("ground"), rows("embed")


def test_caption_equals_blip2_generate_on_one_image(cached):
    config, images, captions, _, _ = cached
    cfg = config.stage("caption")
    model, processor = build_tiny("blip2", cfg.seed)
    for image_id, image in images.items():
        inputs = processor(images=image, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens)
        expected = " ".join(processor.batch_decode(out, skip_special_tokens=True)[0].split())
        assert captions[image_id]["caption"] == expected


def test_ground_equals_grounding_dino_post_processing_on_one_image(cached):
    config, images, captions, grounded, _ = cached
    cfg = config.stage("ground")
    model, processor = build_tiny("grounding-dino", cfg.seed)
    processor.image_processor.size = {"shortest_edge": cfg.shortest_edge, "longest_edge": cfg.longest_edge}
    for image_id, image in images.items():
        text = prompt_of(captions[image_id]["caption"])
        inputs = processor(images=image, text=text, return_tensors="pt")
        with torch.inference_mode():
            outputs = model(**inputs)
        [r] = processor.post_process_grounded_object_detection(
            outputs,
            input_ids=inputs["input_ids"],
            threshold=cfg.box_threshold,
            text_threshold=cfg.text_threshold,
            target_sizes=[(image.height, image.width)],
        )
        raw = [
            {"phrase": p, "box": b, "score": s}
            for p, b, s in zip(r["text_labels"], r["boxes"].tolist(), r["scores"].tolist(), strict=True)
        ]
        expected = finish(raw, image.width, image.height, cfg.max_objects)
        stored = grounded[image_id]["objects"]
        assert [o["phrase"] for o in stored] == [o["phrase"] for o in expected]
        np.testing.assert_allclose([o["box"] for o in stored], [o["box"] for o in expected], atol=1e-3)
        np.testing.assert_allclose([o["score"] for o in stored], [o["score"] for o in expected], atol=1e-6)


def test_embed_equals_open_clip_on_the_centre_crop_the_crops_and_the_phrases(cached):
    import open_clip

    config, images, captions, grounded, embedded = cached
    cfg = config.stage("embed")
    name = build_tiny("clip", cfg.seed)  # seeds torch, as the stage's load does
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    centre = T.Compose([T.CenterCrop(224), T.ToTensor(), preprocess.transforms[-1]])  # the paper's plain crop
    for image_id, image in images.items():
        row = embedded[image_id]
        with torch.inference_mode():
            # the documented choice: smaller than 224 on a side, the image is resized the open_clip way
            whole_input = centre(image) if min(image.size) >= 224 else preprocess(image)
            whole = model.encode_image(whole_input[None])[0].numpy()
            caption = model.encode_text(tokenizer([captions[image_id]["caption"]]))[0].numpy()
            objects = grounded[image_id]["objects"]
            crops = [image.crop(_outward(o["box"], image)) for o in objects]
            crop_vecs = [model.encode_image(preprocess(c)[None])[0].numpy() for c in crops]
            phrase_vecs = [model.encode_text(tokenizer([o["phrase"]]))[0].numpy() for o in objects]
        np.testing.assert_allclose(row["image_embed"], whole, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(row["text_embed"], caption, rtol=1e-4, atol=1e-5)
        assert len(row["object_image_embeds"]) == len(objects) > 0
        for stored, expected in zip(row["object_image_embeds"], crop_vecs, strict=True):
            np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)
        for stored, expected in zip(row["object_text_embeds"], phrase_vecs, strict=True):
            np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)


def _outward(box, image):
    """The documented crop: the box rounded outward to whole pixels, clamped to the image, at least 1x1."""
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])), image.width), min(int(np.ceil(box[3])), image.height)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)
