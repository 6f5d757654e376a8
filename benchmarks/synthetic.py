"""Synthetic cached rows written straight into a store, for tests and benchmarks that exercise
everything after the model stages (the heads, evaluation, re-runs) at sizes no model could produce
here in time. A planted signal along one direction of D_g makes the label learnable; `signal=0`
makes it pure noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.engine.keys import image_id_of_bytes
from pipeline.engine.schemas import MANIFEST
from pipeline.engine.store import Store
from stages.distance import distance_schema


def ok_table(schema: pa.Schema, n: int, **columns: Any) -> pa.Table:
    """`n` rows of `schema` with status ok: the `columns` given, every other column null."""
    given = {"status": ["ok"] * n, **columns}
    return pa.table({f.name: given.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)


def manifest_table(
    ids: Sequence[str],
    paths: Sequence[str],
    labels: Any,
    generators: Sequence[str],
    splits: Sequence[str],
    dataset: str,
) -> pa.Table:
    """Manifest rows of 256 x 256 PNGs of 1000 bytes (what the rows after ingest need of an image)."""
    n = len(ids)
    return ok_table(
        MANIFEST,
        n,
        image_id=ids,
        path=paths,
        label=pa.array(labels, pa.int8()),
        generator=generators,
        dataset=[dataset] * n,
        split=splits,
        width=[256] * n,
        height=[256] * n,
        format=["PNG"] * n,
        n_bytes=[1000] * n,
    )


def vectors(values: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    """Rows of `dim` float32 values (`values` flat or (n, dim)) as a fixed-size list column."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(values, np.float32).ravel()), dim)


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
    paths = [f"/synthetic/{i}.png" for i in range(n)]
    manifest = manifest_table(
        ids, paths, labels, [generators[i % len(generators)] for i in range(n)], split.tolist(), "synthetic"
    )
    distance = ok_table(
        distance_schema(dim),
        n,
        image_id=ids,
        d_global=vectors(d_global, dim),
        d_local=vectors(d_local, dim),
        n_objects=pa.array(rng.integers(0, 5, n), pa.int32()),
        cos_global=pa.array(rng.uniform(0.1, 0.3, n), pa.float32()),
        cos_local=pa.array(rng.uniform(0.1, 0.3, n), pa.float32()),
    )
    return manifest, distance


def write_synthetic(store: Store, distance: Any, n: int, dim: int = 768, chunk: int = 10_000, **kwargs) -> None:
    """Write synthetic manifest and distance rows into `store` in parts of `chunk` rows, as the
    `distance` stage (its fingerprint folder, its identity in each part: what readers check)."""
    manifest, rows = synthetic_rows(n, dim, **kwargs)
    target = store.features("distance", distance.fingerprint, rows.schema)
    for start in range(0, n, chunk):
        store.manifest.write(manifest.slice(start, chunk), metadata={"stage": "ingest"})
        target.write(rows.slice(start, chunk), metadata=distance.identity())
