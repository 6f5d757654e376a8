"""ingest: folders and CSV/Parquet lists -> manifest rows keyed by the sha256 of each file.

Discovery (folder layouts, lists, globs) is `pipeline.engine.sources`. Images with no split get a
deterministic one from their image_id. Every file gets exactly one outcome: a manifest row (status
ok, or error with the reason) for a new image, or, for bytes already in the manifest, only a
`sources` row naming the extra path.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.engine import locations
from pipeline.engine.config import ConfigError, knob
from pipeline.engine.job import Job
from pipeline.engine.probe import Prober, failed
from pipeline.engine.resume import error_kinds
from pipeline.engine.schemas import MANIFEST, SOURCES, STATUS_OK
from pipeline.engine.sources import LAYOUTS, Source, derived_split, discover
from pipeline.engine.stage import MANIFEST as MANIFEST_TABLE
from pipeline.engine.stage import STAGES, RunStats, part_summary
from pipeline.engine.store import StoreError

log = logging.getLogger(__name__)

STAMP = {"stage": "ingest"}  # in each manifest and sources part's metadata: readers check who wrote it


@dataclass(frozen=True)
class IngestConfig:
    """How files become manifest rows."""

    max_image_pixels: int = 89_478_485  # Pillow's default decompression-bomb limit
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train/val/test when no split is given
    decode_timeout: float = 60.0  # seconds per file, decoded in a worker process; 0: in-process, no limit
    # Bounds on reading one image (ingest and every stage that reads images again): bytes per file,
    # archive member or object (checked before reading or decompressing), and seconds to connect and
    # per read for HTTP(S)/S3. Past them a file gets an error row; nothing else in its batch is lost.
    max_file_bytes: int = knob(1 << 30)
    read_timeout: float = knob(60.0)

    def __post_init__(self) -> None:
        if self.max_image_pixels <= 0:
            raise ConfigError("ingest.max_image_pixels must be positive")
        size = self.max_file_bytes
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"ingest.max_file_bytes must be a whole number of bytes >= 1, got {size!r}")
        for name in ("read_timeout", "decode_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < float("inf")):
                raise ConfigError(f"ingest.{name} must be a finite number of seconds >= 0, got {value!r}")
        if self.read_timeout == 0:
            raise ConfigError("ingest.read_timeout must be > 0 seconds")
        if len(self.split_fractions) != 3 or any(not 0.0 <= f <= 1.0 for f in self.split_fractions):
            raise ConfigError(f"ingest.split_fractions must be three fractions in [0, 1], got {self.split_fractions}")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ConfigError("ingest.split_fractions must be three fractions (train, val, test) summing to 1")


    def read_limits(self) -> locations.ReadLimits:
        return locations.ReadLimits(self.max_file_bytes, self.read_timeout)


@STAGES.register
class IngestStage(Job):
    """Hash, probe and record files; a re-run skips files already seen with the same size and mtime."""

    name = "ingest"
    config_class = IngestConfig
    output = MANIFEST_TABLE

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
        """The files the inputs name (or the sources given), in order (a path listed twice is one file),
        never the store's own files (an input folder that holds the data dir: its manifest, features,
        models, reports; images kept under the data dir, like the demo's raw/, are inputs)."""
        found = self.given if self.given is not None else discover(self.paths, **self.options)
        if self.unassigned:
            found = (dataclasses.replace(s, label=None, generator=None, split=None) for s in found)
        unique = list({s.path: s for s in found}.values())
        own = [folder.resolve() for folder in self.store.own_folders()]  # once, not per file
        kept = [s for s in unique if not self._in_store(s.path, own)]
        if len(kept) < len(unique):
            log.warning(
                "ingest: %d of the store's own file(s) under %s left out: they are never inputs",
                len(unique) - len(kept), self.store.root,
            )
        return kept

    @staticmethod
    def _in_store(location: str, own: list[Path]) -> bool:
        """Whether a location is one of the store's own files (under one of its resolved `own` folders:
        tables, heads, reports, quarantine)."""
        outer = locations.split(location)[0]
        if locations.is_url(outer):
            return False
        try:
            path = Path(locations.os_path(outer)).resolve()
            return any(path.is_relative_to(folder) for folder in own)
        except (OSError, ValueError):
            return False

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
        with self.store.manifest.lock("ingest"), self.store.sources.lock("ingest"):
            self._ingest(stats)

    def _ingest(self, stats: RunStats) -> None:
        manifest = self.store.manifest.read(["image_id", "path", "label", "status"])
        seen = self._seen_files(manifest)
        known = {
            i: (p, lab)
            for i, p, lab in zip(*(manifest.column(c).to_pylist() for c in ("image_id", "path", "label")), strict=True)
        }
        changed = self._found_changed()
        todo = [s for s in self.sources() if not self._unchanged(s, seen, known, changed)]
        stats.todo = len(todo)
        self.begin(len(todo))
        if not todo:
            log.debug("ingest: nothing new to ingest")
        elsewhere: dict[str, str] = {}  # image_id -> a path of this run holding it, not the manifest's
        labelled: dict[str, dict[str, Any]] = {}  # image_id -> its row where it first has a label
        now_at: dict[str, str] = {}  # path -> the image_id it holds now (probed in this run)
        stale: set[str] = set()  # ids of error rows of paths that now hold other bytes
        chunk = self.runtime.chunk_size
        cfg = self.cfg
        with Prober(self.runtime.loader_threads, cfg.decode_timeout, cfg.max_image_pixels, cfg.read_limits()) as prober:
            for i in range(0, len(todo), chunk):
                sources = todo[i : i + chunk]
                probed = [self._manifest_row(s, r) for s, r in zip(sources, self._probe(prober, sources), strict=True)]
                manifest_rows = []
                now_at.update((s.path, r["image_id"]) for s, r in zip(sources, probed, strict=True))
                for source, row in zip(sources, probed, strict=True):
                    image_id = row["image_id"]
                    old = seen.get(source.path)
                    if old is not None and old[2] != image_id and old[3] != STATUS_OK:
                        stale.add(old[2])  # this path failed before and holds other bytes now
                    if image_id not in known:
                        known[image_id] = (source.path, row["label"])
                        manifest_rows.append(row)
                        if row["status"] == STATUS_OK:
                            stats.ok += 1
                        else:
                            stats.count_error(row["error_kind"], row["error_stage"])
                        continue
                    self._seen_again(source, row, known[image_id], elsewhere)
                    if known[image_id][1] is None and row["label"] is not None and row["status"] == STATUS_OK:
                        labelled.setdefault(image_id, row)  # scored (predict) or unlabelled first
                        known[image_id] = (known[image_id][0], row["label"])
                # Manifest first: a kill between the two writes only costs re-hashing those files.
                if self.store.manifest.write(pa.Table.from_pylist(manifest_rows, schema=MANIFEST), metadata=STAMP):
                    stats.parts += 1
                self.store.sources.write(
                    pa.Table.from_pylist(
                        [self._source_row(s, r) for s, r in zip(sources, probed, strict=True)], schema=SOURCES
                    ),
                    metadata=STAMP,
                )
                self.advance(len(probed))
        moved = self._moved(elsewhere, known, now_at, seen)
        self._label(labelled)
        self._repair(moved, stale - set(moved), wrote=stats.parts > 0)
        duplicates = stats.todo - stats.ok - stats.error
        if duplicates:
            log.info("ingest: %d file(s) repeat bytes already in the manifest (recorded in sources/)", duplicates)

    @staticmethod
    def _seen_again(source: Source, row: dict[str, Any], known: tuple[str, Any], elsewhere: dict[str, str]) -> None:
        """Bytes already in the manifest: note where else they are, and warn of a label conflict."""
        known_path, known_label = known
        image_id = row["image_id"]
        if known_path != source.path and row["status"] == STATUS_OK:
            elsewhere[image_id] = source.path
        if None not in (known_label, source.label) and known_label != source.label:
            log.warning(
                "%s has the bytes of image %s, labelled %s in the manifest and %s here: the manifest keeps %s "
                "(the first label seen); fix the label where it is wrong",
                source.path,
                image_id[:12],
                known_label,
                source.label,
                known_label,
            )

    @staticmethod
    def _moved(
        elsewhere: dict[str, str], known: dict[str, Any], now_at: dict[str, str], seen: dict[str, tuple]
    ) -> dict[str, str]:
        """Images whose manifest path no longer holds them (gone, or other bytes there now: files swapped
        or overwritten) but that are at another path, found in this run or recorded by an earlier
        ingest: image_id -> that live path."""
        holder: dict[str, str] = {}  # image_id -> a path that holds it now
        for path, (_, _, image_id, _) in seen.items():
            if now_at.get(path, image_id) == image_id:
                holder.setdefault(image_id, path)
        for path, image_id in now_at.items():
            holder[image_id] = path
        overwritten = {i for i, (p, _) in known.items() if p in now_at and now_at[p] != i}
        moved = {}
        for image_id in set(elsewhere) | overwritten:
            known_path = known[image_id][0]
            holds = now_at.get(known_path) or (seen.get(known_path) or (None, None, None))[2]
            if locations.exists(known_path) and holds in (None, image_id):
                continue
            live = elsewhere.get(image_id) or holder.get(image_id)
            if live is not None and live != known_path:
                moved[image_id] = live
        return moved

    def _probe(self, prober: Prober, sources: list[Source]) -> list[dict[str, Any]]:
        """Probe results in order; a source that discovery already failed (a name that is not UTF-8) is not read."""
        readable = [s.path for s in sources if s.error is None]
        results = iter(prober.map(readable) if readable else [])
        return [failed(s.path, s.error) if s.error is not None else next(results) for s in sources]

    def _label(self, labelled: dict[str, dict[str, Any]]) -> None:
        """Give images first seen without a label (scored by predict, or from an unlabelled folder) the
        label, generator, dataset and split of a later ingest that knows them (the path stays)."""
        if not labelled:
            return
        rows = self.store.manifest.read(ids=list(labelled)).to_pylist()
        for row in rows:
            new = labelled[row["image_id"]]
            row.update({k: new[k] for k in ("label", "generator", "dataset", "split") if new[k] is not None})
        self.store.manifest.write(pa.Table.from_pylist(rows, schema=MANIFEST), metadata=STAMP)
        log.info("ingest: %d image(s) seen before without a label now have the label of this ingest", len(rows))

    def _repair(self, moved: dict[str, str], stale: set[str], wrote: bool) -> None:
        """Point the manifest at the live path of images whose files moved, drop the error rows of paths
        that were fixed, and leave one row per key in manifest/ and sources/ (under the ingest locks)."""
        if moved:
            rows = self.store.manifest.read(ids=list(moved))
            paths = pa.array([moved[i] for i in rows.column("image_id").to_pylist()], pa.string())
            rows = rows.set_column(rows.schema.get_field_index("path"), "path", paths)
            self.store.manifest.write(rows, metadata=STAMP)
            log.info("ingest: %d image(s) found at a new path; the manifest now points there", len(moved))
        still_used = set(self.store.sources.read(["path", "image_id"]).column("image_id").to_pylist())
        stale -= still_used
        if stale:
            log.info("ingest: %d error row(s) of files that were fixed since are gone from the manifest", len(stale))
        self.store.manifest.compact(drop=stale)
        if wrote or moved:  # parts written before the error columns beside new ones: one schema to scan
            self.store.manifest.upgrade()
        self.store.sources.compact()

    def _seen_files(self, manifest: pa.Table) -> dict[str, tuple[int, int, str, str]]:
        """path -> (size, mtime_ns, image_id, status of that id in `manifest`) as last ingested."""
        table = self.store.sources.read(["path", "n_bytes", "mtime_ns", "image_id"])
        status = dict(zip(*(manifest.column(c).to_pylist() for c in ("image_id", "status")), strict=True))
        columns = (table.column(c).to_pylist() for c in ("path", "n_bytes", "mtime_ns", "image_id"))
        return {p: (n, m, i, status.get(i, "missing")) for p, n, m, i in zip(*columns, strict=True)}

    def _found_changed(self) -> set[str]:
        """Image ids a stage found no longer in their files (a `file_changed` error row, current, in any
        feature folder): their files are hashed again whatever their size and mtime say (bytes can be
        replaced with both kept), so that the stage's advice, re-ingest it, works."""
        found: set[str] = set()
        for stage in STAGES.feature_stages():
            for fingerprint in self.store.fingerprints(stage):
                schema = getattr(STAGES.get(stage), "schema", None)  # a class attribute, or per config (None)
                folder = self.store.features(stage, fingerprint, schema if isinstance(schema, pa.Schema) else None)
                try:
                    kinds = error_kinds(folder)
                except (StoreError, KeyError, pa.ArrowInvalid) as e:  # that stage's own run will say what is wrong
                    log.debug("ingest: %s [%s] not checked for changed files: %s", stage, fingerprint, e)
                    continue
                found |= {i for i, k in kinds.items() if k == "file_changed"}
        return found

    @staticmethod
    def _unchanged(
        source: Source, seen: dict[str, tuple[int, int, str, str]], known: dict[str, Any], changed: set[str]
    ) -> bool:
        """Skip a file only when it is as it was (size, mtime), it read ok, its image is in the manifest,
        and no stage found its bytes changed."""
        if source.path not in seen or source.error is not None:
            return False
        size, mtime, image_id, status = seen[source.path]
        if status != STATUS_OK or image_id not in known or image_id in changed:
            return False  # a failed file may be fixed now; a quarantined manifest part must be refilled
        known_path = known[image_id][0]
        if known_path != source.path and not locations.exists(known_path):
            return False  # the manifest points at a path that is gone: this one is the image's live path
        return locations.stat(source.path) == (size, mtime)  # a member: its container unchanged

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
        if row["status"] != STATUS_OK:
            row["error_stage"] = self.name
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
