"""Synthetic cached rows (manifest + distance) written straight into a store.

Used by tests and benchmarks that exercise everything after the model stages: the heads,
evaluation and re-runs, at sizes no model could produce here in time. A planted signal along one
direction of D_g makes the label learnable; `signal=0` makes it pure noise.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.engine import schemas
from pipeline.engine.keys import image_id_of_bytes
from pipeline.engine.store import Store


def synthetic_rows(
    n: int,
    dim: int = 768,
    signal: float = 1.0,
    seed: int = 0,
    generators: tuple[str, ...] = ("gan", "diffusion"),
    splits: tuple[float, float, float] = (0.7, 0.1, 0.2),
) -> tuple[pa.Table, pa.Table]:
    """Manifest and distance tables for `n` fake images whose label shifts D_g by `signal` on axis 0."""
    rng = np.random.default_rng(seed)
    ids = [image_id_of_bytes(f"synthetic:{seed}:{i}".encode()) for i in range(n)]
    labels = rng.integers(0, 2, n)
    u = rng.random(n)
    split = np.where(u < splits[0], "train", np.where(u < splits[0] + splits[1], "val", "test"))
    d_global = rng.normal(0, 0.05, (n, dim)).astype(np.float32)
    d_global[:, 0] += signal * 0.05 * (2 * labels - 1)
    d_local = rng.normal(0, 0.05, (n, dim)).astype(np.float32)
    manifest = pa.table(
        {
            "image_id": ids,
            "path": [f"/synthetic/{i}.png" for i in range(n)],
            "label": pa.array(labels, pa.int8()),
            "generator": [generators[i % len(generators)] for i in range(n)],
            "dataset": ["synthetic"] * n,
            "split": split.tolist(),
            "width": pa.array([256] * n, pa.int32()),
            "height": pa.array([256] * n, pa.int32()),
            "format": ["PNG"] * n,
            "jpeg_quality": pa.nulls(n, pa.int16()),
            "n_bytes": pa.array([1000] * n, pa.int64()),
            "caption": pa.nulls(n, pa.string()),
            "status": ["ok"] * n,
            "error": pa.nulls(n, pa.string()),
        },
    )
    distance = pa.table(
        {
            "image_id": ids,
            "d_global": pa.FixedSizeListArray.from_arrays(pa.array(d_global.ravel()), dim),
            "d_local": pa.FixedSizeListArray.from_arrays(pa.array(d_local.ravel()), dim),
            "n_objects": pa.array(rng.integers(0, 5, n), pa.int32()),
            "cos_global": pa.array(rng.uniform(0.1, 0.3, n), pa.float32()),
            "cos_local": pa.array(rng.uniform(0.1, 0.3, n), pa.float32()),
            "status": ["ok"] * n,
            "error": pa.nulls(n, pa.string()),
        },
        schema=schemas.distance_schema(dim),
    )
    return manifest, distance


def write_synthetic(store: Store, distance_fp: str, n: int, dim: int = 768, chunk: int = 10_000, **kwargs) -> None:
    """Write synthetic manifest and distance rows into `store` in parts of `chunk` rows."""
    manifest, distance = synthetic_rows(n, dim, **kwargs)
    target = store.features("distance", distance_fp, schemas.distance_schema(dim))
    for start in range(0, n, chunk):
        store.manifest.write(manifest.slice(start, chunk))
        target.write(distance.slice(start, chunk))
