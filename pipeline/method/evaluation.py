"""Scoring rules shared by evaluate, the baselines, robustness and the report.

Per generator and mean: ACC at a threshold, AP, AUC, real and fake accuracy, TPR at 1% and 5% FPR,
and ACC at the calibrated threshold.

Pairing rule: each generator is scored on its own rows. A generator with no real rows of its own
(DiffusionForensics keeps reals per source) borrows the real rows of `<source>/real` when its name
is `<source>/<generator>`, else the real rows of its dataset that have no generator.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import polars as pl

from pipeline.method.heads import FittedHead
from pipeline.method.metrics import LABELS, METRICS, detection_metrics, mean_over, table
from pipeline.method.rows import to_numpy


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


def evaluation_key(model: str, split: str, threshold: float, rows: pl.DataFrame) -> str:
    """Identifies an evaluation: head, split, threshold and the exact labelled rows scored."""
    digest = hashlib.sha256(f"v2|{model}|{split}|{threshold}|".encode())
    for image_id, label, generator in rows.select("image_id", "label", "generator").iter_rows():
        digest.update(f"{image_id}:{label}:{generator};".encode())
    return digest.hexdigest()[:16]


def format_tables(results: list[dict[str, Any]], metrics: tuple[str, ...] = ("acc", "ap")) -> str:
    """The paper's Tables I/II layout for the given metrics, as Markdown."""
    return "\n\n".join(f"{LABELS[m]} (%), split {results[0]['split']!r}:\n{table(results, m)}" for m in metrics)


# Fig. 9's panels of ITEM's D: ProGAN (a GAN), LDM (a diffusion model) and StarGAN ("deepfakes"), each
# a generator's fakes with the reals it is scored against. Names are matched on the manifest
# generator's last part (`cnndetection/progan`, `ufd/laion/ldm_200`): the first alias found wins.
FIG9_GENERATORS: dict[str, tuple[str, ...]] = {
    "ProGAN": ("progan",),
    "LDM": ("ldm_200", "ldm", "ldm_100", "ldm_200_cfg"),
    "StarGAN": ("stargan",),
}


def tsne_panels(rows: pl.DataFrame, limit: int = 1500, seed: int = 0) -> dict[str, pl.DataFrame]:
    """The rows each t-SNE panel shows: "all" (every generator pooled), then Fig. 9's generators that
    `rows` holds, each its fakes with its paired reals (the pairing rule above); when it holds none of
    them (the demo), up to three of its own generators. At most `limit` rows a panel, a seeded sample."""
    groups = generator_groups(rows)
    last = {g: g.rsplit("/", 1)[-1].lower() for g in groups}
    chosen: dict[str, str] = {}
    for title, aliases in FIG9_GENERATORS.items():
        found = next((g for alias in aliases for g in sorted(groups) if last[g] == alias), None)
        if found is not None:
            chosen[title] = found
    if not chosen:
        chosen = {g: g for g in sorted(groups)[:3]}

    def sample(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.sample(limit, seed=seed) if frame.height > limit else frame

    panels = {"all": sample(rows)}
    for title, generator in chosen.items():
        panel = rows[groups[generator]]
        if panel["label"].n_unique() == 2:  # a panel shows real against fake
            panels[title] = sample(panel)
    return panels
