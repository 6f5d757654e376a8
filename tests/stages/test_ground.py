"""ground rows with the tiny Grounding DINO (transformers port)."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import polars as pl
from PIL import Image

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.config import resolve
from pipeline.engine.store import Store
from pipeline.models import GROUNDERS
from pipeline.models.grounders import TransformersGroundingDino
from tests.conftest import tiny
from tests.stages.test_batch_invariance import assert_same_rows


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


COUNTING = "grounding-dino-counting"
FORWARDS: list[int] = []


class CountingGrounder(TransformersGroundingDino):
    """The real tiny Grounding DINO, counting the images of each model call."""

    def _forward(self, items, captions):
        FORWARDS.append(len(items))
        return super()._forward(items, captions)


def sized_images(root, sizes, seed: int, n: int = 12) -> None:
    """`n` random images cycling through `sizes` (width, height), interleaved."""
    root.mkdir()
    rng = np.random.default_rng(seed)
    for k in range(n):
        w, h = sizes[k % len(sizes)]
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / f"{k:02d}.png")


def counted_ground(store: Store, root, config):
    """Ingest, caption and ground `root` with the counting grounder: (images per model call, the
    ground stage)."""
    run_stage("ingest", config, store, inputs=[root])
    run_stage("caption", config, store)
    FORWARDS.clear()
    run_stage("ground", config, store)
    return list(FORWARDS), make_stage("ground", config, store)


def test_chunks_are_batched_by_resized_shape_so_model_calls_are_full(tmp_path):
    """12 images of 3 sizes, interleaved: sorted by the processor's resized shape, batches of 4 are
    3 full model calls; batched in ingest order they would be 12 calls of 1. Rows do not change."""
    root = tmp_path / "sizes"
    sized_images(root, [(64, 48), (48, 64), (90, 30)], seed=3)
    GROUNDERS.register(COUNTING)(CountingGrounder)
    try:
        by_size = {}
        for batch_size in (4, 1):
            config = resolve(
                "tiny", {"ground": {"backend": COUNTING}}, {"device": "cpu", "batch_size": batch_size, "chunk_size": 12}
            )
            calls, stage = counted_ground(Store(tmp_path / f"b{batch_size}"), root, config)
            by_size[batch_size] = (calls, pl.from_arrow(stage.output.read()))
    finally:
        GROUNDERS.unregister(COUNTING)
    assert by_size[4][0] == [4, 4, 4]
    assert by_size[1][0] == [1] * 12
    assert_same_rows(by_size[1][1].sort("image_id"), by_size[4][1].sort("image_id"), "ground")


SEEN_TF32: list[tuple[bool, bool]] = []
RECORDING = "grounding-dino-recording-tf32"


class RecordingGrounder(TransformersGroundingDino):
    """The real tiny grounder, recording the TF32 flags as its model's forward starts."""

    @cached_property
    def _loaded(self):
        import torch

        model, processor = TransformersGroundingDino._loaded.func(self)
        flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
        model.register_forward_pre_hook(lambda *_: SEEN_TF32.append(tuple(f.allow_tf32 for f in flags)))
        return model, processor


def test_tf32_is_what_the_config_says_during_model_calls_and_enters_the_fingerprint_only_when_on(
    tmp_path, image_root
):
    import torch

    outside = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    GROUNDERS.register(RECORDING)(RecordingGrounder)
    try:
        seen, fps = {}, {}
        for tf32 in (None, False, True):
            ground = {"backend": RECORDING, **({} if tf32 is None else {"tf32": tf32})}
            config = resolve("tiny", {"ground": ground}, {"device": "cpu", "chunk_size": 64})
            store = Store(tmp_path / str(tf32))
            run_stage("ingest", config, store, inputs=[image_root / "toygan" / "0_real"])
            run_stage("caption", config, store)
            SEEN_TF32.clear()
            run_stage("ground", config, store)
            seen[tf32], fps[tf32] = set(SEEN_TF32), make_stage("ground", config, store).fingerprint
    finally:
        GROUNDERS.unregister(RECORDING)
    assert seen[None] == seen[False] == {(False, False)} and seen[True] == {(True, True)}
    assert fps[None] == fps[False] != fps[True]  # a knob added later moves no cached fingerprint
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == outside  # put back


def test_bucket_padding_follows_the_rule_worked_by_hand_and_keeps_the_processors_pixels():
    """At the paper's 800/1333 and pad_multiple 128: each resized side goes up to the next multiple of
    128 or to 800/1333 if nearer; the processor's own pixels sit top-left, zeros and mask 0 around."""
    import torch
    from transformers import GroundingDinoImageProcessor

    from pipeline.models.grounders import GroundingPixels

    processor = GroundingDinoImageProcessor(size={"shortest_edge": 800, "longest_edge": 1333})
    rng = np.random.default_rng(0)
    # (width, height) -> padded (height, width), by hand: 500x375 resizes to 800 x 1066.7 (width
    # rounds to 1066 or 1067) -> 1152; 900x800 -> 800 x 900 -> 1024; 1000x200 is capped at 1333 wide,
    # 266.6 high -> 384; 800x800 stays; 375x500 is 500x375 turned.
    cases = {(500, 375): (800, 1152), (900, 800): (800, 1024), (1000, 200): (384, 1333), (800, 800): (800, 800),
             (375, 500): (1152, 800)}
    for (w, h), expected in cases.items():
        image = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
        own = processor(images=[image], return_tensors="pt")  # the library's documented call
        pixels, mask = own["pixel_values"][0], own["pixel_mask"][0]
        prepared = GroundingPixels(processor, 128)(image)
        assert tuple(prepared.pixel_values.shape) == (3, *expected), (w, h)
        rh, rw = pixels.shape[1:]
        assert torch.equal(prepared.pixel_values[:, :rh, :rw], pixels)
        assert not prepared.pixel_values[:, rh:].any() and not prepared.pixel_values[:, :, rw:].any()
        assert torch.equal(prepared.pixel_mask[:rh, :rw], mask) and int(prepared.pixel_mask.sum()) == rh * rw
        assert prepared.padded == (h, w)  # the boxes' frame: the image, not the bucket
        unpadded = GroundingPixels(processor, 0)(image)
        assert torch.equal(unpadded.pixel_values, pixels) and torch.equal(unpadded.pixel_mask, mask)


def test_images_of_nearby_sizes_share_a_model_call_and_keep_their_own_objects(tmp_path):
    """12 images of 3 sizes that resize to 3 shapes (224 x 298, 313 and 280) in one bucket (224 x 320
    at pad_multiple 64): one call of 12 padded, 3 calls of 4 unpadded. Padded, an image's objects are
    the same alone (batch 1) as with its 11 mates: the padding depends on its own size only."""
    root = tmp_path / "sizes"
    sized_images(root, [(64, 48), (70, 50), (60, 48)], seed=4)
    GROUNDERS.register(COUNTING)(CountingGrounder)
    try:
        runs, fingerprints = {}, set()
        for pad, batch_size in ((64, 12), (64, 1), (0, 12)):
            ground = {"backend": COUNTING, "shortest_edge": 224, "longest_edge": 320, "pad_multiple": pad}
            config = resolve("tiny", {"ground": ground}, {"device": "cpu", "batch_size": batch_size, "chunk_size": 12})
            calls, stage = counted_ground(Store(tmp_path / f"p{pad}-b{batch_size}"), root, config)
            fingerprints.add(stage.fingerprint if batch_size == 12 else None)
            runs[pad, batch_size] = (calls, pl.from_arrow(stage.output.read()).sort("image_id"))
    finally:
        GROUNDERS.unregister(COUNTING)
    assert runs[64, 12][0] == [12] and runs[64, 1][0] == [1] * 12
    assert sorted(runs[0, 12][0]) == [4, 4, 4]
    assert_same_rows(runs[64, 1][1], runs[64, 12][1], "ground")
    assert len(fingerprints - {None}) == 2  # the padding changes results: it is in the fingerprint


def test_a_prompt_past_the_text_limit_is_cut_after_a_word():
    from pipeline.models.grounders import fit_prompt

    def words(text: str) -> int:  # a tokenizer of whole words, plus its two special tokens
        return len(text.split()) + 2

    assert fit_prompt("a b c.", words, 5) == ("a b c.", False)
    assert fit_prompt("a b c d e f.", words, 5) == ("a b c.", True)  # 3 words + [CLS] + [SEP]
    assert fit_prompt("a b c d e f.", words, 2) == (".", True)


def test_a_caption_longer_than_the_grounder_s_text_limit_is_grounded_and_counted_not_a_failed_batch(caplog):
    """Before: `size of tensor a (603) must match ... (256)` for the whole batch."""
    import logging

    from pipeline.models.grounders import TransformersGroundingDino

    cfg = tiny().stage("ground")
    grounder = TransformersGroundingDino(cfg, "cpu")
    rng = np.random.default_rng(5)
    image = Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8))
    long_caption = "a red ball and a blue car near a small dog " * 40
    with caplog.at_level(logging.WARNING, logger="pipeline.models.grounders"):
        together = grounder.ground([image, image], [long_caption, "a red ball"])
    assert "1 of 2 caption(s) longer than the grounder's 256 text tokens" in caplog.text
    alone = grounder.ground([image], ["a red ball"])[0]  # its batch mate is unaffected (to float rounding:
    assert [o["phrase"] for o in together[1]] == [o["phrase"] for o in alone]  # the text is padded longer)
    assert np.allclose([o["box"] for o in together[1]], [o["box"] for o in alone], atol=1e-3)
    assert together[0]  # the long one has its objects
    tokenizer = grounder._loaded[1].tokenizer
    kept = len(tokenizer(long_caption.split(" and")[0])["input_ids"])
    assert kept < 256 < len(tokenizer(long_caption)["input_ids"])


def test_an_extremely_long_image_is_shrunk_before_padding_and_its_boxes_stay_in_its_own_pixels():
    """A 3 x 30,000 image: padded to 8:1 first it would be a 3,750 x 30,000 canvas (112 M pixels); shrunk
    to the 1,333 px the resize caps it at, the canvas is 167 x 1,333 (by hand: ceil(1333 / 8) = 167)."""
    from transformers import GroundingDinoImageProcessor

    from pipeline.models.grounders import GroundingPixels, TransformersGroundingDino, pad_to_aspect

    image = Image.new("RGB", (3, 30_000), (90, 120, 200))
    canvas, frame = pad_to_aspect(image, longest_edge=1333)
    assert canvas.size == (167, 1333) and frame == (3750, 30_000)
    processor = GroundingDinoImageProcessor(size={"shortest_edge": 800, "longest_edge": 1333})
    prepared = GroundingPixels(processor, 128)(image)
    assert prepared.padded == (30_000, 3750) and prepared.pixel_values.numel() <= 3 * 1333 * 256
    cfg = tiny().stage("ground")
    bar = Image.new("RGB", (2, 2000), (200, 30, 30))
    [objects] = TransformersGroundingDino(cfg, "cpu").ground([bar], ["a red bar"])
    for o in objects:
        x0, y0, x1, y1 = o["box"]
        assert 0 <= x0 < x1 <= 2 and 0 <= y0 < y1 <= 2000  # clipped to the image, in its own pixels
