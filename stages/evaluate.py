"""evaluate: ACC at 0.5 and AP (scikit-learn) of a fitted head, overall and per generator."""

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
from pipeline.heads import feature_matrix, load_head
from pipeline.stage import RunStats, Stage
from stages import STAGES
from stages.fit import LATEST, labelled_rows, to_numpy

log = logging.getLogger(__name__)


def metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """ACC at `threshold` and average precision; AP is null when only one class is present."""
    from sklearn.metrics import accuracy_score, average_precision_score

    out: dict[str, Any] = {"n": int(len(labels)), "n_fake": int(labels.sum())}
    out["acc"] = float(accuracy_score(labels, scores >= threshold)) if len(labels) else None
    out["ap"] = float(average_precision_score(labels, scores)) if len(set(labels.tolist())) == 2 else None
    return out


def latest_model(store) -> Path:
    marker = store.models / LATEST
    if not marker.exists():
        raise FileNotFoundError(f"no fitted head in {store.models}: run `item fit` first")
    return store.models / marker.read_text().strip()


@STAGES.register("evaluate")
class EvaluateStage(Stage):
    """Scores the evaluation split with a head and writes metrics.json beside it and in reports/."""

    name = "evaluate"
    inputs = ("fit",)

    def __init__(self, *args: Any, model: Path | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.model = model

    def run(
        self,
        ids: Iterable[str] | None = None,
        executor: Executor | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> RunStats:
        start = time.perf_counter()
        model_dir = Path(self.model) if self.model else latest_model(self.store)
        head = load_head(model_dir)
        fit = head.config["fit"]
        distance_fp = head.config["features"]["fingerprint"]
        split = self.cfg.split
        rows = labelled_rows(self.store, distance_fp, split)
        if rows.is_empty() and split == "test":
            split, rows = "val", labelled_rows(self.store, distance_fp, "val")
        if rows.is_empty():
            raise ValueError(f"evaluate: no labelled rows in split {self.cfg.split!r} for features {distance_fp}")
        key = _evaluation_key(model_dir.name, split, self.cfg.threshold, rows)
        cached = model_dir / "metrics.json"
        if cached.exists() and json.loads(cached.read_text()).get("key") == key:
            self.result = json.loads(cached.read_text())
            log.info("evaluate: %s on %s is up to date", model_dir.name, split)
            return RunStats(self.name, model_dir.name, seconds=time.perf_counter() - start)
        x = feature_matrix(to_numpy(rows["d_global"]), to_numpy(rows["d_local"]), fit["features"], fit["w1"], fit["w2"])
        scores = head.predict_proba(x)
        labels = rows["label"].to_numpy().astype(np.int64)
        result = {
            "key": key,
            "model": model_dir.name,
            "split": split,
            "threshold": self.cfg.threshold,
            "all": metrics(labels, scores, self.cfg.threshold),
            "generators": {},
        }
        gens = rows["generator"].fill_null("(none)").to_numpy()
        for g in sorted(set(gens.tolist())):
            sel = gens == g
            result["generators"][g] = metrics(labels[sel], scores[sel], self.cfg.threshold)
        self._write(model_dir, result)
        self.result = result
        stats = RunStats(self.name, model_dir.name, todo=len(labels), ok=len(labels))
        stats.seconds = time.perf_counter() - start
        return stats

    def _write(self, model_dir: Path, result: dict[str, Any]) -> None:
        text = json.dumps(result, indent=2, sort_keys=True) + "\n"
        (model_dir / "metrics.json").write_text(text)
        self.store.reports.mkdir(parents=True, exist_ok=True)
        (self.store.reports / "metrics.json").write_text(text)


def _evaluation_key(model: str, split: str, threshold: float, rows: pl.DataFrame) -> str:
    """Identifies an evaluation: head, split, threshold and the exact labelled rows scored."""
    digest = hashlib.sha256(f"{model}|{split}|{threshold}|".encode())
    for image_id, label, generator in rows.select("image_id", "label", "generator").iter_rows():
        digest.update(f"{image_id}:{label}:{generator};".encode())
    return digest.hexdigest()[:16]


def format_table(result: dict[str, Any]) -> str:
    """The metrics as a Markdown table: one row per generator, then the mean over generators and all rows."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    lines = ["| generator | n | ACC@0.5 | AP |", "|---|---:|---:|---:|"]
    gens = result["generators"]
    for g, m in gens.items():
        lines.append(f"| {g} | {m['n']} | {pct(m['acc'])} | {pct(m['ap'])} |")
    aps = [m["ap"] for m in gens.values() if m["ap"] is not None]
    accs = [m["acc"] for m in gens.values() if m["acc"] is not None]
    if len(gens) > 1:
        lines.append(
            f"| mean | | {pct(float(np.mean(accs)) if accs else None)} | {pct(float(np.mean(aps)) if aps else None)} |"
        )
    a = result["all"]
    lines.append(f"| all | {a['n']} | {pct(a['acc'])} | {pct(a['ap'])} |")
    return "\n".join(lines)
