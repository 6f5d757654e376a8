"""Baselines from the same cache: the paper's comparison (Tables I and II) on the user's own data.

Every method trains, where it trains at all, from cached rows only; none starts a model stage.
- `item`: the ITEM head (the `fit` stage's configured head on D = w1*D_g + w2*D_l);
- `unifd`: UniversalFakeDetect's linear probe: one linear layer (logistic regression) on the
  L2-normalised CLIP image embedding alone;
- `defake`: DE-FAKE's idea: the image and caption embeddings (each L2-normalised) concatenated into
  an MLP (the same MLP and training as ITEM's head), without the misalignment vector or objects;
- `cosine`: zero-shot, no training: score (1 - cos(image, caption)) / 2, so a less aligned image
  scores as more fake (ACC at 0.5 means cos < 0); `cosine-local` the same with the mean object
  cosine (the global one where no object was grounded);
- `format`: not a detector: logistic regression on file format, JPEG quality, file size and
  resolution alone. It measures how much a dataset leaks its labels through compression; when it
  reaches AP >= 0.9 the comparison prints a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import polars as pl

from pipeline.config import PipelineConfig, as_dict
from pipeline.heads import CONFIG, HEADS, FittedHead, save_head, sigmoid
from pipeline.registry import Registry
from pipeline.store import Store

log = logging.getLogger(__name__)

LEAK_AP = 0.9
FORMATS = ("JPEG", "PNG", "WEBP")

Source = Callable[[PipelineConfig, Store], tuple[str, pl.DataFrame, np.ndarray]]


@dataclass(frozen=True)
class Method:
    """A row of the comparison: where its features come from and how it scores them."""

    name: str
    source: Source  # -> (fingerprint of the rows read, frame with image_id, feature matrix)
    learner: str | None = None  # a head name, or None for a zero-shot score
    zero_shot: Callable[[np.ndarray], np.ndarray] | None = None


METHODS: Registry[Method] = Registry("method")


def unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def _stage_rows(config: PipelineConfig, store: Store, stage: str, columns: list[str]) -> tuple[str, pl.DataFrame]:
    from pipeline.runner import make_stage

    fp = make_stage(stage, config, store).fingerprint
    part_dir = store.features(stage, fp)
    if not part_dir.exists():
        raise FileNotFoundError(f"no {stage} rows under {part_dir.path}: run `item {stage}` first")
    frame = pl.from_arrow(part_dir.read(["image_id", "status", *columns])).filter(pl.col("status") == "ok")
    return fp, frame.drop("status").sort("image_id")


def image_embedding(config: PipelineConfig, store: Store) -> tuple[str, pl.DataFrame, np.ndarray]:
    fp, frame = _stage_rows(config, store, "embed", ["image_embed"])
    return fp, frame.select("image_id"), unit_rows(frame["image_embed"].to_numpy())


def image_and_caption(config: PipelineConfig, store: Store) -> tuple[str, pl.DataFrame, np.ndarray]:
    fp, frame = _stage_rows(config, store, "embed", ["image_embed", "text_embed"])
    x = np.concatenate([unit_rows(frame["image_embed"].to_numpy()), unit_rows(frame["text_embed"].to_numpy())], 1)
    return fp, frame.select("image_id"), x


def cosines(config: PipelineConfig, store: Store) -> tuple[str, pl.DataFrame, np.ndarray]:
    fp, frame = _stage_rows(config, store, "distance", ["cos_global", "cos_local"])
    local = frame["cos_local"].fill_null(frame["cos_global"])
    return fp, frame.select("image_id"), np.stack([frame["cos_global"].to_numpy(), local.to_numpy()], 1)


def file_properties(config: PipelineConfig, store: Store) -> tuple[str, pl.DataFrame, np.ndarray]:
    m = (
        pl.from_arrow(
            store.manifest.read(["image_id", "format", "jpeg_quality", "n_bytes", "width", "height", "status"])
        )
        .filter(pl.col("status") == "ok")
        .sort("image_id")
    )
    fmt = m["format"].fill_null("").to_list()
    cols = [[float(f == name) for f in fmt] for name in FORMATS]
    cols.append([float(f not in FORMATS) for f in fmt])
    quality = m["jpeg_quality"].fill_null(0).to_numpy() / 100.0
    pixels = (m["width"] * m["height"]).to_numpy().astype(np.float64)
    nbytes = m["n_bytes"].to_numpy().astype(np.float64)
    x = np.stack(
        [
            *map(np.array, cols),
            quality,
            np.log2(nbytes + 1) / 20,
            np.log2(m["width"].to_numpy() + 1) / 12,
            np.log2(m["height"].to_numpy() + 1) / 12,
            np.log2(8 * nbytes / np.maximum(pixels, 1) + 1) / 4,
        ],
        1,
    )
    digest = hashlib.sha256(str(len(m)).encode() + "".join(m["image_id"].to_list()).encode()).hexdigest()[:12]
    return f"manifest-{digest}", m.select("image_id"), x.astype(np.float32)


METHODS.register("unifd")(Method("unifd", image_embedding, learner="logreg"))
METHODS.register("defake")(Method("defake", image_and_caption, learner="mlp"))
METHODS.register("cosine")(Method("cosine", cosines, zero_shot=lambda x: (1.0 - x[:, 0]) / 2.0))
METHODS.register("cosine-local")(Method("cosine-local", cosines, zero_shot=lambda x: (1.0 - x[:, 1]) / 2.0))
METHODS.register("format")(Method("format", file_properties, learner="logreg"))


def labelled(store: Store) -> pl.DataFrame:
    """Labelled original images (derived, perturbed copies are for the robustness grid only)."""
    m = pl.from_arrow(store.manifest.read(["image_id", "label", "generator", "dataset", "split", "perturbation"]))
    return m.filter(pl.col("label").is_not_null() & pl.col("perturbation").is_null()).drop("perturbation")


def _digest(frame: pl.DataFrame) -> str:
    digest = hashlib.sha256()
    for image_id, label in frame.select("image_id", "label").sort("image_id").iter_rows():
        digest.update(f"{image_id}:{label};".encode())
    return digest.hexdigest()[:16]


def scores_for(
    method: Method, config: PipelineConfig, store: Store, split: str
) -> tuple[str, pl.DataFrame, np.ndarray]:
    """Train the method on the train split if it learns (or reuse its saved head); score `split`.

    Returns (model name, the scored rows with labels and generators, P(fake) per row).
    """
    source_fp, ids, x = method.source(config, store)
    frame = ids.with_row_index("_x").join(labelled(store), on="image_id", how="inner").sort("image_id")
    fit_cfg = config.stage("fit")
    test = frame.filter(pl.col("split") == split)
    if test.is_empty() and split == "test":
        test = frame.filter(pl.col("split") == "val")
    if method.learner is None:
        return method.name, test, method.zero_shot(x[test["_x"].to_numpy()])
    cfg = replace(fit_cfg, head=method.learner)
    train = frame.filter(pl.col("split") == fit_cfg.train_split)
    identity = {"method": method.name, "source": source_fp, "head": cfg.identity(), "train_set": _digest(train)}
    fp = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    model_dir = store.models / f"{method.name}-{fp}"
    if not (model_dir / CONFIG).exists():
        labels = train["label"].to_numpy()
        if len(set(labels.tolist())) < 2:
            raise ValueError(f"{method.name}: the train split needs real and fake rows with features")
        head = HEADS.get(method.learner)(cfg)
        head.fit(x[train["_x"].to_numpy()], labels)
        save_head(
            model_dir,
            head,
            {
                "fit": as_dict(cfg),
                "identity": identity,
                "method": method.name,
                "features": {"source": source_fp},
                "n_train": int(len(labels)),
            },
        )
        log.info("%s: trained on %d cached rows -> %s", method.name, len(labels), model_dir)
    fitted = FittedHead(model_dir)
    return model_dir.name, test, sigmoid(fitted.head.logits(x[test["_x"].to_numpy()]))


def compare(methods: list[str], config: PipelineConfig, store: Store, split: str = "test") -> list[dict[str, Any]]:
    """One evaluation result per method (the ITEM head via the fit stage), in the order given."""
    from pipeline.runner import run_stage
    from stages.evaluate import EvaluateStage, evaluate_scores
    from stages.fit import FitStage

    results = []
    for name in methods:
        if name == "item":
            run_stage("fit", config, store)
            stage = EvaluateStage(config, store, models=[FitStage(config, store).model_dir])
            stage.run()
            result = dict(stage.result)
        else:
            model_name, rows, scores = scores_for(METHODS.get(name), config, store, split)
            result = evaluate_scores(model_name, rows, scores, 0.5)
        result["method"] = name
        result["model"], result["model_dir"] = name, result["model"]
        results.append(result)
    _write_reports(results, store)
    return results


def _write_reports(results: list[dict[str, Any]], store: Store) -> None:
    from pipeline.metrics import LABELS, table

    store.reports.mkdir(parents=True, exist_ok=True)
    for metric in ("acc", "ap"):
        (store.reports / f"comparison_{metric}.csv").write_text(table(results, metric, markdown=False) + "\n")
        (store.reports / f"comparison_{metric}.md").write_text(f"### {LABELS[metric]}\n\n{table(results, metric)}\n")
    summary = {r["method"]: {"model": r["model_dir"], "all": r["all"], "mean": r["mean"]} for r in results}
    (store.reports / "comparison.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def leakage_warning(results: list[dict[str, Any]]) -> str | None:
    for r in results:
        ap = r["all"].get("ap")
        if r["method"] == "format" and ap is not None and ap >= LEAK_AP:
            return (
                f"WARNING: the format-only probe reaches AP {100 * ap:.1f} from file format, JPEG quality, size "
                "and resolution alone: this dataset's real and fake images differ in how they are stored, and "
                "any detector can score by compression instead of content."
            )
    return None
