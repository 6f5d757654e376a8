"""robustness: AP and ACC of a fitted head on every perturbation and level of the grid (Fig. 4), next
to the same source images clean. Reads derived images' distance rows (after `item perturb` and
`item run`); writes reports/robustness.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from pipeline.engine.job import Job
from pipeline.engine.stage import STAGES, RunStats
from pipeline.engine.store import write_json
from pipeline.method.evaluation import evaluate_scores
from pipeline.method.heads import FittedHead
from pipeline.method.perturbations import KINDS, label
from pipeline.method.rows import labelled_rows, latest_model, to_numpy


@STAGES.register
class RobustnessJob(Job):
    """After `run`, `result` is {"clean": metrics | None, "grid": {kind: [(level, metrics), ...]}},
    or None when no derived image has been scored yet."""

    name = "robustness"
    inputs = ("fit",)
    step = False

    def __init__(self, *args: Any, model: Path | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.model = model
        self.result: dict[str, Any] | None = None

    def label(self) -> str:
        return (self.model or latest_model(self.store)).name

    def compute(self, stats: RunStats) -> None:
        head = FittedHead(self.model or latest_model(self.store))
        distance_fp = head.config["features"]["fingerprint"]
        derived = labelled_rows(self.store, distance_fp, perturbation="*")
        if derived.is_empty():
            return
        sources = derived["source_id"].unique().to_list()
        clean = labelled_rows(self.store, distance_fp).filter(pl.col("image_id").is_in(sources))

        def score(rows: pl.DataFrame) -> dict[str, Any]:
            x = head.features(to_numpy(rows["d_global"]), to_numpy(rows["d_local"]))
            return evaluate_scores(head.name, rows, head.predict_proba(x), 0.5)["all"]

        result: dict[str, Any] = {"clean": score(clean) if not clean.is_empty() else None, "grid": {}}
        for kind, levels in KINDS.items():
            for level in levels:
                rows = derived.filter(pl.col("perturbation") == label(kind, level))
                if not rows.is_empty():
                    result["grid"].setdefault(kind, []).append((level, score(rows)))
        stats.ok = derived.height
        self.result = result
        self.store.reports.mkdir(parents=True, exist_ok=True)
        write_json(self.store.reports / "robustness.json", result)
