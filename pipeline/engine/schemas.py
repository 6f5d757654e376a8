"""The store's own pyarrow schemas (the manifest and the paths ingest has seen), and the pieces every
stage's schema is built from. A stage's output schema lives with the stage (stages/<name>.py).

Vectors are fixed-size float32 lists, which polars reads as `pl.Array(pl.Float32, dim)`.
Every row carries `image_id`, `status` ("ok" | "error"), and for an error its `error_kind` (machine-
readable, see engine/errors.py), `error_stage` (the stage it arose in) and `error` (for people).
"""

from __future__ import annotations

import pyarrow as pa

STATUS_OK = "ok"
STATUS_ERROR = "error"

ROW_STATUS = [
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("error_kind", pa.string()),
    pa.field("error_stage", pa.string()),
]
ERROR_COLUMNS = ("error", "error_kind", "error_stage")


def rows_schema(*fields: pa.Field) -> pa.Schema:
    """A stage's output schema: `image_id`, its own columns, then the status columns."""
    return pa.schema([pa.field("image_id", pa.string(), nullable=False), *fields, *ROW_STATUS])


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
