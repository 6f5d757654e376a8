"""Each model stage's rows equal each library's own documented single-image use on the same inputs:
BLIP-2 processor + `generate`; Grounding DINO processor + `post_process_grounded_object_detection`;
open_clip `create_model_and_transforms` + `encode_image`/`encode_text` for crops and phrases, and the
paper's plain 224 centre crop (torchvision `CenterCrop`) for the whole image.

Documented choices on top of the libraries (docs/method.md) are written out here, by hand, not taken
from the code under test: the grounding prompt is the lower-cased caption ending in "."; objects with
an empty phrase are dropped, boxes are clipped to the image (in its own pixels) and the `max_objects`
best kept, best first; an object's crop is its box rounded outward; an image smaller than 224 on a
side is resized the open_clip way before the centre crop.

The tiny Grounding DINO finds objects with distinct phrases, scores and boxes, more than
`max_objects` on some images and none on others (pipeline/models/tiny.py, `vary_grounding`); each
test checks first that what it compares can show the rule it is about."""

from __future__ import annotations

import csv

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from pipeline.app.demo import scene
from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.config import resolve
from pipeline.engine.store import Store
from pipeline.models.tiny import build_tiny
from tests.conftest import tiny

SIZES = {"a.png": (640, 480), "b.png": (301, 517), "c.png": (257, 259), "d.png": (900, 120), "e.png": (200, 150)}


def _images(folder, seed: int = 3) -> None:
    """Smooth scenes (the demo's) at mixed sizes: the processor resizes each to another frame."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, size in SIZES.items():
        for j in range(2):  # two per size: more objects to compare
            pixels = (scene(rng) * 255).round().astype(np.uint8)
            Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC).save(folder / f"{j}{name}")


def _rows(store: Store, config, stage: str) -> dict:
    frame = pl.from_arrow(store.features(stage, make_stage(stage, config, store).fingerprint).read())
    return {r["image_id"]: r for r in frame.iter_rows(named=True)}


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """Mixed-size images through caption, ground and embed with the tiny profile."""
    root = tmp_path_factory.mktemp("ref")
    _images(root / "in")
    store = Store(root / "data")
    config = tiny(batch_size=3)
    run_stage("ingest", config, store, inputs=[root / "in"])
    for stage in ("caption", "ground", "embed"):
        run_stage(stage, config, store)
    manifest = pl.from_arrow(store.manifest.read(["image_id", "path"]))
    images = {i: Image.open(p).convert("RGB") for i, p in manifest.iter_rows()}
    return config, images, *(_rows(store, config, s) for s in ("caption", "ground", "embed"))


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


def grounding_dino(cfg):
    """The tiny Grounding DINO and its processor at the stage's resize (the documented processor setting)."""
    model, processor = build_tiny("grounding-dino", cfg.seed)
    processor.image_processor.size = {"shortest_edge": cfg.shortest_edge, "longest_edge": cfg.longest_edge}
    return model, processor


def bucket(side: int, cfg) -> int:
    """ground.pad_multiple's documented rule (docs/method.md), written out: a resized side is padded
    (masked) up to the next multiple of pad_multiple, or to a resize edge if that is nearer; a side
    that is an edge already, or pad_multiple 0, is left as it is."""
    multiple, edges = getattr(cfg, "pad_multiple", 0), (cfg.shortest_edge, cfg.longest_edge)
    if not multiple or side in edges:
        return side
    return min(-(-side // multiple) * multiple, *(edge for edge in edges if edge >= side))


def detect(model, processor, image, prompt: str, cfg) -> list[dict]:
    """transformers' documented single-image use: processor (padding the resized image with its mask to
    ground's bucket, the processor's own `pad_size`), model, post-processing to the image's own
    (height, width). Every object the model gives, as it gives it."""
    height, width = processor.image_processor(images=image, return_tensors="pt")["pixel_values"].shape[-2:]
    pad = {"height": bucket(int(height), cfg), "width": bucket(int(width), cfg)}
    inputs = processor(images=image, text=prompt, pad_size=pad, return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape[-2:]) == (pad["height"], pad["width"])
    with torch.inference_mode():
        outputs = model(**inputs)
    [r] = processor.post_process_grounded_object_detection(
        outputs,
        input_ids=inputs["input_ids"],
        threshold=cfg.box_threshold,
        text_threshold=cfg.text_threshold,
        target_sizes=[(image.height, image.width)],
    )
    return [
        {"phrase": p, "box": b, "score": s}
        for p, b, s in zip(r["text_labels"], r["boxes"].tolist(), r["scores"].tolist(), strict=True)
    ]


def documented_objects(raw: list[dict], width: int, height: int, max_objects: int) -> list[dict]:
    """The documented rules, written out: the phrase without BERT's special tokens and the caption's
    dot; an empty phrase is no object; the box clipped to the image (none left: no object); the
    `max_objects` highest scores, highest first."""
    kept = []
    for obj in raw:
        words = obj["phrase"].replace("[CLS]", " ").replace("[SEP]", " ").replace("[PAD]", " ").split()
        phrase = " ".join(words).strip(" .")
        x0, y0, x1, y1 = obj["box"]
        box = [min(max(x0, 0), width), min(max(y0, 0), height), min(max(x1, 0), width), min(max(y1, 0), height)]
        if phrase and box[2] > box[0] and box[3] > box[1]:
            kept.append({"phrase": phrase, "box": box, "score": obj["score"]})
    return sorted(kept, key=lambda o: o["score"], reverse=True)[:max_objects]


def assert_same_objects(stored: list[dict], expected: list[dict], where: str) -> None:
    assert [o["phrase"] for o in stored] == [o["phrase"] for o in expected], where
    if expected:
        np.testing.assert_allclose([o["box"] for o in stored], [o["box"] for o in expected], atol=1e-3, err_msg=where)
        np.testing.assert_allclose([o["score"] for o in stored], [o["score"] for o in expected], atol=1e-6)


def test_ground_equals_grounding_dino_post_processing_on_one_image(cached):
    config, images, captions, grounded, _ = cached
    cfg = config.stage("ground")
    model, processor = grounding_dino(cfg)
    seen = {"more than max_objects": 0, "several objects": 0, "none": 0, "clipped": 0}
    for image_id, image in images.items():
        caption = captions[image_id]["caption"]
        assert caption == caption.lower() and not caption.endswith(".")  # the prompt adds the dot
        raw = detect(model, processor, image, caption + ".", cfg)
        expected = documented_objects(raw, image.width, image.height, cfg.max_objects)
        assert_same_objects(grounded[image_id]["objects"], expected, image_id)
        everything = documented_objects(raw, image.width, image.height, len(raw))
        seen["more than max_objects"] += len(everything) > cfg.max_objects
        seen["several objects"] += len(expected) > 1
        seen["none"] += not expected
        seen["clipped"] += any(b < 0 or b > side for o in raw for b, side in zip(o["box"], image.size * 2, strict=True))
    # what makes ranking, max_objects, the thresholds and the rules observable here
    assert all(seen.values()), seen
    phrases = [o["phrase"] for row in grounded.values() for o in row["objects"]]
    assert len(set(phrases)) > len(phrases) // 2  # objects are told apart by their phrases


def test_grounding_prompt_is_the_lower_cased_caption_ending_in_one_dot(tmp_path):
    """Captions from a list (caption.backend column): the prompts are written out here. The text
    threshold is above some objects' best token, so those objects have an empty phrase and are dropped."""
    _images(tmp_path / "in", seed=5)
    files = sorted((tmp_path / "in").iterdir())[:4]
    prompts = {  # caption -> the prompt Grounding DINO must be given
        "Man  walking on the STREET": "man walking on the street.",
        "two dogs near a car.": "two dogs near a car.",
        "  red bus in the City ": "red bus in the city.",
        "a cat on a table. a cup": "a cat on a table. a cup.",
    }
    listing = tmp_path / "list.csv"
    with listing.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption"])
        writer.writerows(zip((str(p) for p in files), prompts, strict=True))
    store = Store(tmp_path / "data")
    config = resolve("tiny", {"caption": {"backend": "column"}, "ground": {"text_threshold": 0.9}}, {"device": "cpu"})
    run_stage("ingest", config, store, inputs=[listing])
    run_stage("caption", config, store)
    run_stage("ground", config, store)
    cfg = config.stage("ground")
    model, processor = grounding_dino(cfg)
    manifest = pl.from_arrow(store.manifest.read(["image_id", "path"]))
    grounded, captions = _rows(store, config, "ground"), _rows(store, config, "caption")
    found = empty = 0
    for image_id, path in manifest.iter_rows():
        image = Image.open(path).convert("RGB")
        prompt = prompts[captions[image_id]["caption"]]
        raw = detect(model, processor, image, prompt, cfg)
        expected = documented_objects(raw, *image.size, cfg.max_objects)
        assert_same_objects(grounded[image_id]["objects"], expected, prompt)
        found += len(expected)
        empty += sum(not o["phrase"].replace("[SEP]", "").strip(" .") for o in raw)
    assert found > 0 and empty > 0


def test_embed_equals_open_clip_on_the_centre_crop_the_crops_and_the_phrases(cached):
    import open_clip

    config, images, captions, grounded, embedded = cached
    cfg = config.stage("embed")
    name = build_tiny("clip", cfg.seed)  # seeds torch, as the stage's load does
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    centre = T.Compose([T.CenterCrop(224), T.ToTensor(), preprocess.transforms[-1]])  # the paper's plain crop
    paired = 0
    for image_id, image in images.items():
        row = embedded[image_id]
        objects = grounded[image_id]["objects"]
        with torch.inference_mode():
            # the documented choice: smaller than 224 on a side, the image is resized the open_clip way
            whole_input = centre(image) if min(image.size) >= 224 else preprocess(image)
            whole = model.encode_image(whole_input[None])[0].numpy()
            caption = model.encode_text(tokenizer([captions[image_id]["caption"]]))[0].numpy()
            crops = [image.crop(_outward(o["box"], image)) for o in objects]
            crop_vecs = [model.encode_image(preprocess(c)[None])[0].numpy() for c in crops]
            phrase_vecs = [model.encode_text(tokenizer([o["phrase"]]))[0].numpy() for o in objects]
        np.testing.assert_allclose(row["image_embed"], whole, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(row["text_embed"], caption, rtol=1e-4, atol=1e-5)
        assert len(row["object_image_embeds"]) == len(row["object_text_embeds"]) == len(objects)
        for stored, expected in zip(row["object_image_embeds"], crop_vecs, strict=True):
            np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)
        for stored, expected in zip(row["object_text_embeds"], phrase_vecs, strict=True):
            np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)
        # a crop paired with another object's phrase would be seen: their phrases and boxes differ
        paired += len({o["phrase"] for o in objects}) > 1 and len({tuple(o["box"]) for o in objects}) > 1
    assert paired > 0


def _outward(box, image):
    """The documented crop: the box rounded outward to whole pixels, clamped to the image, at least 1x1."""
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])), image.width), min(int(np.ceil(box[3])), image.height)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def test_captions_grounded_together_are_each_their_own_prompt(cached):
    """Several images and captions in one call of the grounder (images of one size: one model call)
    give each image the objects of its own caption alone. transformers' processor merges a list of
    dot-free strings into one prompt ("a. b."), so a caption must reach it ending in its dot."""
    from pipeline.models import GROUNDERS

    config, images, captions, grounded, _ = cached
    cfg = config.stage("ground")
    by_size: dict[tuple[int, int], list[str]] = {}
    for image_id, image in images.items():
        by_size.setdefault(image.size, []).append(image_id)
    pairs = [ids for ids in by_size.values() if len(ids) > 1]
    assert pairs
    grounder = GROUNDERS.get(cfg.backend)(cfg, "cpu")
    for ids in pairs:
        found = grounder.ground([images[i] for i in ids], [captions[i]["caption"] for i in ids])
        for image_id, objects in zip(ids, found, strict=True):
            assert_same_objects(objects, grounded[image_id]["objects"], image_id)
