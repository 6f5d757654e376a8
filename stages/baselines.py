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

from pipeline.engine.config import as_dict
from pipeline.engine.errors import UsageError
from pipeline.engine.job import Job
from pipeline.engine.registry import Registry
from pipeline.engine.stage import STAGES, RunStats
from pipeline.method.evaluation import evaluate_scores
from pipeline.method.heads import CONFIG, HEADS, FittedHead, save_head, sigmoid
from pipeline.method.misalignment import unit
from pipeline.method.rows import labelled_manifest, rows_digest

log = logging.getLogger(__name__)

LEAK_AP = 0.9
FORMATS = ("JPEG", "PNG", "WEBP")

Source = Callable[["BaselinesJob"], tuple[str, pl.DataFrame, np.ndarray]]


@dataclass(frozen=True)
class Method:
    """A row of the comparison: where its features come from and how it scores them."""

    name: str
    source: Source  # -> (fingerprint of the rows read, frame with image_id, feature matrix)
    learner: str | None = None  # a head name, or None for a zero-shot score
    zero_shot: Callable[[np.ndarray], np.ndarray] | None = None


METHODS: Registry[Method] = Registry("method")


def unit32(x: np.ndarray) -> np.ndarray:
    """Unit rows as float32 (what the probes train on)."""
    return unit(x).astype(np.float32)


def _stage_rows(job: BaselinesJob, stage: str, columns: list[str]) -> tuple[str, pl.DataFrame]:
    fp = job.upstream(stage).fingerprint
    part_dir = job.store.features(stage, fp)
    if not part_dir.exists():
        raise FileNotFoundError(f"no {stage} rows under {part_dir.path}: run `item {stage}` first")
    frame = pl.from_arrow(part_dir.read(["image_id", "status", *columns])).filter(pl.col("status") == "ok")
    return fp, frame.drop("status").sort("image_id")


def image_embedding(job: BaselinesJob) -> tuple[str, pl.DataFrame, np.ndarray]:
    fp, frame = _stage_rows(job, "embed", ["image_embed"])
    return fp, frame.select("image_id"), unit32(frame["image_embed"].to_numpy())


def image_and_caption(job: BaselinesJob) -> tuple[str, pl.DataFrame, np.ndarray]:
    fp, frame = _stage_rows(job, "embed", ["image_embed", "text_embed"])
    x = np.concatenate([unit32(frame["image_embed"].to_numpy()), unit32(frame["text_embed"].to_numpy())], 1)
    return fp, frame.select("image_id"), x


def cosines(job: BaselinesJob) -> tuple[str, pl.DataFrame, np.ndarray]:
    fp, frame = _stage_rows(job, "distance", ["cos_global", "cos_local"])
    local = frame["cos_local"].fill_null(frame["cos_global"])
    return fp, frame.select("image_id"), np.stack([frame["cos_global"].to_numpy(), local.to_numpy()], 1)


def file_properties(job: BaselinesJob) -> tuple[str, pl.DataFrame, np.ndarray]:
    m = (
        pl.from_arrow(
            job.store.manifest.read(["image_id", "format", "jpeg_quality", "n_bytes", "width", "height", "status"])
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


@STAGES.register
class BaselinesJob(Job):
    """Scores `split` with each named baseline method, training it on the train split's cached rows
    first where it learns (its head is saved under models/<method>-<fingerprint>/ and reused).

    After `run`, `results` holds one evaluation result per method, in the order given.
    """

    name = "baselines"
    inputs = ("embed", "distance", "manifest")
    step = False

    def __init__(self, *args: Any, methods: list[str] = (), split: str = "test", **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.methods = [METHODS.get(m) for m in methods]  # an unknown name fails before any work
        self.split = split
        self.results: list[dict[str, Any]] = []

    def label(self) -> str:
        return ",".join(m.name for m in self.methods)

    def compute(self, stats: RunStats) -> None:
        self.begin(len(self.methods))
        for method in self.methods:
            model_name, rows, scores = self.scores_for(method)
            result = evaluate_scores(model_name, rows, scores, 0.5)
            result["method"] = method.name
            self.results.append(result)
            stats.ok += len(rows)
            self.advance(1)

    def scores_for(self, method: Method) -> tuple[str, pl.DataFrame, np.ndarray]:
        """Train the method on the train split if it learns (or reuse its saved head); score the split.

        Returns (model name, the scored rows with labels and generators, P(fake) per row).
        """
        source_fp, ids, x = method.source(self)
        frame = (
            ids.with_row_index("_x").join(labelled_manifest(self.store), on="image_id", how="inner").sort("image_id")
        )
        fit_cfg = self.pipeline.stage("fit")
        test = frame.filter(pl.col("split") == self.split)
        if test.is_empty() and self.split == "test":
            test = frame.filter(pl.col("split") == "val")
        if method.learner is None:
            return method.name, test, method.zero_shot(x[test["_x"].to_numpy()])
        cfg = replace(fit_cfg, head=method.learner)
        train = frame.filter(pl.col("split") == fit_cfg.train_split)
        identity = {"method": method.name, "source": source_fp, "head": cfg.identity(), "train_set": rows_digest(train)}
        fp = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
        model_dir = self.store.models / f"{method.name}-{fp}"
        if not (model_dir / CONFIG).exists():
            labels = train["label"].to_numpy()
            if len(set(labels.tolist())) < 2:
                raise UsageError(f"{method.name}: the train split needs real and fake rows with features")
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


def leakage_warning(results: list[dict[str, Any]]) -> str | None:
    """A warning when the format-only probe scores AP >= LEAK_AP overall or on any one generator."""
    for r in results:
        if r["method"] != "format":
            continue
        leaks = [g for g, m in sorted(r["generators"].items()) if (m.get("ap") or 0) >= LEAK_AP]
        ap = r["all"].get("ap")
        if (ap is not None and ap >= LEAK_AP) or leaks:
            where = f"on {', '.join(leaks)}" if leaks else "overall"
            return (
                f"WARNING: the format-only probe reaches AP >= {100 * LEAK_AP:.0f} {where} (overall AP "
                f"{100 * (ap or 0):.1f}) from file format, JPEG quality, size and resolution alone: real and fake "
                "images there differ in how they are stored, and any detector can score by compression instead "
                "of content."
            )
    return None
