"""Reading the cache for learning: labelled rows, their digest, and the fitted heads on disk.

Shared by fit, evaluate, the baselines, robustness, predict and the report, so that each reads the
same rows the same way: original images only unless asked, labelled, with status ok.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.engine.errors import UsageError
from pipeline.engine.store import Store, read_json

LATEST = "LATEST"  # models/LATEST names the most recently fitted head's folder
MANIFEST_LABELS = ["image_id", "label", "generator", "dataset", "split", "source_id", "perturbation"]


def labelled_manifest(store: Store, perturbation: str | None = None) -> pl.DataFrame:
    """Manifest rows with a label (`perturbation`: None for originals, "*" every derived copy, or one)."""
    m = pl.from_arrow(store.manifest.read(MANIFEST_LABELS)).filter(pl.col("label").is_not_null())
    if perturbation is None:
        return m.filter(pl.col("perturbation").is_null())
    if perturbation == "*":
        return m.filter(pl.col("perturbation").is_not_null())
    return m.filter(pl.col("perturbation") == perturbation)


def labelled_rows(
    store: Store,
    distance_fp: str,
    split: str | None = None,
    vectors: bool = True,
    perturbation: str | None = None,
    generators: tuple[str, ...] = (),
    datasets: tuple[str, ...] = (),
) -> pl.DataFrame:
    """Labelled distance rows with status ok joined to the manifest, ordered by image_id.

    Args:
        split: one split, or all.
        vectors: read D_g and D_l (False: ids, labels, generators and splits only, for fingerprints).
        perturbation: None for original images only, "*" for every derived image, or one ("jpeg:50").
        generators, datasets: keep only these (empty: all), e.g. to train on one generator.
    """
    distance = store.features("distance", distance_fp)
    if not distance.exists():
        raise FileNotFoundError(f"no distance rows under {distance.path}: run `item distance` first")
    keys = pl.from_arrow(distance.current_keys()).filter(pl.col("status") == "ok").drop("status")
    rows = keys.join(labelled_manifest(store, perturbation), on="image_id", how="inner")
    if split is not None:
        rows = rows.filter(pl.col("split") == split)
    if generators:
        rows = rows.filter(pl.col("generator").is_in(list(generators)))
    if datasets:
        rows = rows.filter(pl.col("dataset").is_in(list(datasets)))
    if vectors:
        vec = pl.from_arrow(distance.read(["image_id", "d_global", "d_local"], ids=rows["image_id"].to_list()))
        rows = rows.join(vec, on="image_id", how="inner")
    return rows.sort("image_id")


def to_numpy(column: pl.Series) -> np.ndarray:
    """A vector column as a float32 (n, dim) array."""
    return column.to_numpy().astype(np.float32)


def rows_digest(rows: pl.DataFrame) -> str:
    """A short digest of the (image_id, label) pairs of `rows`, in image_id order."""
    digest = hashlib.sha256()
    for image_id, label in rows.select("image_id", "label").sort("image_id").iter_rows():
        digest.update(f"{image_id}:{label};".encode())
    return digest.hexdigest()[:16]


def latest_model(store: Store) -> Path:
    """The head folder `models/LATEST` names (a folder name under models/, checked)."""
    marker = store.models / LATEST
    if not marker.exists():
        raise FileNotFoundError(f"no fitted head in {store.models}: run `item fit` first")
    name = marker.read_text().strip()
    folder = store.models / name
    if not name or "/" in name or name.startswith(".") or not (folder / "config.json").is_file():
        raise UsageError(f"{marker} names {name!r}, which is not a fitted head under {store.models}: run `item fit`")
    return folder


def is_item_head(folder: Path) -> bool:
    """A complete ITEM head made by `item fit` (not a baseline, not a temporary or broken folder)."""
    if folder.name.startswith(".") or not folder.is_dir():
        return False
    config = read_json(folder / "config.json")
    return isinstance(config, dict) and "pipeline" in config and "features" in config


def all_models(store: Store) -> list[Path]:
    """Every ITEM head folder under models/ (baselines, temporary and broken folders left out)."""
    return sorted(p for p in store.models.iterdir() if is_item_head(p)) if store.models.is_dir() else []
