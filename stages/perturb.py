"""perturb: the paper's robustness grid (Fig. 4) as derived images that flow through every stage.

The operations are `pipeline.method.perturbations`. Each derived image is written once (a re-run
reuses the file, so the same image_id) and ingested with `source_id` and `perturbation`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.engine.errors import UsageError
from pipeline.engine.imageio import load_rgb
from pipeline.engine.job import Job
from pipeline.engine.sources import Source
from pipeline.engine.stage import STAGES, RunStats
from pipeline.method.perturbations import GRID, KINDS, apply, label

log = logging.getLogger(__name__)


@STAGES.register
class PerturbJob(Job):
    """Writes the derived images of every ok, labelled, original image of `split` (of `generators`
    only, when given: the paper perturbed ProGAN's test images, Fig. 4; by default every generator's).

    `kinds` are the paper's grid (noise, blur, jpeg) or its variants (noise_var: the noise levels read
    as variances). After `run`, `sources` holds their ingest sources (ingest them to add them to the
    manifest).
    """

    name = "perturb"
    inputs = ("manifest",)
    step = False

    def __init__(
        self,
        *args: Any,
        kinds: tuple[str, ...] = tuple(GRID),
        split: str = "test",
        seed: int = 0,
        generators: tuple[str, ...] = (),
        out: Path | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise UsageError(f"unknown perturbation(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
        self.kinds, self.split, self.seed, self.generators = kinds, split, seed, tuple(generators)
        self.out = out or self.store.root / "derived"
        self.sources: list[Source] = []

    def label(self) -> str:
        return str(self.out)

    def compute(self, stats: RunStats) -> None:
        manifest = (
            pl.from_arrow(self.store.manifest.read())
            .filter((pl.col("status") == "ok") & (pl.col("split") == self.split) & pl.col("perturbation").is_null())
            .filter(pl.col("label").is_not_null())  # the grid is for scoring: unlabelled images have nothing to score
            .sort("image_id")
        )
        if self.generators:
            manifest = manifest.filter(pl.col("generator").is_in(list(self.generators)))
            if manifest.is_empty():
                raise UsageError(
                    f"perturb: no labelled {self.split} image of generator(s) {', '.join(self.generators)}"
                )
        max_pixels = self.pipeline.stage("ingest").max_image_pixels
        self.begin(manifest.height)
        for row in manifest.iter_rows(named=True):
            image = None
            for kind in self.kinds:
                for level in KINDS[kind]:
                    name = label(kind, level)
                    folder = self.out / name.replace(":", "-")
                    existing = list(folder.glob(f"{row['image_id']}.*")) if folder.is_dir() else []
                    if existing:
                        path = existing[0]
                    else:
                        image = image or load_rgb(row["path"], max_pixels, row["image_id"])
                        path = self._write(
                            folder, row["image_id"], *apply(image, kind, level, self.seed, row["image_id"])
                        )
                        stats.ok += 1
                    self.sources.append(
                        Source(
                            str(path),
                            row["label"],
                            row["generator"],
                            row["dataset"],
                            row["split"],
                            source_id=row["image_id"],
                            perturbation=name,
                        )
                    )
            self.advance(1)
        stats.todo = len(self.sources)

    @staticmethod
    def _write(folder: Path, image_id: str, data: bytes, ext: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{image_id}.{ext}"
        tmp = folder / f".{path.name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path
