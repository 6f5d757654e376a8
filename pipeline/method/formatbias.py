"""Format-bias check: do real and fake images differ in how they are stored?

Per generator and class: the formats, the median JPEG quality and the median size in pixels and
bytes. A warning is raised for a generator whose real and fake images differ systematically: a
different dominant format, JPEG shares more than 30 points apart, median JPEG qualities more than
10 apart, or median pixel counts more than 1.5x apart. A detector can then score by compression
or size alone (the `format` baseline measures how far).
"""

from __future__ import annotations

import polars as pl

from pipeline.engine.store import Store


def summary(store: Store) -> pl.DataFrame:
    m = pl.from_arrow(store.manifest.read()).filter(
        (pl.col("status") == "ok") & pl.col("label").is_not_null() & pl.col("perturbation").is_null()
    )
    return (
        m.with_columns((pl.col("width") * pl.col("height")).alias("pixels"))
        .group_by("generator", "label")
        .agg(
            pl.len().alias("n"),
            pl.col("format").mode().first().alias("main_format"),
            (pl.col("format") == "JPEG").mean().alias("jpeg_share"),
            pl.col("jpeg_quality").median().alias("median_quality"),
            pl.col("pixels").median().alias("median_pixels"),
            pl.col("n_bytes").median().alias("median_bytes"),
            pl.col("format").unique().sort().str.join(",").alias("formats"),
        )
        .sort("generator", "label")
    )


def warnings(table: pl.DataFrame) -> list[str]:
    out = []
    for generator in table["generator"].unique().sort().to_list():
        rows = {r["label"]: r for r in table.filter(pl.col("generator") == generator).iter_rows(named=True)}
        if 0 not in rows or 1 not in rows:
            continue
        real, fake = rows[0], rows[1]
        reasons = []
        if real["main_format"] != fake["main_format"]:
            reasons.append(f"real images are mostly {real['main_format']}, fakes {fake['main_format']}")
        if abs(real["jpeg_share"] - fake["jpeg_share"]) > 0.3:
            reasons.append(f"JPEG share {100 * real['jpeg_share']:.0f}% real vs {100 * fake['jpeg_share']:.0f}% fake")
        if (
            real["median_quality"] is not None
            and fake["median_quality"] is not None
            and abs(real["median_quality"] - fake["median_quality"]) > 10
        ):
            reasons.append(f"median JPEG quality {real['median_quality']:.0f} vs {fake['median_quality']:.0f}")
        ratio = max(real["median_pixels"], fake["median_pixels"]) / max(
            1, min(real["median_pixels"], fake["median_pixels"])
        )
        if ratio > 1.5:
            reasons.append(f"median size {real['median_pixels']:.0f} vs {fake['median_pixels']:.0f} pixels")
        if reasons:
            out.append(f"{generator}: " + "; ".join(reasons) + " - a detector can score by storage alone")
    return out
