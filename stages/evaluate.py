"""evaluate: score the test split with fitted heads; per generator and mean: ACC at 0.5, AP, AUC,
real and fake accuracy, TPR at 1% and 5% FPR, and ACC at the calibrated threshold.

Pairing rule: each generator is scored on its own rows. A generator with no real rows of its own
(DiffusionForensics keeps reals per source) borrows the real rows of `<source>/real` when its name
is `<source>/<generator>`, else the real rows of its dataset that have no generator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.executors import Executor
from pipeline.heads import FittedHead
from pipeline.metrics import LABELS, METRICS, detection_metrics, mean_over, table
from pipeline.stage import RunStats, Stage
from stages import STAGES
from stages.fit import LATEST, labelled_rows, to_numpy

log = logging.getLogger(__name__)


def latest_model(store) -> Path:
    marker = store.models / LATEST
    if not marker.exists():
        raise FileNotFoundError(f"no fitted head in {store.models}: run `item fit` first")
    return store.models / marker.read_text().strip()


def all_models(store) -> list[Path]:
    return sorted(p.parent for p in store.models.glob("*/config.json")) if store.models.is_dir() else []


def generator_groups(rows: pl.DataFrame) -> dict[str, np.ndarray]:
    """Row indices scored for each generator (the module's pairing rule)."""
    gen = np.array(rows["generator"].to_list(), dtype=object)
    datasets = np.array(rows["dataset"].to_list(), dtype=object)
    real = rows["label"].to_numpy() == 0
    names = {g for g in gen.tolist() if g is not None}
    groups: dict[str, np.ndarray] = {}
    for g in sorted(names):
        if g.endswith("/real"):
            continue  # a source's shared reals are scored with each of its generators
        own = gen == g
        if not (own & real).any():
            source_reals = g.rsplit("/", 1)[0] + "/real" if "/" in g else None
            if source_reals in names:
                own = own | ((gen == source_reals) & real)
            else:
                own = own | (np.array([x is None for x in gen]) & np.isin(datasets, datasets[own]) & real)
        groups[g] = np.flatnonzero(own)
    return groups


def evaluate_scores(
    model: str,
    rows: pl.DataFrame,
    scores: np.ndarray,
    threshold: float,
    calibrated: tuple[np.ndarray, float] | None = None,
) -> dict[str, Any]:
    """Metrics of P(fake) `scores` for `rows` (label, generator, dataset), per generator, mean and all.

    `calibrated` (scores, threshold) adds ACC at the calibrated threshold.
    """
    labels = rows["label"].to_numpy().astype(np.int64)

    def score(idx: np.ndarray) -> dict[str, Any]:
        m = detection_metrics(labels[idx], scores[idx], threshold)
        if calibrated is not None:
            m["acc_calibrated"] = detection_metrics(labels[idx], calibrated[0][idx], calibrated[1])["acc"]
        return m

    groups = {g: score(idx) for g, idx in generator_groups(rows).items()}
    result = {"model": model, "all": score(np.arange(len(labels))), "generators": groups}
    names = (*METRICS, "acc_calibrated") if calibrated is not None else METRICS
    result["mean"] = {m: mean_over(groups, m) for m in names}
    return result


def evaluate_head(head: FittedHead, rows: pl.DataFrame, threshold: float) -> dict[str, Any]:
    x = head.features(to_numpy(rows["d_global"]), to_numpy(rows["d_local"]))
    calibrated = (head.predict_calibrated(x), head.calibration["threshold"])
    result = evaluate_scores(head.name, rows, head.predict_proba(x), threshold, calibrated)
    return {**result, "head": head.config["head"], "calibration": head.calibration}


@STAGES.register("evaluate")
class EvaluateStage(Stage):
    """Scores the evaluation split with one or more heads; writes tables and metrics.json to reports/."""

    name = "evaluate"
    inputs = ("fit",)

    def __init__(self, *args: Any, models: list[Path] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.models = models

    def run(
        self,
        ids: Iterable[str] | None = None,
        executor: Executor | None = None,
        progress: Callable[[int], None] | None = None,
        retry_errors: bool = False,
    ) -> RunStats:
        start = time.perf_counter()
        models = self.models or [latest_model(self.store)]
        self.results = [self._evaluate(Path(m)) for m in models]
        self.result = self.results[0]
        self._write_reports()
        stats = RunStats(
            self.name, ",".join(r["model"] for r in self.results), ok=sum(r["all"]["n"] for r in self.results)
        )
        stats.seconds = time.perf_counter() - start
        return stats

    def _evaluate(self, model_dir: Path) -> dict[str, Any]:
        head = FittedHead(model_dir)
        distance_fp = head.config["features"]["fingerprint"]
        split = self.cfg.split
        keys = labelled_rows(self.store, distance_fp, split, vectors=False)
        if keys.is_empty() and split == "test":
            split, keys = "val", labelled_rows(self.store, distance_fp, "val", vectors=False)
        if keys.is_empty():
            raise ValueError(f"evaluate: no labelled rows in split {self.cfg.split!r} for features {distance_fp}")
        key = _evaluation_key(model_dir.name, split, self.cfg.threshold, keys)
        cached = model_dir / "metrics.json"
        if cached.exists() and json.loads(cached.read_text()).get("key") == key:
            log.info("evaluate: %s on %s is up to date", model_dir.name, split)
            return json.loads(cached.read_text())
        rows = labelled_rows(self.store, distance_fp, split)
        result = {
            "key": key,
            "split": split,
            "threshold": self.cfg.threshold,
            **evaluate_head(head, rows, self.cfg.threshold),
        }
        cached.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        return result

    def _write_reports(self) -> None:
        reports = self.store.reports
        reports.mkdir(parents=True, exist_ok=True)
        summary = {r["model"]: {"split": r["split"], "all": r["all"], "mean": r["mean"]} for r in self.results}
        (reports / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        for metric in (*METRICS, "acc_calibrated"):
            (reports / f"{metric}.csv").write_text(table(self.results, metric, markdown=False) + "\n")
            (reports / f"{metric}.md").write_text(f"### {LABELS[metric]}\n\n{table(self.results, metric)}\n")


def _evaluation_key(model: str, split: str, threshold: float, rows: pl.DataFrame) -> str:
    """Identifies an evaluation: head, split, threshold and the exact labelled rows scored."""
    digest = hashlib.sha256(f"v2|{model}|{split}|{threshold}|".encode())
    for image_id, label, generator in rows.select("image_id", "label", "generator").iter_rows():
        digest.update(f"{image_id}:{label}:{generator};".encode())
    return digest.hexdigest()[:16]


def format_tables(results: list[dict[str, Any]], metrics: tuple[str, ...] = ("acc", "ap")) -> str:
    """The paper's Tables I/II layout for the given metrics, as Markdown."""
    return "\n\n".join(f"{LABELS[m]} (%), split {results[0]['split']!r}:\n{table(results, m)}" for m in metrics)
