"""Python API for notebooks: score images with a fitted head, computing only what the cache lacks.

from pipeline.app.api import predict
rows = predict(["photos/", "more/*.jpg"], data_dir="data")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.app.runner import make_stage
from pipeline.engine.config import PipelineConfig, resolve
from pipeline.engine.errors import UsageError
from pipeline.engine.progress import Progress
from pipeline.engine.stage import STAGES
from pipeline.engine.store import Store
from pipeline.method.heads import FittedHead
from pipeline.method.misalignment import object_cosines
from pipeline.method.rows import latest_model

log = logging.getLogger(__name__)


def head_pipeline(head: FittedHead, runtime: dict[str, Any] | None = None) -> PipelineConfig:
    """The pipeline configuration the head's features were made with (so predict computes the same)."""
    saved = head.config["pipeline"]
    return resolve(saved["profile"], saved["stages"], runtime)


def predict(
    paths: Iterable[str | Path],
    model: str | Path | None = None,
    data_dir: str | Path = "data",
    runtime: dict[str, Any] | None = None,
    progress: Callable[[str], Progress | None] | None = None,
) -> list[dict[str, Any]]:
    """Score every file under `paths` (folders, globs, CSV/Parquet lists, image files).

    Returns one dict per input file: image_id, path, score (calibrated P(fake)), decision ("fake" |
    "real" at the calibrated threshold), caption, objects (phrase, box, score, cosine of crop and
    phrase), status and error. Files that cannot be scored get status "error" and the reason.
    """
    store = Store(data_dir)
    head = FittedHead(Path(model) if model else latest_model(store))
    config = head_pipeline(head, runtime)
    ingest = make_stage("ingest", config, store, inputs=list(paths), dataset="predict")
    ingest.run(progress=progress("ingest") if progress else None)
    sources = ingest.sources()
    ids = ingest.image_ids(sources)
    wanted = {i for i in ids if i is not None}
    stages = {name: make_stage(name, config, store) for name in STAGES.feature_stages()}
    if stages["distance"].fingerprint != head.config["features"]["fingerprint"]:
        raise UsageError(
            f"head {head.name} was trained on distance features {head.config['features']['fingerprint']} "
            f"but its saved configuration now gives {stages['distance'].fingerprint}"
        )
    for name, stage in stages.items():
        stage.run(ids=wanted, progress=progress(name) if progress else None)
    table = _collect(store, stages, wanted)
    scored = _score(head, table)
    by_id = {row["image_id"]: row for row in scored.iter_rows(named=True)}
    rows = [
        _output_row(source.path, image_id, by_id.get(image_id)) for source, image_id in zip(sources, ids, strict=True)
    ]
    return decide(rows, head.calibration["threshold"])


def _collect(store: Store, stages: dict[str, Any], ids: set[str]) -> pl.DataFrame:
    """The manifest, caption, ground, embed and distance rows of `ids`, joined (error reason kept)."""

    def read(name: str, columns: list[str]) -> pl.DataFrame:
        part_dir = store.manifest if name == "manifest" else store.features(name, stages[name].fingerprint)
        frame = pl.from_arrow(part_dir.read(["image_id", *columns], ids=ids)).unique("image_id", keep="last")
        return frame.rename({c: f"{name}_{c}" for c in columns if c in ("status", "error")})

    frame = read("manifest", ["status", "error"])
    for name, columns in (
        ("caption", ["caption"]),
        ("ground", ["objects"]),
        ("embed", ["object_image_embeds", "object_text_embeds"]),
        ("distance", ["d_global", "d_local", "status", "error"]),
    ):
        frame = frame.join(read(name, columns), on="image_id", how="left")
    return frame


def _score(head: FittedHead, frame: pl.DataFrame) -> pl.DataFrame:
    ok = frame["distance_status"] == "ok"
    scores = np.full(frame.height, np.nan)
    if ok.any():
        rows = frame.filter(ok)
        x = head.features(rows["d_global"].to_numpy().astype(np.float32), rows["d_local"].to_numpy().astype(np.float32))
        scores[ok.to_numpy()] = head.predict_calibrated(x)
    return frame.with_columns(pl.Series("score", scores))


def _object_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    objects = row.get("objects") or []
    cosines = object_cosines(row.get("object_image_embeds"), row.get("object_text_embeds"))
    out = []
    for obj, cosine in zip(objects, cosines, strict=False):
        out.append(
            {
                "phrase": obj["phrase"],
                "box": [round(float(v), 2) for v in obj["box"]],
                "score": round(float(obj["score"]), 4),
                "cosine": round(cosine, 4),
            }
        )
    return out


def _output_row(path: str, image_id: str | None, row: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "image_id": image_id,
        "path": path,
        "score": None,
        "decision": None,
        "caption": None,
        "objects": [],
        "status": "error",
        "error": None,
    }
    if row is None:
        out["error"] = "not ingested"
        return out
    out["caption"] = row.get("caption")
    if row.get("distance_status") == "ok" and not np.isnan(row["score"]):
        out.update(score=round(float(row["score"]), 6), status="ok", objects=_object_rows(row))
        return out
    out["error"] = row.get("distance_error") or row.get("manifest_error") or "not computed"
    return out


def decide(rows: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """Fill `decision` from `score` at `threshold`."""
    for row in rows:
        if row["score"] is not None:
            row["decision"] = "fake" if row["score"] >= threshold else "real"
    return rows


def write_rows(rows: list[dict[str, Any]], out: Path) -> None:
    """CSV (objects as JSON text) or JSON, by the file's extension."""
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(rows, indent=2) + "\n")
    elif out.suffix.lower() == ".csv":
        pl.DataFrame([{**r, "objects": json.dumps(r["objects"])} for r in rows]).write_csv(out)
    else:
        raise UsageError(f"--out must end in .csv or .json, got {out.name}")
