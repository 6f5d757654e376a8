"""ingest: folders and CSV/Parquet lists -> manifest rows keyed by the sha256 of each file.

Folder rules: files are found recursively; a `0_real` or `1_fake` folder on the path gives the
label; the first folder under the dataset root gives `generator` (the root's own name when the
class folders sit directly under it); a `train`, `val` or `test` folder gives `split`. Lists
(CSV/Parquet) have a `path` column (relative paths are relative to the list file) and optional
`label`, `generator`, `split`, `dataset` and `caption` columns. Images with no split get a
deterministic one from their image_id.

Every file gets exactly one outcome: a manifest row (status ok, or error with the reason) for a
new image, or, for bytes already in the manifest, only a `sources` row naming the extra path.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.executors import Executor
from pipeline.probe import Prober
from pipeline.registry import Registry
from pipeline.schemas import MANIFEST, SOURCES, STATUS_OK
from pipeline.stage import RunStats, Stage, error_reason_kind
from stages import STAGES

log = logging.getLogger(__name__)

LABEL_DIRS = {"0_real": 0, "1_fake": 1}
GENIMAGE_DIRS = {"nature": 0, "ai": 1}
SPLIT_DIRS = ("train", "val", "test")
LABEL_WORDS = {"0": 0, "1": 1, "real": 0, "fake": 1}
LIST_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class Source:
    """One file to ingest and what its location or list row says about it."""

    path: str
    label: int | None = None
    generator: str | None = None
    dataset: str | None = None
    split: str | None = None
    caption: str | None = None
    source_id: str | None = None
    perturbation: str | None = None


FolderInfo = tuple[int | None, str | None, str | None]  # label, generator, split
LAYOUTS: Registry[Callable[[tuple[str, ...], str], FolderInfo]] = Registry("folder layout")


@LAYOUTS.register("cnndetection")
def cnndetection(parts: tuple[str, ...], root: str) -> FolderInfo:
    """CNNDetection and UniversalFakeDetect's diffusion sets: `<generator>/[<class>/]0_real|1_fake`."""
    label = next((LABEL_DIRS[p] for p in parts if p in LABEL_DIRS), None)
    split = next((p for p in parts if p in SPLIT_DIRS), None)
    first = parts[0] if parts else None
    generator = root if first is None or first in LABEL_DIRS or first in SPLIT_DIRS else first
    return label, generator, split


@LAYOUTS.register("genimage")
def genimage(parts: tuple[str, ...], root: str) -> FolderInfo:
    """GenImage: `<generator>/.../{train,val}/{ai,nature}`."""
    label = next((GENIMAGE_DIRS[p] for p in parts if p in GENIMAGE_DIRS), None)
    split = next((p for p in parts if p in SPLIT_DIRS), None)
    return label, parts[0] if parts else root, split


@LAYOUTS.register("diffusionforensics")
def diffusionforensics(parts: tuple[str, ...], root: str) -> FolderInfo:
    """DiffusionForensics: `{train,val,test}/<source>/<generator>`, reals in `<source>/real`.

    The generator is named `<source>/<generator>` (e.g. `lsun_bedroom/adm`) so that evaluation can
    pair each generator with its source's real images.
    """
    if len(parts) < 3:
        return None, None, parts[0] if parts and parts[0] in SPLIT_DIRS else None
    split, source, generator = parts[0], parts[1], parts[2]
    return (0 if generator == "real" else 1), f"{source}/{generator}", split if split in SPLIT_DIRS else None


@LAYOUTS.register("auto")
def auto(parts: tuple[str, ...], root: str) -> FolderInfo:
    """Per file: `ai`/`nature` folders mean GenImage; a split folder first and no 0_real/1_fake
    folder with at least three levels means DiffusionForensics; otherwise CNNDetection's rules."""
    if any(p in GENIMAGE_DIRS for p in parts):
        return genimage(parts, root)
    if len(parts) >= 3 and parts[0] in SPLIT_DIRS and not any(p in LABEL_DIRS for p in parts):
        return diffusionforensics(parts, root)
    return cnndetection(parts, root)


def sources_from_folder(root: Path, dataset: str | None = None, layout: str = "auto") -> Iterator[Source]:
    """Every file under `root` (sorted, hidden files skipped) with label/generator/split from its folders."""
    root = root.resolve()
    rule = LAYOUTS.get(layout)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            label, generator, split = rule(path.relative_to(root).parts[:-1], root.name)
            yield Source(str(path), label, generator, dataset or root.name, split)


def sources_from_list(path: Path, dataset: str | None = None) -> Iterator[Source]:
    """Rows of a CSV or Parquet list; relative paths are resolved against the list's folder."""
    import polars as pl

    frame = pl.read_csv(path, infer_schema=False) if path.suffix == ".csv" else pl.read_parquet(path)
    if "path" not in frame.columns:
        raise ValueError(f"{path}: a list needs a 'path' column (has: {', '.join(frame.columns)})")
    base = path.resolve().parent
    for row in frame.iter_rows(named=True):
        p = Path(str(row["path"]))
        label = _parse_label(row.get("label"), path)
        yield Source(
            str(p if p.is_absolute() else (base / p).resolve()),
            label,
            _str_or_none(row.get("generator")),
            _str_or_none(row.get("dataset")) or dataset or path.stem,
            _str_or_none(row.get("split")),
            _str_or_none(row.get("caption")),
        )


def _str_or_none(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value)


def _parse_label(value: Any, where: Path) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    key = str(value).strip().lower()
    if key not in LABEL_WORDS:
        raise ValueError(f"{where}: label {value!r} is not one of 0, 1, real, fake")
    return LABEL_WORDS[key]


def expand(inputs: Iterable[str | Path]) -> list[Path]:
    """Paths as given, with shell-style globs (`*`, `?`, `[`) expanded in sorted order."""
    out: list[Path] = []
    for item in inputs:
        text = str(item)
        if any(c in text for c in "*?[") and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {text}")
            out.extend(Path(m) for m in matches)
        else:
            out.append(Path(text))
    return out


def discover(
    inputs: Iterable[str | Path],
    dataset: str | None = None,
    layout: str = "auto",
    generator: str | None = None,
    split: str | None = None,
) -> Iterator[Source]:
    """Sources from folders, list files, globs and single image files; `generator`/`split` override."""
    for source in _discover(expand(inputs), dataset, layout):
        if generator is not None or split is not None:
            source = dataclasses.replace(source, generator=generator or source.generator, split=split or source.split)
        yield source


def _discover(inputs: list[Path], dataset: str | None, layout: str) -> Iterator[Source]:
    for path in inputs:
        if path.is_dir():
            yield from sources_from_folder(path, dataset, layout)
        elif path.suffix.lower() in LIST_SUFFIXES:
            yield from sources_from_list(path, dataset)
        elif path.exists():
            yield Source(str(path.resolve()), dataset=dataset or path.parent.name)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")


def derived_split(image_id: str, fractions: tuple[float, float, float]) -> str:
    """A deterministic split from the id's leading 32 bits (same id, same split, on any machine)."""
    u = int(image_id[:8], 16) / 0x1_0000_0000
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


@STAGES.register("ingest")
class IngestStage(Stage):
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
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        LAYOUTS.get(layout)  # an unknown layout fails before any work
        self.given = sources
        self.paths = list(inputs)
        self.options = {"dataset": dataset, "layout": layout, "generator": generator, "split": split}

    def sources(self) -> list[Source]:
        """The files the inputs name (or the sources given), in order (a path listed twice is one file)."""
        found = self.given if self.given is not None else discover(self.paths, **self.options)
        return list({s.path: s for s in found}.values())

    def image_ids(self, sources: list[Source]) -> list[str | None]:
        """The image_id of each source path as ingest recorded it (None if not ingested)."""
        table = self.store.sources.read(["path", "image_id"])
        known = dict(zip(table.column("path").to_pylist(), table.column("image_id").to_pylist(), strict=True))
        return [known.get(s.path) for s in sources]

    def run(
        self,
        ids: Iterable[str] | None = None,
        executor: Executor | None = None,
        progress: Callable[[int], None] | None = None,
        retry_errors: bool = False,
    ) -> RunStats:
        with self.store.manifest.lock("ingest"):
            return self._run_locked(progress)

    def _run_locked(self, progress: Callable[[int], None] | None) -> RunStats:
        start = time.perf_counter()
        stats = RunStats(self.name, "manifest")
        seen = self._seen_files()
        known_ids = self.store.manifest.ids()
        todo = [s for s in self.sources() if not self._unchanged(s, seen)]
        stats.todo = len(todo)
        if not todo:
            log.info("ingest: nothing new to ingest")
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
                            stats.error += 1
                            kind = error_reason_kind(row["error"])
                            stats.errors[kind] = stats.errors.get(kind, 0) + 1
                # Manifest first: a kill between the two writes only costs re-hashing those files.
                if self.store.manifest.write(pa.Table.from_pylist(manifest_rows, schema=MANIFEST)):
                    stats.parts += 1
                self.store.sources.write(
                    pa.Table.from_pylist(
                        [self._source_row(s, r) for s, r in zip(sources, probed, strict=True)], schema=SOURCES
                    )
                )
                if progress is not None:
                    progress(len(probed))
        stats.seconds = time.perf_counter() - start
        duplicates = stats.todo - stats.ok - stats.error
        if duplicates:
            log.info("ingest: %d file(s) repeat bytes already in the manifest (recorded in sources/)", duplicates)
        return stats

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
        if row["split"] is None:
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
