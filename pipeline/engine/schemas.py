"""Explicit pyarrow schemas of the manifest and every stage's rows.

Vectors are fixed-size float32 lists, which polars reads as `pl.Array(pl.Float32, dim)`.
Every row carries `image_id`, `status` ("ok" | "error") and `error` (reason or null).
"""

from __future__ import annotations

import pyarrow as pa

STATUS_OK = "ok"
STATUS_ERROR = "error"

ROW_STATUS = [pa.field("status", pa.string(), nullable=False), pa.field("error", pa.string())]


def vector(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)


MANIFEST = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.int8()),  # 0 real, 1 fake, null unknown
        pa.field("generator", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),
        pa.field("jpeg_quality", pa.int16()),  # estimated libjpeg quality, JPEG files only
        pa.field("n_bytes", pa.int64()),
        pa.field("caption", pa.string()),  # a caption the user supplied in a CSV/Parquet manifest
        pa.field("source_id", pa.string()),  # for a derived image (item perturb): the image it was made from
        pa.field("perturbation", pa.string()),  # e.g. "jpeg:50"; null for an original image
        *ROW_STATUS,
    ]
)

# Every file path ingest has seen (duplicates included): lets a re-run skip unchanged files and
# tells users every path of an image.
SOURCES = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("n_bytes", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("label", pa.int8()),
        pa.field("generator", pa.string()),
        pa.field("dataset", pa.string()),
    ]
)

CAPTION = pa.schema([pa.field("image_id", pa.string(), nullable=False), pa.field("caption", pa.string()), *ROW_STATUS])

OBJECT = pa.struct(
    [
        pa.field("phrase", pa.string()),
        pa.field("box", pa.list_(pa.float32(), 4)),  # x0, y0, x1, y1 in pixels of the oriented image
        pa.field("score", pa.float32()),
    ]
)

GROUND = pa.schema(
    [pa.field("image_id", pa.string(), nullable=False), pa.field("objects", pa.list_(OBJECT)), *ROW_STATUS]
)


def embed_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("image_embed", vector(dim)),
            pa.field("text_embed", vector(dim)),
            pa.field("object_image_embeds", pa.list_(vector(dim))),
            pa.field("object_text_embeds", pa.list_(vector(dim))),
            *ROW_STATUS,
        ]
    )


def distance_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("d_global", vector(dim)),
            pa.field("d_local", vector(dim)),
            pa.field("n_objects", pa.int32()),
            pa.field("cos_global", pa.float32()),
            pa.field("cos_local", pa.float32()),
            *ROW_STATUS,
        ]
    )
