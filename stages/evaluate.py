"""evaluate: score the test split with fitted heads (the scoring rules are `pipeline.method.evaluation`);
write the tables (CSV + Markdown) and metrics.json to reports/, and each head's metrics.json beside it."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.engine.errors import UsageError
from pipeline.engine.job import Job
from pipeline.engine.stage import STAGES, RunStats
from pipeline.engine.store import read_json, write_json
from pipeline.method.evaluation import evaluate_head, evaluation_key
from pipeline.method.heads import CONFIG, FittedHead, describe, resolve_model, varying
from pipeline.method.metrics import LABELS, METRICS, table
from pipeline.method.rows import labelled_rows, latest_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    """Which split the evaluation reads (falls back to val when the split is empty)."""

    split: str = "test"
    threshold: float = 0.5
    heads: tuple[str, ...] = ()  # methods for the comparison table: item, unifd, defake, cosine, cosine-local, format


@STAGES.register
class EvaluateStage(Job):
    """Scores the evaluation split with one or more heads (default: the latest fitted).

    After `run`, `results` holds one result per head and `result` the first.
    """

    name = "evaluate"
    inputs = ("fit",)
    config_class = EvaluateConfig

    def __init__(self, *args: Any, models: list[Path] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.models = models

    def label(self) -> str:
        return ",".join(Path(m).name for m in self.models or [latest_model(self.store)])

    def summary(self) -> dict[str, Any] | None:
        """The first head's metrics under stable keys (`all.acc`, `mean.ap`, ...), for `dvc metrics` and
        `dvc exp show`: the head's folder name is a value, never part of a key."""
        if not getattr(self, "results", None):
            return None
        r = self.results[0]
        return {"model": r["model"], "head": r.get("head"), "split": r["split"], "all": r["all"], "mean": r["mean"]}

    def compute(self, stats: RunStats) -> None:
        models = [resolve_model(self.store.models, m) for m in self.models or [latest_model(self.store)]]
        fits = [(read_json(model / CONFIG) or {}).get("fit") or {} for model in models]
        vary = varying(fits)
        self.results = []
        for model, fit in zip(models, fits, strict=True):
            result, fresh = self._evaluate(model)
            result = {**result, "label": describe(model.name, fit, vary)}  # what tells the heads apart in a table
            self.results.append(result)
            stats.ok += result["all"]["n"] if fresh else 0  # rows scored now, not read from the cache
        self.result = self.results[0]
        self._write_reports()

    def _evaluate(self, model_dir: Path) -> tuple[dict[str, Any], bool]:
        """The head's result on the split, and whether it was computed now (False: from its metrics.json)."""
        head = FittedHead(model_dir)
        distance_fp = head.config["features"]["fingerprint"]
        split = self.cfg.split
        keys = labelled_rows(self.store, distance_fp, split, vectors=False)
        if keys.is_empty() and split == "test":
            split, keys = "val", labelled_rows(self.store, distance_fp, "val", vectors=False)
        if keys.is_empty():
            raise UsageError(f"evaluate: no labelled rows in split {self.cfg.split!r} for features {distance_fp}")
        key = evaluation_key(model_dir.name, split, self.cfg.threshold, keys)
        cached = self._metrics_file(model_dir)
        previous = read_json(cached)
        if previous is not None and previous.get("key") == key:
            log.debug("evaluate: %s on %s is up to date", model_dir.name, split)
            return previous, False
        rows = labelled_rows(self.store, distance_fp, split)
        result = {
            "key": key,
            "split": split,
            "threshold": self.cfg.threshold,
            **evaluate_head(head, rows, self.cfg.threshold),
        }
        write_json(cached, result)
        return result, True

    def _metrics_file(self, model_dir: Path) -> Path:
        """Where a head's metrics are kept: beside it when it is one of this store's heads; for a head
        folder from elsewhere (a shared one), under reports/heads/: evaluating it writes nothing into it."""
        try:
            inside = model_dir.resolve().is_relative_to(self.store.models.resolve())
        except OSError:
            inside = False
        if inside:
            return model_dir / "metrics.json"
        where = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:8]  # two outside folders, one name
        return self.store.reports / "heads" / f"{model_dir.name}-{where}" / "metrics.json"

    def _write_reports(self) -> None:
        reports = self.store.reports
        reports.mkdir(parents=True, exist_ok=True)
        summary = {
            r["model"]: {"label": r["label"], "split": r["split"], "all": r["all"], "mean": r["mean"]}
            for r in self.results
        }
        write_json(reports / "metrics.json", summary)
        labelled = labelled_results(self.results)
        for metric in (*METRICS, "acc_calibrated"):
            (reports / f"{metric}.csv").write_text(table(self.results, metric, markdown=False) + "\n")  # plain names
            (reports / f"{metric}.md").write_text(f"### {LABELS[metric]}\n\n{table(labelled, metric)}\n")


def labelled_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results with each row named by its label (folder, features, w1/w2, other knobs), for tables."""
    return [{**r, "model": r.get("label") or r["model"]} for r in results]
