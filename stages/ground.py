"""ground: {(x_i, p_i)} = ObjectDetector(x, p) (Eq. 5), with the caption as the text prompt."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import pyarrow as pa

from pipeline.engine import schemas
from pipeline.engine.feature import FeatureStage
from pipeline.engine.imageio import ImageDecodeError
from pipeline.engine.stage import STAGES
from pipeline.models import GROUNDERS, Grounder, preprocessed, shared_backend


@STAGES.register("ground")
class GroundStage(FeatureStage):
    name = "ground"
    inputs = ("caption", "manifest")
    driver_columns = ("caption",)
    lookup_columns = {"manifest": ("path",)}
    schema = schemas.GROUND

    @cached_property
    def grounder(self) -> Grounder:
        return shared_backend("ground", GROUNDERS.get(self.cfg.backend), self.cfg, self.runtime.device)

    def setup(self) -> None:
        self.grounder.load()

    def prepare(self, batch: pa.Table) -> list[Any] | None:
        """Decoded images, preprocessed for the model when the grounder can do that ahead of its call."""
        return [preprocessed(self.grounder, image) for image in self.load_images(batch)]

    def process(self, batch: pa.Table, images: list[Any] | None = None) -> list[dict[str, Any]]:
        ids = batch.column("image_id").to_pylist()
        captions = batch.column("caption").to_pylist()
        images = images if images is not None else self.prepare(batch)
        good = [k for k, im in enumerate(images) if not isinstance(im, ImageDecodeError)]
        found = self.grounder.ground([images[k] for k in good], [captions[k] for k in good]) if good else []
        rows = [
            {"image_id": i, "status": schemas.STATUS_ERROR, "error": str(im)} for i, im in zip(ids, images, strict=True)
        ]
        for k, objects in zip(good, found, strict=True):
            rows[k] = {"image_id": ids[k], "objects": objects}
        return rows
