"""Model backends whose model is a no-op, for `make bench`'s per-image CPU cost of each model stage.

Each keeps the real preprocessing at the paper's sizes (BLIP-2's 224 px processor, Grounding DINO's
800/1333 resize with its bucketing, open_clip's 224 px transforms and tokenizer) and skips only the
forward pass, so a stage run with it costs what the stage itself costs a CPU per image: decoding,
the id check, preprocessing, batching and writing. Nothing here is used outside the benchmark.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any

import stages  # noqa: F401  (registers the built-in stages: their default configs are the paper's)
from pipeline.engine.stage import STAGES
from pipeline.models.captioners import Pixels
from pipeline.models.clip import ClipEncoder, embed_dim
from pipeline.models.grounders import TransformersGroundingDino, prompt_of

CAPTION = "a red ball, a tree, a small dog and a blue car"
# Four objects per image as fractions of its width and height (what the embed stage then crops).
BOXES = ((0.05, 0.10, 0.45, 0.55), (0.50, 0.05, 0.95, 0.40), (0.10, 0.55, 0.40, 0.95), (0.55, 0.50, 0.90, 0.90))
PHRASES = ("a red ball", "a tree", "a small dog", "a blue car")


def noop_objects(width: int, height: int) -> list[dict[str, Any]]:
    """The four fixed objects (phrase, box in pixels, score) of an image of `width` x `height`."""
    return [
        {"phrase": p, "box": [b[0] * width, b[1] * height, b[2] * width, b[3] * height], "score": 0.5}
        for p, b in zip(PHRASES, BOXES, strict=True)
    ]


class NoopCaptioner:
    """BLIP-2's image processor (224 px, CLIP mean and std, ahead of the model like the real
    captioner's), then a fixed caption instead of `generate`."""

    reads = "image"

    def __init__(self, stage: Any) -> None:
        del stage  # same signature as the others; the caption does not depend on the stage

    @cached_property
    def processor(self) -> Any:
        from transformers import BlipImageProcessor
        from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        return BlipImageProcessor(
            size={"height": 224, "width": 224}, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD
        )

    def load(self) -> None:
        _ = self.processor

    def preprocessor(self) -> Pixels:
        return Pixels(self.processor)

    def caption(self, images: list) -> list[str | None]:
        raw = [im for im in images if not hasattr(im, "shape")]  # what preprocessing could not do ahead
        if raw:
            self.processor(images=raw, return_tensors="pt")
        return [CAPTION] * len(images)


class NoopGrounder(TransformersGroundingDino):
    """The real grounder's padding, preprocessing (Grounding DINO's image processor at 800/1333, in
    the stage's loader thread) and bucketing, and its tokenizer; four fixed boxes per image instead
    of the model and its post-processing."""

    def __init__(self, stage: Any) -> None:
        # the paper's sizes whatever the stage's profile (the cost a real run pays), the stage's padding
        paper = STAGES.get("ground").config_class()
        super().__init__(dataclasses.replace(paper, pad_multiple=stage.cfg.pad_multiple), "cpu")
        self.calls: list[int] = []  # images per model call (make bench's batch fill)

    @cached_property
    def _loaded(self) -> tuple[Any, Any]:
        from transformers import BertTokenizer, GroundingDinoImageProcessor, GroundingDinoProcessor

        from pipeline.models.tiny import bert_vocab

        size = {"shortest_edge": self.cfg.shortest_edge, "longest_edge": self.cfg.longest_edge}
        tokenizer = BertTokenizer(vocab=bert_vocab(), do_lower_case=True)
        return None, GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size=size), tokenizer=tokenizer)

    def load(self) -> None:
        _ = self._loaded

    def _forward(self, items: list, captions: list[str]) -> list[list[dict[str, Any]]]:
        import torch

        self.calls.append(len(items))
        self._loaded[1](text=[prompt_of(c) for c in captions], padding=True, return_tensors="pt")
        torch.stack([item.pixel_values for item in items])
        return [noop_objects(w, h) for h, w in (item.padded for item in items)]


class NoopEncoder(ClipEncoder):
    """open_clip's ViT-L/14 transforms (224 px) and tokenizer; zero vectors of the stage's width instead
    of the towers."""

    def __init__(self, stage: Any) -> None:
        super().__init__(STAGES.get("embed").config_class(), "cpu")
        self.dim = embed_dim(stage.cfg)

    @cached_property
    def _loaded(self) -> tuple[Any, Any, Any]:
        import open_clip

        preprocess = open_clip.image_transform(
            224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD
        )
        return None, preprocess, open_clip.get_tokenizer("ViT-L-14")

    @property
    def input_size(self) -> int:
        return 224

    def encode_images(self, batch) -> Any:
        import torch

        return torch.zeros(len(batch), self.dim)

    def encode_texts(self, texts: list[str]) -> Any:
        import torch

        self._loaded[2](texts)
        return torch.zeros(len(texts), self.dim)


# stage -> (the stage's attribute holding its backend, the no-op backend)
NOOP_BACKENDS: dict[str, tuple[str, type]] = {
    "caption": ("captioner", NoopCaptioner),
    "ground": ("grounder", NoopGrounder),
    "embed": ("encoder", NoopEncoder),
}
