"""fit: train a head on cached distance rows (no model stage runs), calibrate it on the validation
split, and save it under models/<head>-<fingerprint>/."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.engine.config import ConfigError, as_dict
from pipeline.engine.errors import UsageError
from pipeline.engine.job import Job
from pipeline.engine.stage import STAGES, RunStats
from pipeline.method.heads import CONFIG, HEADS, HeadConfig, calibrate, feature_matrix, save_head
from pipeline.method.rows import LATEST, labelled_rows, latest_model, rows_digest, to_numpy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig(HeadConfig):
    """The head (pipeline.method.heads.HeadConfig) and the rows it is trained and calibrated on."""

    train_split: str = "train"
    calibration_split: str = "val"
    train_generators: tuple[str, ...] = ()  # train (and calibrate) on these generators only; empty: all
    train_datasets: tuple[str, ...] = ()  # ... and/or these datasets only

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_split == self.calibration_split:
            raise ConfigError("fit.calibration_split must differ from fit.train_split")


@STAGES.register
class FitStage(Job):
    """Fits the configured head on the training split; a head with the same fingerprint is reused."""

    name = "fit"
    inputs = ("distance", "manifest")
    config_class = FitConfig

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        HEADS.get(self.cfg.head)  # an unknown head fails before any work, listing the known ones

    @cached_property
    def distance_fp(self) -> str:
        return self.upstream("distance").fingerprint

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

    def summary(self) -> dict[str, Any]:
        return {"stage": self.name, "model": latest_model(self.store).name}

    @property
    def model_dir(self) -> Path:
        return self.store.models / f"{self.cfg.head}-{self.fingerprint}"

    def matrix(self, rows: pl.DataFrame) -> np.ndarray:
        return feature_matrix(
            to_numpy(rows["d_global"]), to_numpy(rows["d_local"]), self.cfg.features, self.cfg.w1, self.cfg.w2
        )

    def compute(self, stats: RunStats) -> None:
        start = time.perf_counter()
        target = self.model_dir
        if (target / CONFIG).exists():
            log.debug("fit [%s]: head already fitted at %s", self.fingerprint, target)
        else:
            train = self.vectors(self.cfg.train_split)
            labels = train["label"].to_numpy()
            if len(set(labels.tolist())) < 2:
                raise UsageError(
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
            log.debug(
                "fit [%s]: %s trained on %d rows in %.1fs -> %s",
                self.fingerprint,
                self.cfg.head,
                len(labels),
                time.perf_counter() - start,
                target,
            )
        (self.store.models / LATEST).write_text(target.name + "\n")
