"""embed: (I, T) = CLIP(x, p) (Eq. 2) for the whole image and caption, and for each object crop
and its phrase. Raw, unnormalised embeddings are stored; normalisation belongs to Eq. 3-7."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.engine import schemas
from pipeline.engine.config import ConfigError, check_dtype, knob
from pipeline.engine.errors import error_fields
from pipeline.engine.feature import FeatureStage
from pipeline.engine.imageio import ImageDecodeError
from pipeline.engine.inputs import ImageRows
from pipeline.engine.stage import STAGES
from pipeline.models import ENCODERS, Encoder, shared_backend
from pipeline.models.clip import embed_dim

log = logging.getLogger(__name__)


def crop_box(image, box: list[float]):
    """The object crop: the box rounded outward to whole pixels, clamped to the image, at least 1x1."""
    w, h = image.size
    x0 = min(max(int(np.floor(box[0])), 0), w - 1)
    y0 = min(max(int(np.floor(box[1])), 0), h - 1)
    x1 = max(min(int(np.ceil(box[2])), w), x0 + 1)
    y1 = max(min(int(np.ceil(box[3])), h), y0 + 1)
    return image.crop((x0, y0, x1, y1))


@dataclass(frozen=True)
class EmbedConfig:
    """CLIP encoder (open_clip). `pretrained`: an open_clip tag, a .safetensors file, or "none" (random)."""

    model: str = "ViT-L-14-quickgelu"  # OpenAI weights use QuickGELU
    pretrained: str = "openai"
    # float32: bf16 moves ViT-L/14 embeddings and D by about 1.2% (README, "Precision"); CLIP is the
    # cheap model of the three, so the stored raw embeddings keep full precision by default.
    dtype: str = "float32"
    image_crop: str = "center"  # center: crop the image's centre (paper); resize_center: open_clip's default
    seed: int = 0
    # TF32 tensor cores for this model's float32 matmuls and convolutions on a GPU (faster, rounds
    # differently: in the fingerprint when on). Off: a GPU computes float32 as a CPU does.
    tf32: bool = knob(False)

    def __post_init__(self) -> None:
        check_dtype(self.dtype, "embed")
        if self.image_crop not in ("center", "resize_center"):
            raise ConfigError("embed.image_crop must be 'center' or 'resize_center'")


def embed_schema(dim: int) -> pa.Schema:
    """Raw CLIP embeddings of the image and caption, and one per object crop and phrase (same order)."""
    return schemas.rows_schema(
        pa.field("image_embed", schemas.vector(dim)),
        pa.field("text_embed", schemas.vector(dim)),
        pa.field("object_image_embeds", pa.list_(schemas.vector(dim))),
        pa.field("object_text_embeds", pa.list_(schemas.vector(dim))),
        # How many of the row's texts (caption and phrases) were longer than the text encoder's context
        # (77 tokens) and embedded cut to it; null in rows written before it was counted.
        pa.field("truncated_texts", pa.int16()),
    )


@dataclass(frozen=True)
class CropsAndImage:
    """An image's CLIP inputs: the whole image and each object's crop (picklable: transforms only)."""

    pixels: Any  # pipeline.models.clip.ClipPixels

    def __call__(self, image, row: dict[str, Any]) -> tuple[Any, list[Any]]:
        crops = [self.pixels.crop(crop_box(image, obj["box"])) for obj in row["objects"] or []]
        return self.pixels.whole(image), crops


@STAGES.register
class EmbedStage(FeatureStage):
    """Embed the image (centre-cropped), caption, each object crop and each phrase with the profile's
    CLIP (paper: ViT-L/14, OpenAI weights); raw embeddings are stored."""

    name = "embed"
    # 2: the whole-image crop is torchvision's CenterCrop (rounding like the reference) and object crops
    # use open_clip's own preprocessing unless extreme: pixels differ from version 1 on some images.
    version = 2
    inputs = ("ground", "caption", "manifest")
    config_class = EmbedConfig
    reads_images = True
    default_batch_size = 512  # crops (and texts) per CLIP call; peers use 256-1024
    driver_columns = ("objects",)
    lookup_columns = {"caption": ("caption",), "manifest": ("path",)}

    @cached_property
    def encoder(self) -> Encoder:
        return shared_backend("embed", ENCODERS.get("open_clip"), self.cfg, self.runtime.device)

    @cached_property
    def schema(self) -> pa.Schema:
        return embed_schema(embed_dim(self.cfg))

    def setup(self) -> None:
        self.encoder.load()

    def preparer(self) -> ImageRows:
        """Per row: the whole-image tensor and one tensor per object crop, or the decode error."""
        return self.image_rows(CropsAndImage(self.encoder.preprocessor()), columns=("objects",), fallback=False)

    def process(self, batch: pa.Table, prepared: list[Any] | None = None) -> list[dict[str, Any]]:
        import torch

        prepared = prepared if prepared is not None else self.prepare(batch)
        rows = batch.select(["image_id", "caption", "objects"]).to_pylist()
        tensors, texts, owners = [], [], []
        out: list[dict[str, Any]] = []
        for k, (row, item) in enumerate(zip(rows, prepared, strict=True)):
            if isinstance(item, ImageDecodeError):
                out.append({"image_id": row["image_id"], **error_fields(item)})
                continue
            out.append(
                {"image_id": row["image_id"], "object_image_embeds": [], "object_text_embeds": [], "truncated_texts": 0}
            )
            whole, crops = item
            tensors.append(whole)
            texts.append(row["caption"])
            owners.append((k, -1))
            for j, (crop, obj) in enumerate(zip(crops, row["objects"] or [], strict=True)):
                tensors.append(crop)
                texts.append(obj["phrase"])
                owners.append((k, j))
        if tensors:
            self._count_truncated(texts, owners, out)
            image_emb = self._batched(lambda s: self.encoder.encode_images(torch.stack(tensors[s])), len(tensors))
            text_emb = self._batched(lambda s: self.encoder.encode_texts(texts[s]), len(texts))
            for (k, j), ie, te in zip(owners, image_emb, text_emb, strict=True):
                if j < 0:
                    out[k].update(image_embed=ie, text_embed=te)
                else:
                    out[k]["object_image_embeds"].append(ie)
                    out[k]["object_text_embeds"].append(te)
        return out

    def _count_truncated(self, texts: list[str], owners: list[tuple[int, int]], out: list[dict[str, Any]]) -> None:
        """Count, per row, the texts the text encoder will read cut to its context, and say so: never a
        silent truncation (the stage's summary and `item status` add the rows' counts up)."""
        truncated = self.encoder.truncated(texts)
        for (k, _), cut in zip(owners, truncated, strict=True):
            out[k]["truncated_texts"] += int(cut)
        if any(truncated):
            log.warning(
                "embed: %d caption(s) or phrase(s) longer than the text encoder's %d tokens, embedded cut to it",
                sum(truncated),
                self.encoder.context_length,
            )

    def summary(self) -> dict[str, Any]:
        """The engine's counts, and the texts embedded cut to the text encoder's context (all rows)."""
        summary = super().summary()
        out = self.output
        column = out.read(["truncated_texts"]).column("truncated_texts") if out.path.is_dir() else None
        summary["truncated_texts"] = int(pc.sum(column).as_py() or 0) if column is not None else 0
        return summary

    @property
    def batch_rows(self) -> int:
        """Rows per `process` call: an image brings its crops (up to ground.max_objects, 16 in the paper
        profile, a few on most images), so a quarter of the crops per model call."""
        return max(1, self.batch_size // 4)

    def _batched(self, encode, n: int) -> np.ndarray:
        """Encode `n` items (images and crops, or texts) in model calls of `batch_size`; rows of float32."""
        size = self.batch_size
        parts = [encode(slice(i, i + size)).numpy() for i in range(0, n, size)]
        return np.concatenate(parts).astype(np.float32)
