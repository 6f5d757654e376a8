"""The paper profile's loading code, run offline against local directories of saved tiny weights.

A hub id and a local directory take the same `from_pretrained` / open_clip path; here the
directory holds the tiny models, so the real loading code runs without the network.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

import stages  # noqa: F401 (registers the stages, whose config classes `resolve` builds)
from pipeline.engine.config import resolve
from pipeline.models import CAPTIONERS, GROUNDERS
from pipeline.models.captioners import Blip2Captioner
from pipeline.models.clip import ClipEncoder
from pipeline.models.grounders import TransformersGroundingDino
from pipeline.models.tiny import build_tiny, tiny_blip2, tiny_clip, tiny_grounding_dino


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((90 + 10 * i, 120, 3)) * 255).astype(np.uint8)) for i in range(3)]


def test_blip2_from_a_local_directory_matches_the_tiny_build(tmp_path, images):
    tiny_cfg = resolve("tiny").stage("caption")
    model, processor = tiny_blip2(tiny_cfg.seed)
    model.save_pretrained(tmp_path / "blip2", safe_serialization=True)
    processor.save_pretrained(tmp_path / "blip2")
    assert (tmp_path / "blip2" / "model.safetensors").exists()
    local = dataclasses.replace(tiny_cfg, model=str(tmp_path / "blip2"))
    from_dir = Blip2Captioner(local, "cpu").caption(images)
    assert from_dir == Blip2Captioner(tiny_cfg, "cpu").caption(images)
    assert all(isinstance(c, str) and c for c in from_dir)


@pytest.mark.parametrize("backend", ["blip", "llava"])
def test_other_captioners_from_a_local_directory_match_their_tiny_builds(tmp_path, images, backend):
    from pipeline.models.captioners import CAPTIONERS as registry

    tiny_cfg = resolve("tiny", {"caption": {"backend": backend, "model": f"tiny/{backend}"}}).stage("caption")
    captioner = registry.get(backend)(tiny_cfg, "cpu")
    model, processor = build_tiny(backend, tiny_cfg.seed)
    model.save_pretrained(tmp_path / backend, safe_serialization=True)
    processor.save_pretrained(tmp_path / backend)
    local = dataclasses.replace(tiny_cfg, model=str(tmp_path / backend))
    from_dir = registry.get(backend)(local, "cpu").caption(images)
    assert from_dir == captioner.caption(images)
    assert all(isinstance(c, str) and c and "USER" not in c for c in from_dir)  # the prompt is not echoed
    assert resolve(backend).stage("caption").backend == backend


def test_grounding_dino_from_a_local_directory_matches_the_tiny_build(tmp_path, images):
    tiny_cfg = resolve("tiny").stage("ground")
    model, processor = tiny_grounding_dino(tiny_cfg.seed)
    model.save_pretrained(tmp_path / "gd", safe_serialization=True)
    processor.save_pretrained(tmp_path / "gd")
    local = dataclasses.replace(tiny_cfg, model=str(tmp_path / "gd"))
    captions = ["a cat on a table", "a red car", "two people"]
    assert TransformersGroundingDino(local, "cpu").ground(images, captions) == TransformersGroundingDino(
        tiny_cfg, "cpu"
    ).ground(images, captions)


def test_clip_weights_from_a_safetensors_file(tmp_path, images):
    from safetensors.torch import save_file

    tiny_cfg = resolve("tiny").stage("embed")
    encoder = ClipEncoder(tiny_cfg, "cpu")
    save_file(encoder._loaded[0].state_dict(), str(tmp_path / "clip.safetensors"))
    params = {"embed": {"model": tiny_clip(0), "pretrained": str(tmp_path / "clip.safetensors"), "dtype": "float32"}}
    named = resolve("paper", params).stage("embed")
    loaded = ClipEncoder(named, "cpu")
    import torch

    batch = torch.stack([encoder.image_transform(im) for im in images])
    np.testing.assert_allclose(loaded.encode_images(batch).numpy(), encoder.encode_images(batch).numpy(), atol=1e-6)
    np.testing.assert_allclose(
        loaded.encode_texts(["a cat"]).numpy(), encoder.encode_texts(["a cat"]).numpy(), atol=1e-6
    )


def test_center_crop_is_the_papers_224_crop(images):
    encoder = ClipEncoder(resolve("tiny").stage("embed"), "cpu")
    big = Image.fromarray(np.arange(300 * 400 * 3, dtype=np.uint8).reshape(300, 400, 3) % 251)
    out = encoder.image_transform(big)
    assert tuple(out.shape) == (3, 224, 224)
    # a plain centre crop: no resize, so the crop's top-left pixel is the image's (88, 38)
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    pixel = out[:, 0, 0].numpy() * std + mean
    np.testing.assert_allclose(pixel * 255, np.asarray(big)[38, 88], atol=1e-3)
    assert tuple(encoder.image_transform(images[0]).shape) == (3, 224, 224)  # small images are upscaled first


def test_every_registered_backend_is_listed():
    from pipeline.models import ENCODERS
    from pipeline.models.tiny import TINY

    assert CAPTIONERS.names() == ["blip", "blip2", "column", "llava"]
    assert ENCODERS.names() == ["open_clip"]
    # every model backend has its tiny build (the column captioner has no model)
    assert set(TINY.names()) == {"blip", "blip2", "llava", "grounding-dino", "clip"}
    assert GROUNDERS.names() == ["groundingdino-py", "transformers"]
    with pytest.raises(KeyError, match="unknown grounder 'glip'"):
        GROUNDERS.get("glip")
    paper = resolve("paper")
    assert paper.stage("caption").model == "Salesforce/blip2-opt-2.7b"
    assert paper.stage("ground").backend == "transformers"
