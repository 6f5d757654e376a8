"""Polars helpers: a stage's features joined to the manifest, as a LazyFrame.

from pipeline.app.query import scan
d = scan("distance")                           # every configuration on disk
d = scan("distance", fingerprint="current")    # the one params.yaml selects
d.group_by("generator").agg(pl.col("cos_global").mean()).collect()
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.engine.store import PART_GLOB

MANIFEST_COLUMNS = ("path", "label", "generator", "dataset", "split", "width", "height", "format")


def current_fingerprint(stage: str, profile: str | None = None, params: str | Path = "params.yaml") -> str:
    """The fingerprint the given profile/params.yaml select for `stage`."""
    from pipeline.app.runner import make_stage
    from pipeline.engine.config import load_params, resolve
    from pipeline.engine.store import Store

    return make_stage(stage, resolve(profile, load_params(params)), Store(".")).fingerprint


def scan(
    stage: str,
    data_dir: str | Path = "data",
    fingerprint: str | None = None,
    manifest: bool = True,
    profile: str | None = None,
) -> pl.LazyFrame:
    """Rows of `stage` (one per image and fingerprint: an ok row over an error row, then the newest),
    with a `fingerprint` column and, with `manifest`, the manifest's columns joined on image_id.

    Args:
        fingerprint: None for every configuration on disk, a fingerprint, or "current" (from params.yaml).
    """
    root = Path(data_dir)
    if fingerprint == "current":
        fingerprint = current_fingerprint(stage, profile)
    pattern = root / "features" / stage / (fingerprint or "*") / PART_GLOB
    frame = (
        pl.scan_parquet(str(pattern), include_file_paths="_file")
        .with_columns(
            pl.col("_file").str.extract(r"/([0-9a-f]+)/part-[^/]+$").alias("fingerprint"),
            (pl.col("status") == "ok").alias("_ok"),
        )
        .sort(["fingerprint", "image_id", "_ok", "_file"])
        .unique(["fingerprint", "image_id"], keep="last", maintain_order=True)
        .drop("_ok", "_file")
    )
    if manifest:
        m = pl.scan_parquet(str(root / "manifest" / PART_GLOB)).select("image_id", *MANIFEST_COLUMNS)
        frame = frame.join(m, on="image_id", how="left")
    return frame
