"""ingest: folders and CSV/Parquet lists -> manifest rows keyed by the sha256 of each file.

Discovery (folder layouts, lists, globs) is `pipeline.engine.sources`. Images with no split get a
deterministic one from their image_id. Every file gets exactly one outcome: a manifest row (status
ok, or error with the reason) for a new image, or, for bytes already in the manifest, only a
`sources` row naming the extra path.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.engine.job import Job
from pipeline.engine.probe import Prober
from pipeline.engine.schemas import MANIFEST, SOURCES, STATUS_OK
from pipeline.engine.sources import LAYOUTS, Source, derived_split, discover
from pipeline.engine.stage import STAGES, RunStats, part_summary

log = logging.getLogger(__name__)


@STAGES.register("ingest")
class IngestStage(Job):
    """Hash, probe and record files; a re-run skips files already seen with the same size and mtime."""

    name = "ingest"

    def __init__(
        self,
        *args: Any,
        inputs: Iterable[str | Path] = (),
        dataset: str | None = None,
        layout: str = "auto",
        generator: str | None = None,
        split: str | None = None,
        sources: list[Source] | None = None,
        unassigned: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        LAYOUTS.get(layout)  # an unknown layout fails before any work
        # Images to score (predict) belong to no generator and no split: they must not show up in
        # group-bys or in the train/val/test splits.
        self.unassigned = unassigned
        self.given = sources
        self.paths = list(inputs)
        self.options = {"dataset": dataset, "layout": layout, "generator": generator, "split": split}

    def sources(self) -> list[Source]:
        """The files the inputs name (or the sources given), in order (a path listed twice is one file)."""
        found = self.given if self.given is not None else discover(self.paths, **self.options)
        if self.unassigned:
            found = (dataclasses.replace(s, label=None, generator=None, split=None) for s in found)
        return list({s.path: s for s in found}.values())

    def image_ids(self, sources: list[Source]) -> list[str | None]:
        """The image_id of each source path as ingest recorded it (None if not ingested)."""
        table = self.store.sources.read(["path", "image_id"])
        known = dict(zip(table.column("path").to_pylist(), table.column("image_id").to_pylist(), strict=True))
        return [known.get(s.path) for s in sources]

    def label(self) -> str:
        return "manifest"

    def summary(self) -> dict[str, Any]:
        return part_summary(self.name, self.fingerprint, self.store.manifest)

    def compute(self, stats: RunStats) -> None:
        with self.store.manifest.lock("ingest"):
            self._ingest(stats)

    def _ingest(self, stats: RunStats) -> None:
        seen = self._seen_files()
        known_ids = self.store.manifest.ids()
        todo = [s for s in self.sources() if not self._unchanged(s, seen)]
        stats.todo = len(todo)
        self.begin(len(todo))
        if not todo:
            log.debug("ingest: nothing new to ingest")
        chunk = self.runtime.chunk_size
        with Prober(self.runtime.loader_threads, self.cfg.decode_timeout, self.cfg.max_image_pixels) as prober:
            for i in range(0, len(todo), chunk):
                sources = todo[i : i + chunk]
                probed = [
                    self._manifest_row(s, r)
                    for s, r in zip(sources, prober.map([s.path for s in sources]), strict=True)
                ]
                manifest_rows = []
                for row in probed:
                    if row["image_id"] not in known_ids:
                        known_ids.add(row["image_id"])
                        manifest_rows.append(row)
                        if row["status"] == STATUS_OK:
                            stats.ok += 1
                        else:
                            stats.count_error(row["error"])
                # Manifest first: a kill between the two writes only costs re-hashing those files.
                if self.store.manifest.write(pa.Table.from_pylist(manifest_rows, schema=MANIFEST)):
                    stats.parts += 1
                self.store.sources.write(
                    pa.Table.from_pylist(
                        [self._source_row(s, r) for s, r in zip(sources, probed, strict=True)], schema=SOURCES
                    )
                )
                self.advance(len(probed))
        duplicates = stats.todo - stats.ok - stats.error
        if duplicates:
            log.info("ingest: %d file(s) repeat bytes already in the manifest (recorded in sources/)", duplicates)

    def _seen_files(self) -> dict[str, tuple[int, int]]:
        table = self.store.sources.read(["path", "n_bytes", "mtime_ns"])
        return {p: (n, m) for p, n, m in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)}

    @staticmethod
    def _unchanged(source: Source, seen: dict[str, tuple[int, int]]) -> bool:
        if source.path not in seen:
            return False
        try:
            st = os.stat(source.path)
        except OSError:
            return False
        return seen[source.path] == (st.st_size, st.st_mtime_ns)

    def _manifest_row(self, source: Source, probe: dict[str, Any]) -> dict[str, Any]:
        row = {
            "path": source.path,
            "label": source.label,
            "generator": source.generator,
            "dataset": source.dataset,
            "split": source.split,
            "caption": source.caption,
            "source_id": source.source_id,
            "perturbation": source.perturbation,
            **probe,
        }
        if row["split"] is None and not self.unassigned:
            row["split"] = derived_split(row["image_id"], self.cfg.split_fractions)
        return row

    @staticmethod
    def _source_row(source: Source, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "path": source.path,
            "image_id": row["image_id"],
            "n_bytes": row["size"],
            "mtime_ns": row["mtime_ns"],
            "label": source.label,
            "generator": source.generator,
            "dataset": source.dataset,
        }
