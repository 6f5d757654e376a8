"""Where images come from: folders in the usual dataset layouts, CSV/Parquet lists, globs, files.

Folder rules: files are found recursively; a `0_real` or `1_fake` folder on the path gives the
label; the first folder under the dataset root gives `generator` (the root's own name when the
class folders sit directly under it); a `train`, `val` or `test` folder gives `split`. Lists
(CSV/Parquet) have a `path` column (relative paths are relative to the list file) and optional
`label`, `generator`, `split`, `dataset` and `caption` columns. GenImage (`ai`/`nature`) and
DiffusionForensics (`<split>/<source>/<generator>`) layouts are registered too.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.engine.errors import UsageError
from pipeline.engine.registry import Registry

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
    error: str | None = None  # why the file cannot be ingested, known before reading it


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
            if not _regular(path):
                continue
            label, generator, split = rule(path.relative_to(root).parts[:-1], root.name)
            yield _named(Source(str(path), label, generator, dataset or root.name, split))


def _regular(path: Path) -> bool:
    """A regular file (or a link to one). A FIFO, socket or device is skipped with one line: reading
    one blocks until the decode time limit, on every ingest."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return True  # unreadable: probing gives it its error row
    if stat.S_ISREG(mode):
        return True
    log.warning("%s: not a regular file (FIFO, socket or device): skipped", _printable(str(path)))
    return False


def _printable(path: str) -> str:
    """The path as text that can be stored and printed: bytes that are not UTF-8 shown as \\xNN."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _named(source: Source) -> Source:
    """A file whose name is not valid UTF-8 cannot be recorded by its name: an error row says so."""
    try:
        source.path.encode("utf-8")
        return source
    except UnicodeEncodeError:
        return dataclasses.replace(
            source,
            path=_printable(source.path),
            error="file name is not valid UTF-8: rename the file (e.g. with `convmv`) to ingest it",
        )


def sources_from_list(path: Path, dataset: str | None = None) -> Iterator[Source]:
    """Rows of a CSV or Parquet list; relative paths are resolved against the list's folder."""
    frame = read_list(path)
    base = path.resolve().parent
    for number, row in enumerate(frame.iter_rows(named=True), start=2 if path.suffix == ".csv" else 1):
        if _str_or_none(row["path"]) is None:
            log.warning("%s: row %d has no path: skipped", path, number)
            continue
        p = Path(str(row["path"]))
        label = _parse_label(row.get("label"), path)
        split = _str_or_none(row.get("split"))
        if split is not None and split not in SPLIT_DIRS:
            raise UsageError(f"{path}: row {number}: split {split!r} is not one of {', '.join(SPLIT_DIRS)}")
        yield _named(
            Source(
                str(p if p.is_absolute() else (base / p).resolve()),
                label,
                _str_or_none(row.get("generator")),
                _str_or_none(row.get("dataset")) or dataset or path.stem,
                split,
                _str_or_none(row.get("caption")),
            )
        )


def read_list(path: Path):
    """A CSV (UTF-8) or Parquet list as a polars frame with a `path` column, or one clear error."""
    import polars as pl

    try:
        frame = pl.read_csv(path, infer_schema=False) if path.suffix.lower() == ".csv" else pl.read_parquet(path)
    except pl.exceptions.NoDataError:
        raise UsageError(f"{path}: the list is empty (it needs a header row with a 'path' column)") from None
    except (pl.exceptions.ComputeError, pl.exceptions.PolarsError, OSError) as e:
        what = "a UTF-8 CSV file" if path.suffix.lower() == ".csv" else "a Parquet file"
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"{path}: cannot read the list as {what} ({type(e).__name__}: {first})") from e
    if "path" not in frame.columns:
        raise UsageError(f"{path}: a list needs a 'path' column (has: {', '.join(frame.columns)})")
    return frame


def _str_or_none(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value)


def _parse_label(value: Any, where: Path) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    key = str(value).strip().lower()
    if key not in LABEL_WORDS:
        raise UsageError(f"{where}: label {value!r} is not one of 0, 1, real, fake")
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
    if split is not None and split not in SPLIT_DIRS:
        raise UsageError(f"--split {split!r} is not one of {', '.join(SPLIT_DIRS)}")
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
            if _regular(path):
                yield _named(Source(str(path.resolve()), dataset=dataset or path.parent.name))
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")


def derived_split(image_id: str, fractions: tuple[float, float, float]) -> str:
    """A deterministic split from the id's leading 32 bits (same id, same split, on any machine)."""
    u = int(image_id[:8], 16) / 0x1_0000_0000
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"
