"""caption: p = Caption(x) (Eq. 1). BLIP-2 by default; or the caption column of the user's list."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import pyarrow as pa

from pipeline import schemas
from pipeline.imageio import ImageDecodeError
from pipeline.stage import FeatureStage
from stages import STAGES
from stages._images import load_images


@STAGES.register("caption")
class CaptionStage(FeatureStage):
    name = "caption"
    inputs = ("manifest",)
    driver_columns = ("path", "caption")
    schema = schemas.CAPTION

    @cached_property
    def captioner(self):
        from pipeline.models import CAPTIONERS, captioners, shared_backend  # noqa: F401  (captioners registers)

        return shared_backend("caption", CAPTIONERS.get(self.cfg.backend), self.cfg, self.runtime.device)

    def setup(self) -> None:
        if self.cfg.backend != "column":
            self.captioner.load()

    def prepare(self, batch: pa.Table) -> list[Any] | None:
        if self.cfg.backend == "column":
            return None
        return load_images(batch.column("path").to_pylist(), self.pipeline, self.runtime.loader_threads)

    def process(self, batch: pa.Table, images: list[Any] | None = None) -> list[dict[str, Any]]:
        ids = batch.column("image_id").to_pylist()
        if self.cfg.backend == "column":
            return [
                {"image_id": i, "caption": c}
                if c
                else {
                    "image_id": i,
                    "status": schemas.STATUS_ERROR,
                    "error": "no caption: the list gives none for this image",
                }
                for i, c in zip(ids, batch.column("caption").to_pylist(), strict=True)
            ]
        images = images if images is not None else self.prepare(batch)
        good = [k for k, im in enumerate(images) if not isinstance(im, ImageDecodeError)]
        captions = self.captioner.caption([images[k] for k in good]) if good else []
        rows = [
            {"image_id": i, "status": schemas.STATUS_ERROR, "error": str(im)} for i, im in zip(ids, images, strict=True)
        ]
        for k, text in zip(good, captions, strict=True):
            rows[k] = {"image_id": ids[k], "caption": text}
        return rows
