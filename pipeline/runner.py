"""Build stages from a resolved configuration, run them, and report what the store holds."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from pipeline.config import PipelineConfig
from pipeline.stage import RunStats, Stage, error_reason_kind
from pipeline.store import Store
from stages import FEATURE_STAGES, get_stage_class

log = logging.getLogger(__name__)


def make_stage(name: str, config: PipelineConfig, store: Store, **kwargs: Any) -> Stage:
    """An instance of the named stage (`kwargs` go to stages that take extra arguments, e.g. ingest inputs)."""
    return get_stage_class(name)(config, store, **kwargs)


def run_stage(
    name: str,
    config: PipelineConfig,
    store: Store,
    progress: Callable[[int], None] | None = None,
    retry_errors: bool = False,
    executor: Any = None,
    **kwargs: Any,
) -> RunStats:
    stage = make_stage(name, config, store, **kwargs)
    return stage.run(progress=progress, retry_errors=retry_errors, executor=executor)


def write_summary(name: str, config: PipelineConfig, store: Store) -> Path:
    """A small JSON per stage (`data/dvc/<stage>.json`) that changes exactly when the stage's output does.

    DVC tracks these instead of thousands of part files: each names the fingerprint, the counts and a
    digest of the current (image_id, status) pairs.
    """
    import hashlib
    import json

    if name == "fit":
        from stages.evaluate import latest_model

        summary: dict[str, Any] = {"stage": name, "model": latest_model(store).name}
    else:
        stage = make_stage(name, config, store)
        part_dir = store.manifest if name == "ingest" else store.features(name, stage.fingerprint)
        rows = part_dir.current_keys().sort_by("image_id")
        ids, status = rows.column("image_id").to_pylist(), rows.column("status").to_pylist()
        digest = hashlib.sha256("".join(f"{i}:{s};" for i, s in zip(ids, status, strict=True)).encode())
        summary = {
            "stage": name,
            "fingerprint": stage.fingerprint,
            "rows": len(ids),
            "ok": status.count("ok"),
            "error": status.count("error"),
            "digest": digest.hexdigest()[:16],
        }
    target = store.root / "dvc" / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return target


@dataclass
class StageStatus:
    """Counts of one stage's rows under the current configuration, against the manifest."""

    stage: str
    fingerprint: str
    ok: int = 0
    error: int = 0
    missing: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    other_fingerprints: list[str] = field(default_factory=list)


def _counts(table, manifest_ids) -> tuple[int, int, int, dict[str, int]]:
    ids = table.column("image_id")
    in_manifest = table.filter(pc.is_in(ids, value_set=manifest_ids))
    unique = in_manifest.group_by("image_id").aggregate(
        [("status", "max"), ("error", "min")]
    )  # "ok" > "error": a retried id counts as ok
    status = unique.column("status_max").to_pylist()
    errors = Counter(
        error_reason_kind(e)
        for s, e in zip(status, unique.column("error_min").to_pylist(), strict=True)
        if s == "error"
    )
    ok = sum(1 for s in status if s == "ok")
    return ok, sum(errors.values()), len(manifest_ids) - len(status), dict(errors)


def status(config: PipelineConfig, store: Store) -> list[StageStatus]:
    """Per stage: ok rows, error rows by reason, and manifest images with no row yet."""
    manifest = store.manifest.read(["image_id", "status", "error"])  # errors needed: read the rows
    manifest_ids = manifest.column("image_id").combine_chunks()
    ok, err, _, errors = _counts(manifest, manifest_ids)
    report = [StageStatus("ingest", "manifest", ok, err, 0, errors)]
    for name in FEATURE_STAGES:
        stage = make_stage(name, config, store)
        fp = stage.fingerprint
        table = (
            store.features(name, fp).read(["image_id", "status", "error"])
            if store.features(name, fp).exists()
            else manifest.schema.empty_table().select(["image_id", "status", "error"])
        )
        ok, err, missing, errors = _counts(table, manifest_ids)
        others = [f for f in store.fingerprints(name) if f != fp]
        report.append(StageStatus(name, fp, ok, err, missing, errors, others))
    return report
