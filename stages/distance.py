"""distance: the misalignment vectors of Eq. 3-7 (`pipeline.method.misalignment`), computed from the
stored raw embeddings. Zero objects: D_l is zero, n_objects = 0 and cos_local is null. Vectors are
stored as float32."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.engine import schemas
from pipeline.engine.feature import FeatureStage
from pipeline.engine.stage import STAGES
from pipeline.method.misalignment import fixed_size, misalignment, vectors


@dataclass(frozen=True)
class DistanceConfig:
    """Eq. 3-7 have no knobs; the weights w1, w2 of Eq. 8 belong to the head (fit)."""


def distance_schema(dim: int) -> pa.Schema:
    """D_g and D_l (Eq. 3-7), the number of objects and the two cosines."""
    return schemas.rows_schema(
        pa.field("d_global", schemas.vector(dim)),
        pa.field("d_local", schemas.vector(dim)),
        pa.field("n_objects", pa.int32()),
        pa.field("cos_global", pa.float32()),
        pa.field("cos_local", pa.float32()),
    )


@STAGES.register
class DistanceStage(FeatureStage):
    """Compute the misalignment vectors D_g, D_l (Eq. 3-7), n_objects and the cosines from the stored
    embeddings."""

    name = "distance"
    inputs = ("embed",)
    config_class = DistanceConfig
    driver_columns = ("image_embed", "text_embed", "object_image_embeds", "object_text_embeds")

    @cached_property
    def dim(self) -> int:
        return self.upstream("embed").schema.field("image_embed").type.list_size

    @cached_property
    def schema(self) -> pa.Schema:
        return distance_schema(self.dim)

    @property
    def batch_size(self) -> int:
        return self.chunk_size  # numpy arithmetic: one batch per chunk

    @property
    def chunk_size(self) -> int:
        return max(self.runtime.chunk_size, 2048)  # cheap rows: fewer, larger part files

    def process(self, batch: pa.Table) -> pa.Table:
        dim = self.dim
        counts = pc.list_value_length(batch.column("object_image_embeds")).fill_null(0).to_numpy(zero_copy_only=False)
        obj_i = batch.column("object_image_embeds").combine_chunks().flatten()
        obj_t = batch.column("object_text_embeds").combine_chunks().flatten()
        d = misalignment(
            vectors(batch.column("image_embed"), dim),
            vectors(batch.column("text_embed"), dim),
            vectors(obj_i, dim),
            vectors(obj_t, dim),
            counts.astype(np.int64),
        )
        n = batch.num_rows
        cos_local = pa.array(d["cos_local"].astype(np.float32), pa.float32(), mask=np.isnan(d["cos_local"]))
        return pa.table(
            {
                "image_id": batch.column("image_id"),
                "d_global": fixed_size(d["d_global"], dim),
                "d_local": fixed_size(d["d_local"], dim),
                "n_objects": pa.array(counts.astype(np.int32)),
                "cos_global": pa.array(d["cos_global"].astype(np.float32)),
                "cos_local": cos_local,
                "status": pa.array([schemas.STATUS_OK] * n),
                "error": pa.nulls(n, pa.string()),
                "error_kind": pa.nulls(n, pa.string()),
                "error_stage": pa.nulls(n, pa.string()),
            },
            schema=self.schema,
        )
