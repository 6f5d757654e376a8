"""Polars helpers: a stage's features joined to the manifest, as a LazyFrame.

from pipeline.app.query import scan
d = scan("distance")                                  # the configuration params.yaml's profile selects
d = scan("distance", data_dir="data/demo", profile="tiny")   # the demo's
d = scan("distance", fingerprint="all")               # every configuration on disk (one row per image and each)
d.group_by("generator").agg(pl.col("cos_global").mean()).collect()
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.engine.errors import UsageError
from pipeline.engine.store import PART_GLOB

MANIFEST_COLUMNS = ("path", "label", "generator", "dataset", "split", "width", "height", "format")
ALL = "all"


def _current(stage: str, profile: str | None, params: str | Path | None, data_dir: str | Path) -> tuple[str, str]:
    """The fingerprint `stage` gets under `profile` and params.yaml's sections, and the profile's name."""
    from pipeline.app.runner import make_stage
    from pipeline.engine.config import load_params, resolve
    from pipeline.engine.store import Store

    config = resolve(profile, load_params(params))
    return make_stage(stage, config, Store(data_dir)).fingerprint, config.profile


def current_fingerprint(
    stage: str, profile: str | None = None, params: str | Path | None = "params.yaml", data_dir: str | Path = "."
) -> str:
    """The fingerprint `stage` gets under `profile` (None: params.yaml's `profile:`, else paper) and
    params.yaml's sections, as the CLI resolves them."""
    return _current(stage, profile, params, data_dir)[0]


def scan(
    stage: str,
    data_dir: str | Path = "data",
    fingerprint: str | None = "current",
    manifest: bool = True,
    profile: str | None = None,
    params: str | Path | None = "params.yaml",
) -> pl.LazyFrame:
    """Rows of `stage` (one per image and fingerprint: an ok row over an error row, then the newest),
    with a `fingerprint` column and, with `manifest`, the manifest's columns joined on image_id.

    Args:
        fingerprint: "current" (default): the configuration `profile` and `params` select, as for the CLI;
            a fingerprint from `item status`; or "all" (None too) for every configuration on disk, where
            an image appears once per configuration.
        profile: None for params.yaml's `profile:` (else paper), like the CLI's `--profile`.

    Raises:
        UsageError: one line when the stage has no rows under that configuration, naming those on disk.
    """
    root = Path(data_dir)
    if fingerprint == "current":
        fingerprint, name = _current(stage, profile, params, root)
        given = "" if profile else f" ({params}'s)"
        selected = f"the configuration profile {name!r}{given} selects"
    else:
        selected = f"configuration {fingerprint}"
    folder = root / "features" / stage / (fingerprint if fingerprint not in (None, ALL) else "*")
    if not list(folder.parent.glob(f"{folder.name}/{PART_GLOB}")):
        raise UsageError(_no_rows(root, stage, fingerprint, selected))
    frame = (
        pl.scan_parquet(str(folder / PART_GLOB), include_file_paths="_file")
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


def _no_rows(root: Path, stage: str, fingerprint: str | None, selected: str) -> str:
    base = root / "features" / stage
    on_disk = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if not on_disk:
        return f"scan: no {stage} rows under {root}: run `item {stage}` (with --data-dir {root}) first"
    hint = " (the demo's data: profile='tiny')" if (root / "DEMO").exists() else ""
    return (
        f"scan: no {stage} rows for {selected} ({fingerprint}) under {root}; on disk: {', '.join(on_disk)}. "
        f"Pass profile=...{hint}, fingerprint='<one of those>' or fingerprint='all'"
    )
