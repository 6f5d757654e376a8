"""fit: train the head on cached distance rows (no model stage runs) and save it under models/."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.config import as_dict
from pipeline.executors import Executor
from pipeline.heads import feature_matrix, save_head, train_mlp
from pipeline.stage import RunStats, Stage
from stages import STAGES

log = logging.getLogger(__name__)

LATEST = "LATEST"


def labelled_rows(store, distance_fp: str, split: str) -> pl.DataFrame:
    """Distance rows with status ok joined to the manifest's labels, for one split, ordered by image_id."""
    distance = store.features("distance", distance_fp)
    if not distance.exists():
        raise FileNotFoundError(f"no distance rows under {distance.path}: run `item distance` first")
    d = pl.from_arrow(distance.read(["image_id", "d_global", "d_local", "status"]))
    m = pl.from_arrow(store.manifest.read(["image_id", "label", "generator", "split"]))
    rows = (
        d.filter(pl.col("status") == "ok")
        .unique("image_id", keep="first")
        .join(m, on="image_id", how="inner")
        .filter(pl.col("label").is_not_null() & (pl.col("split") == split))
        .sort("image_id")
    )
    return rows


def to_numpy(column: pl.Series) -> np.ndarray:
    return column.to_numpy().astype(np.float32)


@STAGES.register("fit")
class FitStage(Stage):
    """Fits the configured head on the training split; a head with the same fingerprint is reused."""

    name = "fit"
    inputs = ("distance", "manifest")

    @cached_property
    def distance_fp(self) -> str:
        from stages.distance import DistanceStage

        return DistanceStage(self.pipeline, self.store).fingerprint

    @cached_property
    def train(self) -> pl.DataFrame:
        return labelled_rows(self.store, self.distance_fp, self.cfg.train_split)

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        digest = hashlib.sha256()
        for image_id, label in zip(self.train["image_id"], self.train["label"], strict=True):
            digest.update(f"{image_id}:{label};".encode())
        ident["train_set"] = digest.hexdigest()[:16]
        return ident

    @property
    def model_dir(self) -> Path:
        return self.store.models / f"{self.cfg.head}-{self.fingerprint}"

    def run(
        self,
        ids: Iterable[str] | None = None,
        executor: Executor | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> RunStats:
        start = time.perf_counter()
        stats = RunStats(self.name, self.fingerprint)
        target = self.model_dir
        if (target / "model.safetensors").exists():
            log.info("fit [%s]: head already fitted at %s", self.fingerprint, target)
        else:
            labels = self.train["label"].to_numpy()
            if len(labels) == 0 or len(set(labels.tolist())) < 2:
                raise ValueError(
                    f"fit: the {self.cfg.train_split!r} split needs labelled real and fake rows "
                    f"(has {len(labels)} row(s), classes {sorted(set(labels.tolist()))})"
                )
            x = feature_matrix(
                to_numpy(self.train["d_global"]),
                to_numpy(self.train["d_local"]),
                self.cfg.features,
                self.cfg.w1,
                self.cfg.w2,
            )
            stats.todo = len(labels)
            weights = train_mlp(x, labels, self.cfg)
            save_head(
                target,
                weights,
                {
                    "head": self.cfg.head,
                    "fit": as_dict(self.cfg),
                    "identity": self.identity(),
                    "features": {"stage": "distance", "fingerprint": self.distance_fp},
                    "in_dim": int(x.shape[1]),
                    "n_train": int(len(labels)),
                    "n_fake": int(labels.sum()),
                },
            )
            stats.ok = len(labels)
            log.info(
                "fit [%s]: trained on %d rows in %.1fs -> %s",
                self.fingerprint,
                len(labels),
                time.perf_counter() - start,
                target,
            )
        (self.store.models / LATEST).write_text(target.name + "\n")
        stats.seconds = time.perf_counter() - start
        return stats
