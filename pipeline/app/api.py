"""Python API for notebooks: score images with a fitted head, computing only what the cache lacks.

from pipeline.app.api import predict
rows = predict(["photos/", "more/*.jpg"], data_dir="data")

Problems a user can fix (a path that matches nothing, no fitted head) raise `UsageError` (re-exported
here) with a one-line message.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.app.runner import make_stage, run_steps
from pipeline.engine.config import ConfigError, PipelineConfig, load_params, resolve_saved
from pipeline.engine.errors import UsageError
from pipeline.engine.progress import Progress
from pipeline.engine.stage import STAGES
from pipeline.engine.store import Store
from pipeline.method.heads import FittedHead, resolve_model
from pipeline.method.misalignment import object_cosines
from pipeline.method.rows import latest_model

log = logging.getLogger(__name__)


def head_pipeline(
    head: FittedHead, runtime: dict[str, Any] | None = None, params: dict[str, Any] | None = None
) -> PipelineConfig:
    """The pipeline configuration the head's features were made with (so predict computes the same),
    read as data: settings that name files to read or code to run (models, weight files, a text
    encoder, groundingdino-py's config file) come from this machine's `params` (params.yaml), never
    from the head folder; its features fingerprint then says whether the result is the same."""
    return _saved_pipeline(head, runtime, params)[0]


def _saved_pipeline(
    head: FittedHead, runtime: dict[str, Any] | None, params: dict[str, Any] | None
) -> tuple[PipelineConfig, list[str]]:
    """`head_pipeline`, and the head's saved settings it did not use (resolve_saved)."""
    try:
        return resolve_saved(head.config.get("pipeline"), params, runtime)
    except ConfigError as e:
        raise UsageError(f"head {head.name}: its saved configuration is not valid: {e}") from e


def predict(
    paths: Iterable[str | Path],
    model: str | Path | None = None,
    data_dir: str | Path = "data",
    runtime: dict[str, Any] | None = None,
    progress: Callable[[str], Progress | None] | None = None,
    params: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Score every file under `paths` (folders, globs, CSV/Parquet lists, image files).

    Returns one dict per input file: image_id, path, score (calibrated P(fake)), decision ("fake" |
    "real" at the calibrated threshold), threshold, head (its folder under models/), caption, objects
    (phrase, box, score, cosine of crop and phrase), status and error. Files that cannot be scored get
    status "error" and the reason. `model`: a head folder or its name under models/ (default: the head
    the last `item fit` ran, models/LATEST). `params` (default: ./params.yaml when present; `{}` for
    none) gives only the settings a head never supplies: where this machine's models are (see
    `head_pipeline`).
    """
    store = Store(data_dir)
    paths = list(paths)
    try:  # a path or glob that matches nothing, no fitted head: one UsageError line for a script to print
        head = choose_head(store, model)
        local = load_params(Path("params.yaml")) if params is None else params
        config, not_taken = _saved_pipeline(head, runtime, local)
        options = {"ingest": {"inputs": paths, "dataset": "predict", "unassigned": True}}
        sources = make_stage("ingest", config, store, **options["ingest"]).sources()
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    if not sources:
        raise UsageError(f"no files to score under {', '.join(str(p) for p in paths)}")
    [(ingest, _)] = run_steps(["ingest"], config, store, progress, options=options)
    ids = ingest.image_ids(sources)
    wanted = {i for i in ids if i is not None}
    distance_fp = make_stage("distance", config, store).fingerprint
    if distance_fp != head.config["features"]["fingerprint"]:
        why = (
            f"; it names {', '.join(not_taken)}, which a head never supplies (files to read, code to run): "
            "set them in your params.yaml if you trust them" if not_taken else ""
        )
        raise UsageError(
            f"head {head.name} was trained on distance features {head.config['features']['fingerprint']} "
            f"but its saved configuration gives {distance_fp} here{why}"
        )
    stages = {stage.name: stage for stage, _ in run_steps(STAGES.feature_stages(), config, store, progress, ids=wanted)}
    table = _collect(store, stages, wanted)
    scored = _score(head, table)
    by_id = {row["image_id"]: row for row in scored.iter_rows(named=True)}
    rows = [
        _output_row(source.path, image_id, by_id.get(image_id)) for source, image_id in zip(sources, ids, strict=True)
    ]
    return decide(rows, head.calibration["threshold"], head.name)


def choose_head(store: Store, model: str | Path | None = None) -> FittedHead:
    """The head `model` names (a folder, or a folder name under models/), else the default: the head
    the last `item fit` ran (`models/LATEST`)."""
    return load_head(resolve_model(store.models, model) if model else latest_model(store))


def load_head(directory: Path) -> FittedHead:
    """A fitted ITEM head from its folder, or one clear error saying what the folder lacks."""
    if not (directory / "config.json").is_file():
        raise UsageError(f"--model {directory}: no fitted head there (a head folder under models/ holds config.json)")
    head = FittedHead(directory)
    if "pipeline" not in head.config:
        raise UsageError(
            f"--model {directory}: a baseline ({head.config.get('method', '?')}), not an ITEM head: predict "
            "scores with heads made by `item fit`"
        )
    return head


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


def decide(rows: list[dict[str, Any]], threshold: float, head: str) -> list[dict[str, Any]]:
    """Fill `decision` from `score` at `threshold`; every row names the head and the threshold used."""
    out = []
    for row in rows:
        row = {**row, "threshold": threshold, "head": head}
        if row["score"] is not None:
            row["decision"] = "fake" if row["score"] >= threshold else "real"
        out.append({k: row[k] for k in ROW_SCHEMA} | {k: v for k, v in row.items() if k not in ROW_SCHEMA})
    return out  # every format in one column order: ROW_SCHEMA's (threshold and head after decision)


OUTPUT_FORMATS = (".csv", ".json", ".jsonl", ".parquet")
OBJECT = pl.Struct({"phrase": pl.String, "box": pl.List(pl.Float64), "score": pl.Float64, "cosine": pl.Float64})
ROW_SCHEMA = {
    "image_id": pl.String,
    "path": pl.String,
    "score": pl.Float64,
    "decision": pl.String,
    "threshold": pl.Float64,
    "head": pl.String,
    "caption": pl.String,
    "objects": pl.List(OBJECT),
    "status": pl.String,
    "error": pl.String,
}


def check_output(out: str | Path, data_dir: str | Path | None = None) -> None:
    """Refuse an output path predict cannot write, before any work: `-` (JSON lines on stdout) or a
    file ending in .csv, .json, .jsonl or .parquet whose folder exists or can be made and takes a
    file, and never inside the store's own folders (manifest, sources, features, models, reports)."""
    if str(out) == "-":
        return
    out = Path(out)
    if data_dir is not None:
        target = out.resolve()
        for folder in Store(data_dir).own_folders():
            if target.is_relative_to(folder.resolve()):
                raise UsageError(f"--out {out} is inside the data dir's {folder.name}/ folder: write it elsewhere")
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise UsageError(f"--out must end in {', '.join(OUTPUT_FORMATS)} (or be - for stdout), got {out.name}")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: give a file name")
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK) or not _takes_a_file(parent):
        raise UsageError(f"--out {out}: cannot write under {parent}")


def _takes_a_file(folder: Path) -> bool:
    """Whether a file can be created in `folder` (os.access says yes to root in /proc and /sys)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".item-out-check-"):
            return True
    except OSError:
        return False


def rows_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The rows with an explicit schema (an error row anywhere, first or last, has the same columns)."""
    return pl.DataFrame(rows, schema=ROW_SCHEMA)


def write_rows(rows: list[dict[str, Any]], out: str | Path) -> None:
    """By the name: CSV (objects as JSON text), JSON, JSON lines, Parquet, or `-` (JSON lines on stdout)."""
    check_output(out)
    if str(out) == "-":
        sys.stdout.write("".join(json.dumps(r) + "\n" for r in rows))
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    tmp = out.with_name(f".{out.name}.tmp")
    if suffix == ".json":
        tmp.write_text(json.dumps(rows, indent=2) + "\n")
    elif suffix == ".jsonl":
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".csv":
        frame = rows_frame(rows).with_columns(
            pl.Series("objects", [json.dumps(r["objects"]) for r in rows], dtype=pl.String)
        )
        frame.write_csv(tmp)
    else:
        rows_frame(rows).write_parquet(tmp)
    os.replace(tmp, out)  # complete or absent
