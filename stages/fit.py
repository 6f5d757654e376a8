"""fit: train a head on cached distance rows (no model stage runs), calibrate it on the validation
split, and save it under models/<head>-<fingerprint>/."""

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
from pipeline.heads import CONFIG, HEADS, calibrate, feature_matrix, save_head
from pipeline.stage import RunStats, Stage
from stages import STAGES

log = logging.getLogger(__name__)

LATEST = "LATEST"


def labelled_rows(
    store,
    distance_fp: str,
    split: str | None = None,
    vectors: bool = True,
    perturbation: str | None = None,
    generators: tuple[str, ...] = (),
    datasets: tuple[str, ...] = (),
) -> pl.DataFrame:
    """Labelled distance rows with status ok joined to the manifest, ordered by image_id.

    Args:
        split: one split, or all.
        vectors: read D_g and D_l (False: ids, labels, generators and splits only, for fingerprints).
        perturbation: None for original images only, "*" for every derived image, or one ("jpeg:50").
        generators, datasets: keep only these (empty: all), e.g. to train on one generator.
    """
    distance = store.features("distance", distance_fp)
    if not distance.exists():
        raise FileNotFoundError(f"no distance rows under {distance.path}: run `item distance` first")
    keys = pl.from_arrow(distance.current_keys()).filter(pl.col("status") == "ok").drop("status")
    m = pl.from_arrow(
        store.manifest.read(["image_id", "label", "generator", "dataset", "split", "source_id", "perturbation"])
    )
    rows = keys.join(m, on="image_id", how="inner").filter(pl.col("label").is_not_null())
    if perturbation is None:
        rows = rows.filter(pl.col("perturbation").is_null())
    elif perturbation != "*":
        rows = rows.filter(pl.col("perturbation") == perturbation)
    else:
        rows = rows.filter(pl.col("perturbation").is_not_null())
    if split is not None:
        rows = rows.filter(pl.col("split") == split)
    if generators:
        rows = rows.filter(pl.col("generator").is_in(list(generators)))
    if datasets:
        rows = rows.filter(pl.col("dataset").is_in(list(datasets)))
    if vectors:
        vec = pl.from_arrow(distance.read(["image_id", "d_global", "d_local"], ids=rows["image_id"].to_list()))
        rows = rows.join(vec, on="image_id", how="inner")
    return rows.sort("image_id")


def to_numpy(column: pl.Series) -> np.ndarray:
    return column.to_numpy().astype(np.float32)


def rows_digest(rows: pl.DataFrame) -> str:
    digest = hashlib.sha256()
    for image_id, label in rows.select("image_id", "label").iter_rows():
        digest.update(f"{image_id}:{label};".encode())
    return digest.hexdigest()[:16]


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
    def rows(self) -> pl.DataFrame:
        return labelled_rows(
            self.store,
            self.distance_fp,
            vectors=False,
            generators=self.cfg.train_generators,
            datasets=self.cfg.train_datasets,
        )

    def split(self, name: str) -> pl.DataFrame:
        """Ids and labels of one split (no vectors)."""
        return self.rows.filter(pl.col("split") == name)

    def vectors(self, name: str) -> pl.DataFrame:
        """The rows of one split with their D_g and D_l."""
        return labelled_rows(
            self.store, self.distance_fp, name, generators=self.cfg.train_generators, datasets=self.cfg.train_datasets
        )

    def identity(self) -> dict[str, Any]:
        return {
            "stage": self.name,
            "version": self.version,
            "config": self.cfg.identity(),
            "inputs": {"distance": self.distance_fp},
            "train_set": rows_digest(self.split(self.cfg.train_split)),
            "calibration_set": rows_digest(self.split(self.cfg.calibration_split)),
        }

    @property
    def model_dir(self) -> Path:
        return self.store.models / f"{self.cfg.head}-{self.fingerprint}"

    def matrix(self, rows: pl.DataFrame) -> np.ndarray:
        return feature_matrix(
            to_numpy(rows["d_global"]), to_numpy(rows["d_local"]), self.cfg.features, self.cfg.w1, self.cfg.w2
        )

    def run(
        self,
        ids: Iterable[str] | None = None,
        executor: Executor | None = None,
        progress: Callable[[int], None] | None = None,
        retry_errors: bool = False,
    ) -> RunStats:
        start = time.perf_counter()
        stats = RunStats(self.name, self.fingerprint)
        target = self.model_dir
        if (target / CONFIG).exists():
            log.info("fit [%s]: head already fitted at %s", self.fingerprint, target)
        else:
            train = self.vectors(self.cfg.train_split)
            labels = train["label"].to_numpy()
            if len(set(labels.tolist())) < 2:
                raise ValueError(
                    f"fit: the {self.cfg.train_split!r} split needs labelled real and fake rows "
                    f"(has {len(labels)} row(s), classes {sorted(set(labels.tolist()))})"
                )
            stats.todo = len(labels)
            head = HEADS.get(self.cfg.head)(self.cfg)
            head.fit(self.matrix(train), labels)
            val = self.vectors(self.cfg.calibration_split)
            calibration = calibrate(head, self.matrix(val), val["label"].to_numpy())
            save_head(
                target,
                head,
                {
                    "fit": as_dict(self.cfg),
                    "identity": self.identity(),
                    "calibration": calibration,
                    "features": {"stage": "distance", "fingerprint": self.distance_fp},
                    "pipeline": {
                        "profile": self.pipeline.profile,
                        "stages": {k: as_dict(v) for k, v in self.pipeline.stages.items()},
                    },
                    "in_dim": int(train["d_global"].dtype.size),
                    "n_train": int(len(labels)),
                    "n_fake": int(labels.sum()),
                    "seconds": round(time.perf_counter() - start, 3),
                },
            )
            stats.ok = len(labels)
            log.info(
                "fit [%s]: %s trained on %d rows in %.1fs -> %s",
                self.fingerprint,
                self.cfg.head,
                len(labels),
                time.perf_counter() - start,
                target,
            )
        (self.store.models / LATEST).write_text(target.name + "\n")
        stats.seconds = time.perf_counter() - start
        return stats
