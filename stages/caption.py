"""caption: p = Caption(x) (Eq. 1). BLIP-2 by default; any registered captioner (BLIP, LLaVA, or
`column`: the caption column of the user's list)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pyarrow as pa

from pipeline.engine import schemas
from pipeline.engine.config import ConfigError, check_dtype, knob
from pipeline.engine.errors import RowError, error_fields
from pipeline.engine.feature import FeatureStage
from pipeline.engine.hub import HubModel
from pipeline.engine.imageio import ImageDecodeError
from pipeline.engine.inputs import ImageRows, image_only
from pipeline.engine.stage import STAGES
from pipeline.models import CAPTIONERS, Captioner, shared_backend


@dataclass(frozen=True)
class CaptionConfig(HubModel):
    """Captioner. `model` is a hub id, a local directory, or `tiny/...` (random small model)."""

    backend: str = "blip2"  # blip2 | column (use the manifest's caption column)
    model: str = "Salesforce/blip2-opt-2.7b"
    revision: str | None = None
    dtype: str = "bfloat16"
    prompt: str | None = None  # None: unconditional captioning, as in the paper
    max_new_tokens: int = 30
    min_new_tokens: int = 0
    num_beams: int = 1
    seed: int = 0  # random init of tiny models
    # TF32 tensor cores for this model's float32 matmuls and convolutions on a GPU (faster, rounds
    # differently: in the fingerprint when on). Off: a GPU computes float32 as a CPU does.
    tf32: bool = knob(False)

    def __post_init__(self) -> None:
        check_dtype(self.dtype, "caption")
        if self.max_new_tokens < 1 or self.min_new_tokens < 0 or self.min_new_tokens > self.max_new_tokens:
            raise ConfigError("caption: need 0 <= min_new_tokens <= max_new_tokens and max_new_tokens >= 1")
        if not 1 <= self.num_beams <= 64 or self.max_new_tokens > 4096:
            raise ConfigError(
                f"caption.num_beams must be 1 to 64 and caption.max_new_tokens at most 4096, got "
                f"{self.num_beams} and {self.max_new_tokens}"
            )


CAPTION = schemas.rows_schema(pa.field("caption", pa.string()))


@STAGES.register
class CaptionStage(FeatureStage):
    """Caption every ingested image (BLIP-2 in the paper profile), batched; or copy the captions of a
    list with caption.backend=column."""

    name = "caption"
    version = 2  # 2: in float16, BLIP-2's Q-Former and query tokens stay float32 (from_pretrained's rule)
    inputs = ("manifest",)
    driver_columns = ("path", "caption")
    config_class = CaptionConfig
    reads_images = True
    default_batch_size = 64  # images per call: BLIP-2's decoding is launch-bound, larger batches amortise it
    schema = CAPTION

    @cached_property
    def captioner(self) -> Captioner:
        return shared_backend("caption", CAPTIONERS.get(self.cfg.backend), self.cfg, self.runtime.device)

    def setup(self) -> None:
        self.captioner.load()

    def preparer(self) -> ImageRows | None:
        """Decoded images, preprocessed for the model when the captioner can do that ahead of its call
        (None: the captioner reads the list's captions, see `prepare`)."""
        if self.captioner.reads == "caption":
            return None
        pixels = getattr(self.captioner, "preprocessor", lambda: None)()
        return self.image_rows(image_only(pixels) if pixels is not None else None)

    def prepare(self, batch: pa.Table) -> list[Any]:
        """What the captioner reads: decoded (and preprocessed) images, or the manifest's caption text."""
        if self.captioner.reads == "caption":
            return batch.column("caption").to_pylist()
        return super().prepare(batch)

    def process(self, batch: pa.Table, inputs: list[Any] | None = None) -> list[dict[str, Any]]:
        ids = batch.column("image_id").to_pylist()
        inputs = inputs if inputs is not None else self.prepare(batch)
        good = [k for k, item in enumerate(inputs) if not isinstance(item, ImageDecodeError)]
        captions = self.captioner.caption([inputs[k] for k in good]) if good else []
        rows = [{"image_id": i, **error_fields(item)} for i, item in zip(ids, inputs, strict=True)]
        for k, text in zip(good, captions, strict=True):
            rows[k] = (
                {"image_id": ids[k], "caption": text}
                if text is not None
                else {"image_id": ids[k], **error_fields(self.no_caption)}
            )
        return rows

    @property
    def no_caption(self) -> RowError:
        if self.captioner.reads == "caption":
            return RowError("no_output", "the list gives no caption for this image")
        return RowError("no_output", f"{self.cfg.backend} gave no caption")
