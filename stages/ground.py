"""ground: {(x_i, p_i)} = ObjectDetector(x, p) (Eq. 5), with the caption as the text prompt."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pyarrow as pa

from pipeline.engine import schemas
from pipeline.engine.config import ConfigError, check_dtype, knob
from pipeline.engine.errors import error_fields
from pipeline.engine.feature import FeatureStage
from pipeline.engine.hub import HubModel
from pipeline.engine.imageio import ImageDecodeError
from pipeline.engine.inputs import ImageRows, image_only
from pipeline.engine.stage import STAGES
from pipeline.models import GROUNDERS, Grounder, shared_backend
from pipeline.models.grounders import model_shape


@dataclass(frozen=True)
class GroundConfig(HubModel):
    """Open-vocabulary detector prompted with the caption."""

    backend: str = "transformers"  # transformers | groundingdino-py
    model: str = "IDEA-Research/grounding-dino-base"
    revision: str | None = None
    dtype: str = "float32"
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    max_objects: int = 16  # keep the highest-scoring objects
    shortest_edge: int = 800
    longest_edge: int = 1333
    # Each resized side padded (masked) up to the next multiple of this, or of the edges above, for
    # batching: images of nearby sizes share a model call (transformers backend; 0: every image at
    # its own resized shape, one call per shape). Ours, not the paper's (docs/method.md).
    pad_multiple: int = 128
    text_encoder: str | None = None  # groundingdino-py only: BERT hub id or local directory
    config_file: str | None = None  # groundingdino-py only: its model config (.py)
    seed: int = 0
    # TF32 tensor cores for this model's float32 matmuls and convolutions on a GPU (faster, rounds
    # differently: in the fingerprint when on). Off: a GPU computes float32 as a CPU does.
    tf32: bool = knob(False)

    def __post_init__(self) -> None:
        check_dtype(self.dtype, "ground")
        for name in ("box_threshold", "text_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"ground.{name} must be in [0, 1]")
        if self.max_objects < 1:
            raise ConfigError("ground.max_objects must be >= 1")
        if not 1 <= self.shortest_edge <= self.longest_edge:
            raise ConfigError("ground.shortest_edge must be >= 1 and <= ground.longest_edge")
        if self.pad_multiple < 0:
            raise ConfigError("ground.pad_multiple must be >= 0 (0: no padding)")


OBJECT = pa.struct(
    [
        pa.field("phrase", pa.string()),
        pa.field("box", pa.list_(pa.float32(), 4)),  # x0, y0, x1, y1 in pixels of the oriented image
        pa.field("score", pa.float32()),
    ]
)
GROUND = schemas.rows_schema(pa.field("objects", pa.list_(OBJECT)))


@STAGES.register
class GroundStage(FeatureStage):
    """Find the objects each caption names with Grounding DINO (caption as prompt); rows hold (phrase,
    box in pixels, score) per object."""

    name = "ground"
    inputs = ("caption", "manifest")
    driver_columns = ("caption",)
    lookup_columns = {"manifest": ("path", "width", "height")}
    config_class = GroundConfig
    reads_images = True
    schema = GROUND

    @cached_property
    def grounder(self) -> Grounder:
        return shared_backend("ground", GROUNDERS.get(self.cfg.backend), self.cfg, self.runtime.device)

    def setup(self) -> None:
        self.grounder.load()

    def batch_order(self, rows: pa.Table) -> pa.Table:
        """The chunk sorted by the shape each image has in the model call (`model_shape`: resized and
        padded to its bucket): the grounder runs images of one shape together, so sorted batches are
        full model calls instead of a few images each."""
        if rows.num_rows < 2:
            return rows
        cfg = self.cfg
        sizes = zip(rows.column("width").to_pylist(), rows.column("height").to_pylist(), strict=True)
        keys = [
            model_shape(w, h, cfg.shortest_edge, cfg.longest_edge, cfg.pad_multiple) if w and h else (0, 0)
            for w, h in sizes
        ]
        return rows.take(pa.array(sorted(range(len(keys)), key=keys.__getitem__), pa.int64()))

    def preparer(self) -> ImageRows:
        """Decoded images, preprocessed for the model when the grounder can do that ahead of its call."""
        pixels = getattr(self.grounder, "preprocessor", lambda: None)()
        return self.image_rows(image_only(pixels) if pixels is not None else None)

    def process(self, batch: pa.Table, images: list[Any] | None = None) -> list[dict[str, Any]]:
        ids = batch.column("image_id").to_pylist()
        captions = batch.column("caption").to_pylist()
        images = images if images is not None else self.prepare(batch)
        good = [k for k, im in enumerate(images) if not isinstance(im, ImageDecodeError)]
        found = self.grounder.ground([images[k] for k in good], [captions[k] for k in good]) if good else []
        rows = [{"image_id": i, **error_fields(im)} for i, im in zip(ids, images, strict=True)]
        for k, objects in zip(good, found, strict=True):
            rows[k] = {"image_id": ids[k], "objects": objects}
        return rows
