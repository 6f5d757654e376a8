"""Grounders: (image, caption) -> objects named by the caption, each (phrase, box, score).

Rules shared by every backend: the prompt is the caption lower-cased and ending with "." (as
Grounding DINO expects); boxes are clipped to the image and given in pixels (x0, y0, x1, y1) of the
EXIF-oriented image; objects whose phrase is empty (no caption token above text_threshold) are
dropped; the `max_objects` highest-scoring objects are kept, in descending score.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.models import GROUNDERS, inference, to_device
from pipeline.models.base import TransformersBackend
from pipeline.models.settings import GroundSettings

log = logging.getLogger(__name__)

Obj = dict[str, Any]  # {"phrase": str, "box": [x0, y0, x1, y1], "score": float}


@dataclass(frozen=True)
class Prepared:
    """An image as the grounder's processor made it."""

    pixel_values: Any  # (3, H, W)
    pixel_mask: Any  # (H, W)
    width: int  # the image's own size: boxes are clipped to it
    height: int
    padded: tuple[int, int]  # (height, width) after pad_to_aspect, in the image's pixels: the boxes' frame


def prompt_of(caption: str) -> str:
    text = " ".join(caption.strip().lower().split())
    return text if text.endswith(".") else text + "."


def fit_prompt(prompt: str, n_tokens: Callable[[str], int], limit: int) -> tuple[str, bool]:
    """The prompt cut after a word so that it is at most `limit` tokens (ending with "." again), and
    whether it was cut: a caption longer than the grounder's text limit is grounded on its start
    (and counted) instead of failing the batch it is in."""
    if n_tokens(prompt) <= limit:
        return prompt, False
    words = prompt.rstrip(".").split()
    lo, hi = 0, len(words)  # the most words that fit: words[:lo] fits, words[:hi + 1] does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if n_tokens(" ".join(words[:mid]) + ".") <= limit:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo]) + ".", True


def warn_truncated(cut: int, total: int, limit: int) -> None:
    if cut:
        log.warning(
            "ground: %d of %d caption(s) longer than the grounder's %d text tokens: grounded on their start",
            cut, total, limit,
        )


def clean_phrase(phrase: str) -> str:
    for special in ("[CLS]", "[SEP]", "[PAD]"):
        phrase = phrase.replace(special, " ")
    return " ".join(phrase.split()).strip(" .")


MAX_ASPECT = 8.0


def pad_to_aspect(image, max_aspect: float = MAX_ASPECT, longest_edge: int | None = None):
    """Pad an extremely long image on its right or bottom (black) so that long/short <= max_aspect.

    Detectors resize the short side up and cap the long side; past a ratio of a few hundred the
    short side rounds to zero pixels. Padding right/bottom leaves box coordinates unchanged; boxes
    are clipped back to the real image afterwards. Such an image whose long side is past
    `longest_edge` is first shrunk to it (the model's resize would shrink it anyway), so padding never
    allocates more than longest_edge² / max_aspect pixels (a 1 x 100,000 image would otherwise become
    a 12,500 x 100,000 canvas).

    Returns (the padded image, its (width, height) in the image's own pixels: the boxes' frame).
    """
    from PIL import Image

    size, canvas, frame = aspect_sizes(*image.size, longest_edge, max_aspect)
    if canvas == image.size:
        return image, frame
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    padded = Image.new("RGB", canvas)
    padded.paste(image, (0, 0))
    return padded, frame


def aspect_sizes(
    width: int, height: int, longest_edge: int | None = None, max_aspect: float = MAX_ASPECT
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """The sizes (width, height) `pad_to_aspect` makes, as numbers: the image's (shrunk when past
    `longest_edge`), the padded canvas's, and the frame (the padded size in the image's own pixels)."""

    def padded(w: int, h: int) -> tuple[int, int]:
        return (w, int(np.ceil(w / max_aspect))) if w > h else (int(np.ceil(h / max_aspect)), h)

    if max(width, height) <= max_aspect * min(width, height):
        return (width, height), (width, height), (width, height)
    frame = padded(width, height)
    if longest_edge is not None and max(width, height) > longest_edge:
        width, height = shrunk(width, height, longest_edge)
    return (width, height), padded(width, height), frame


def shrunk(width: int, height: int, longest_edge: int) -> tuple[int, int]:
    """(width, height) scaled so that the long side is `longest_edge` (each side at least 1)."""
    scale = longest_edge / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def finish(objects: list[Obj], width: int, height: int, max_objects: int) -> list[Obj]:
    """Apply the shared rules: drop empty phrases, clip boxes to the image (dropping boxes that lie
    wholly outside it), keep the best `max_objects`."""
    kept = []
    for obj in objects:
        phrase = clean_phrase(obj["phrase"])
        if not phrase:
            continue
        x0, y0, x1, y1 = obj["box"]
        box = [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        kept.append({"phrase": phrase, "box": [float(v) for v in box], "score": float(obj["score"])})
    kept.sort(key=lambda o: -o["score"])
    return kept[:max_objects]


def padded_side(side: int, multiple: int, edges: tuple[int, ...]) -> int:
    """A resized side padded up to its bucket: the next multiple of `multiple`, or the next of the
    resize's own edges (shortest and longest: most images have one of them as a side) if that is
    nearer. 0: the side as it is."""
    if multiple <= 0 or side in edges:
        return side
    return min(-(-side // multiple) * multiple, *(edge for edge in edges if edge >= side))


def model_shape(width: int, height: int, shortest_edge: int, longest_edge: int, pad_multiple: int) -> tuple[int, int]:
    """(height, width) of an image's pixels in the model call: aspect padding, the processor's resize
    (transformers' own rule), then each side padded up to its bucket. Images of one model shape run
    together; the stage sorts its rows by it so that batches are full calls."""
    from transformers.image_transforms import get_size_with_aspect_ratio

    _, (width, height), _ = aspect_sizes(width, height, longest_edge)  # what pad_to_aspect makes of it
    h, w = get_size_with_aspect_ratio((height, width), shortest_edge, longest_edge)
    edges = (shortest_edge, longest_edge)
    return padded_side(h, pad_multiple, edges), padded_side(w, pad_multiple, edges)


class GroundingPixels:
    """An image as Grounding DINO takes it: padded to MAX_ASPECT, resized, normalised, then padded
    (zeros, masked out) on its bottom and right up to its bucket (`model_shape`) (picklable).

    The bucket depends on the image's own size only, so its objects never depend on its batch mates;
    images of nearby sizes share one model call. The mask tells the model what is padding, as in
    transformers' own batching (which pads a batch to its largest image) and in training: boxes come
    out relative to the unpadded image."""

    def __init__(self, image_processor: Any, pad_multiple: int = 0) -> None:
        self.image_processor = image_processor
        self.pad_multiple = pad_multiple

    def __call__(self, image) -> Prepared:
        size = self.image_processor.size
        edges = (size["shortest_edge"], size["longest_edge"])
        padded, (frame_w, frame_h) = pad_to_aspect(image, longest_edge=edges[1])
        encoded = self.image_processor(images=[padded], return_tensors="pt")
        pixels, mask = encoded["pixel_values"][0], encoded["pixel_mask"][0]
        h, w = (padded_side(side, self.pad_multiple, edges) for side in pixels.shape[1:])
        if (h, w) != tuple(pixels.shape[1:]):
            canvas, canvas_mask = pixels.new_zeros((3, h, w)), mask.new_zeros((h, w))
            canvas[:, : pixels.shape[1], : pixels.shape[2]] = pixels
            canvas_mask[: mask.shape[0], : mask.shape[1]] = mask
            pixels, mask = canvas, canvas_mask
        return Prepared(pixels, mask, image.width, image.height, (frame_h, frame_w))


@GROUNDERS.register("transformers")
class TransformersGroundingDino(TransformersBackend):
    """Grounding DINO through transformers (`GroundingDinoForObjectDetection`), batched; built from
    the ground stage config (`model`: hub id, local directory or `tiny/grounding-dino`) and a device."""

    cfg: GroundSettings
    name = "grounding-dino"
    model_class = "GroundingDinoForObjectDetection"
    stage = "ground"
    # Low precision through autocast: the weights stay float32, normalisation and softmax run in
    # float32 (autocast's own lists), the box heads wholly in float32 (`_adapt`), post-processing on
    # float32 outputs. Casting the whole model would round boxes and reference points too.
    precision = "autocast"

    def _adapt(self, model: Any) -> None:
        """Box regression (every MLP prediction head, the decoder's refinement ones included) outside
        autocast, on float32 inputs."""
        import torch

        for module in model.modules():
            if type(module).__name__ == "GroundingDinoMLPPredictionHead":

                def fp32_forward(x, _forward=module.forward):
                    with torch.autocast(x.device.type, enabled=False):
                        return _forward(x.float())

                module.forward = fp32_forward

    def _configure(self, processor: Any) -> None:
        processor.image_processor.size = {
            "shortest_edge": self.cfg.shortest_edge,
            "longest_edge": self.cfg.longest_edge,
        }

    def preprocessor(self) -> GroundingPixels:
        """What makes an image the model's input (CPU work the stage runs ahead of the model; it
        pickles without the model, for feed processes)."""
        return GroundingPixels(self._loaded[1].image_processor, self.cfg.pad_multiple)

    def ground(self, images: list, captions: list[str]) -> list[list[Obj]]:
        """Objects per image (an RGB image, or what `preprocess` made of one). Images are run together
        only with images that the processor resized to the same shape: a batch of mixed sizes would be
        padded to its largest, and the backbone would see that padding, so an image's objects would
        depend on its batch mates (and on batch size, chunking, resume point and executor). Bucketing
        keeps every image's result its own."""
        items = [im if isinstance(im, Prepared) else self.preprocessor()(im) for im in images]
        buckets: dict[tuple[int, ...], list[int]] = {}
        for k, item in enumerate(items):
            buckets.setdefault(tuple(item.pixel_values.shape), []).append(k)
        out: list[list[Obj]] = [[] for _ in items]
        for members in buckets.values():
            found = self._forward([items[k] for k in members], [captions[k] for k in members])
            for k, objects in zip(members, found, strict=True):
                out[k] = finish(objects, items[k].width, items[k].height, self.cfg.max_objects)
        return out

    def _forward(self, items: list[Prepared], captions: list[str]) -> list[list[Obj]]:
        """One model call on images of one resized shape: raw objects in pixels of each padded image."""
        import torch

        model, processor = self._loaded
        limit = model.config.max_text_len
        fitted = [fit_prompt(prompt_of(c), lambda t: len(processor.tokenizer(t)["input_ids"]), limit) for c in captions]
        warn_truncated(sum(cut for _, cut in fitted), len(fitted), limit)
        inputs = processor(text=[p for p, _ in fitted], padding=True, return_tensors="pt")
        inputs["pixel_values"] = torch.stack([item.pixel_values for item in items])
        inputs["pixel_mask"] = torch.stack([item.pixel_mask for item in items])
        inputs = {key: to_device(value, self.device) for key, value in inputs.items()}
        with inference(self.cfg), self.low_precision():
            outputs = model(**inputs)
        outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()  # scores in fp32
        results = processor.post_process_grounded_object_detection(
            outputs,
            input_ids=inputs["input_ids"],
            threshold=self.cfg.box_threshold,
            text_threshold=self.cfg.text_threshold,
            target_sizes=[item.padded for item in items],
        )
        return [
            [
                {"phrase": p, "box": b, "score": sc}
                for p, b, sc in zip(
                    r["text_labels"], r["boxes"].float().tolist(), r["scores"].float().tolist(), strict=True
                )
            ]
            for r in results
        ]
