"""caption: p = Caption(x) (Eq. 1). BLIP-2 by default; any registered captioner (BLIP, LLaVA, or
`column`: the caption column of the user's list)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import pyarrow as pa

from pipeline.engine import schemas
from pipeline.engine.feature import FeatureStage
from pipeline.engine.imageio import ImageDecodeError
from pipeline.engine.stage import STAGES
from pipeline.models import CAPTIONERS, Captioner, preprocessed, shared_backend


@STAGES.register("caption")
class CaptionStage(FeatureStage):
    name = "caption"
    inputs = ("manifest",)
    driver_columns = ("path", "caption")
    schema = schemas.CAPTION

    @cached_property
    def captioner(self) -> Captioner:
        return shared_backend("caption", CAPTIONERS.get(self.cfg.backend), self.cfg, self.runtime.device)

    def setup(self) -> None:
        self.captioner.load()

    def prepare(self, batch: pa.Table) -> list[Any]:
        """What the captioner reads: decoded images (preprocessed for the model when the captioner can
        do that ahead of its call), or the manifest's caption text."""
        if self.captioner.reads == "caption":
            return batch.column("caption").to_pylist()
        return [preprocessed(self.captioner, image) for image in self.load_images(batch)]

    def process(self, batch: pa.Table, inputs: list[Any] | None = None) -> list[dict[str, Any]]:
        ids = batch.column("image_id").to_pylist()
        inputs = inputs if inputs is not None else self.prepare(batch)
        good = [k for k, item in enumerate(inputs) if not isinstance(item, ImageDecodeError)]
        captions = self.captioner.caption([inputs[k] for k in good]) if good else []
        rows = [
            {"image_id": i, "status": schemas.STATUS_ERROR, "error": str(item)}
            for i, item in zip(ids, inputs, strict=True)
        ]
        for k, text in zip(good, captions, strict=True):
            rows[k] = (
                {"image_id": ids[k], "caption": text}
                if text is not None
                else {"image_id": ids[k], "status": schemas.STATUS_ERROR, "error": self.no_caption}
            )
        return rows

    @property
    def no_caption(self) -> str:
        if self.captioner.reads == "caption":
            return "no caption: the list gives none for this image"
        return f"no caption: {self.cfg.backend} gave none"
