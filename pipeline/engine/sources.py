"""Where images come from: folders in the usual dataset layouts, CSV/Parquet lists, globs, files.

Folder rules: files are found recursively; a `0_real` or `1_fake` folder on the path gives the
label; the first folder under the dataset root gives `generator` (the root's own name when the
class folders sit directly under it); a `train`, `val` or `test` folder (any case, or CNNDetection's
`progan_train`, `progan_val`, `CNN_synth_testset`) gives `split`. Lists (CSV/Parquet) have a `path`
column (relative paths are relative to the list file) and optional `label`, `generator`, `split`,
`dataset` and `caption` columns. GenImage (`ai`/`nature`) and DiffusionForensics
(`[images/]<split>/<source>/<generator>`) layouts are registered too. These rules are the one
definition of the benchmarks' layouts: ingest reads folders with them, and `item reproduce` places
the paper's datasets with them.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
import stat
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.engine import locations
from pipeline.engine.errors import RowError, UsageError
from pipeline.engine.registry import Registry

log = logging.getLogger(__name__)

LABEL_DIRS = {"0_real": 0, "1_fake": 1}
GENIMAGE_DIRS = {"nature": 0, "ai": 1}
SPLIT_DIRS = ("train", "val", "test")
# Folder names that give a split, compared in lower case: CNNDetection ships its splits as
# progan_train, progan_val and CNN_synth_testset.
SPLIT_FOLDERS = {s: s for s in SPLIT_DIRS} | {"progan_train": "train", "progan_val": "val", "cnn_synth_testset": "test"}
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
    error: RowError | None = None  # why the file cannot be ingested, known before reading it


FolderInfo = tuple[int | None, str | None, str | None]  # label, generator, split
LAYOUTS: Registry[Callable[[tuple[str, ...], str], FolderInfo]] = Registry("folder layout")


def split_at(parts: tuple[str, ...]) -> int | None:
    """Where the first folder that names a split (SPLIT_FOLDERS) is in `parts`, or None."""
    return next((i for i, p in enumerate(parts) if p.lower() in SPLIT_FOLDERS), None)


def _split(parts: tuple[str, ...], at: int | None) -> str | None:
    return None if at is None else SPLIT_FOLDERS[parts[at].lower()]


def _label(parts: tuple[str, ...], folders: dict[str, int]) -> int | None:
    return next((folders[p] for p in parts if p in folders), None)


@LAYOUTS.register("cnndetection")
def cnndetection(parts: tuple[str, ...], root: str) -> FolderInfo:
    """CNNDetection and UniversalFakeDetect's diffusion sets: `<generator>/[<class>/]0_real|1_fake`."""
    first = parts[0] if parts else None
    generator = root if first is None or first in LABEL_DIRS or split_at((first,)) is not None else first
    return _label(parts, LABEL_DIRS), generator, _split(parts, split_at(parts))


@LAYOUTS.register("genimage")
def genimage(parts: tuple[str, ...], root: str) -> FolderInfo:
    """GenImage: `<generator>/.../{train,val}/{ai,nature}`."""
    return _label(parts, GENIMAGE_DIRS), parts[0] if parts else root, _split(parts, split_at(parts))


@LAYOUTS.register("diffusionforensics")
def diffusionforensics(parts: tuple[str, ...], root: str) -> FolderInfo:
    """DiffusionForensics: `[images/]{train,val,test}/<source>/<generator>`, reals in `<source>/real`.

    The generator is named `<source>/<generator>` (e.g. `lsun_bedroom/adm`) so that evaluation can
    pair each generator with its source's real images.
    """
    at = split_at(parts)
    if at is None or len(parts) < at + 3:
        return None, None, _split(parts, at)
    source, generator = parts[at + 1], parts[at + 2]
    return (0 if generator == "real" else 1), f"{source}/{generator}", _split(parts, at)


@LAYOUTS.register("auto")
def auto(parts: tuple[str, ...], root: str) -> FolderInfo:
    """Per file: `ai`/`nature` folders mean GenImage; a split folder first and no 0_real/1_fake
    folder with at least three levels means DiffusionForensics; otherwise CNNDetection's rules."""
    if any(p in GENIMAGE_DIRS for p in parts):
        return genimage(parts, root)
    if len(parts) >= 3 and split_at(parts) == 0 and not any(p in LABEL_DIRS for p in parts):
        return diffusionforensics(parts, root)
    return cnndetection(parts, root)


def sources_from_folder(root: Path, dataset: str | None = None, layout: str = "auto") -> Iterator[Source]:
    """Every file under `root` (sorted, hidden files skipped) with label/generator/split from its folders.
    Symlinked folders are followed (a class folder linked from elsewhere is that class), each real
    folder once (a link back up the tree is not a loop)."""
    root = root.resolve()
    rule = LAYOUTS.get(layout)
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            log.warning("%s: a folder already walked (a symlink loop or a second link): skipped", _printable(dirpath))
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if not _regular(path):
                continue
            if SHARD_NAME.fullmatch(name):  # webdataset / img2dataset shards (00000.tar): their members
                try:
                    yield from _archive(locations.of_file(str(path)), ".tar", dataset, layout)
                except UsageError as e:  # one broken shard among many: one line, and the rest goes on
                    log.warning("%s", e)
                continue
            label, generator, split = rule(path.relative_to(root).parts[:-1], root.name)
            yield _named(Source(locations.of_file(str(path)), label, generator, dataset or root.name, split))


def inside_parts(name: str) -> tuple[str, ...]:
    """A member name's folders and file name as the layout rules read them: `..`, `.` and a leading
    `/` are not folders (a member `../up.jpg` or `/abs.jpg` is a member, never extracted anywhere)."""
    return tuple(p for p in PurePosixPath(name).parts if p not in ("/", "..", "."))


def _warn_odd_members(container: str, names: list[str]) -> None:
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if repeated:
        log.warning(
            "%s: %d member name(s) appear more than once (e.g. %s): the last copy of each is read",
            _printable(container), len(repeated), _printable(repeated[0]),
        )
    outside = [n for n in names if PurePosixPath(n).is_absolute() or ".." in PurePosixPath(n).parts]
    if outside:
        log.warning(
            "%s: %d member(s) named outside the archive (e.g. %s): read as members, never extracted",
            _printable(container), len(outside), _printable(outside[0]),
        )


# A tar named like a shard (00000.tar, train-000123.tar) inside a folder is read as the images it
# holds; any other archive in a folder is a file like the rest (given as an input, any archive opens).
SHARD_NAME = re.compile(r".*\d{3,}\.tar", re.IGNORECASE)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".heif"}
SIDECAR_SUFFIXES = (".json", ".txt", ".cls")


def sources_from_member_names(
    container: str, names: list[str], root_name: str, dataset: str | None, layout: str
) -> Iterator[Source]:
    """Members of a zip or a folder listing (sorted): the folder layout rules apply to their paths."""
    rule = LAYOUTS.get(layout)
    _warn_odd_members(container, names)
    for name in sorted(set(names)):
        parts = inside_parts(name)
        if not parts or any(p.startswith(".") for p in parts) or parts[0] == "__MACOSX":
            continue
        label, generator, split = rule(parts[:-1], root_name)
        yield Source(locations.member(container, name), label, generator, dataset or root_name, split)


def sources_from_zip(path: str, dataset: str | None = None, layout: str = "auto") -> Iterator[Source]:
    """A zip of a dataset tree (GenImage, CNNDetection): its folders give labels, generators, splits."""
    with locations.open_binary(path) as f, zipfile.ZipFile(f) as z:
        names = [i.filename for i in z.infolist() if not i.is_dir()]
    stem = _stem(path)
    yield from sources_from_member_names(path, names, stem, dataset, layout)


def wds_key(name: str) -> str:
    """A member's webdataset key: its folder and its file name up to the first dot."""
    directory, _, base = name.rpartition("/")
    key = base.partition(".")[0]
    return f"{directory}/{key}" if directory else key


def sources_from_tar(path: str, dataset: str | None = None, layout: str = "auto") -> Iterator[Source]:
    """A webdataset / img2dataset shard: every image member is one image (by its last suffix), labelled
    by the `.json` sidecar (label, generator, split, caption) or `.cls`/`.txt` class of its key (the
    name up to its first dot), else by the folder layout of the member's path. Images that share a
    key (`photo.2023.000.jpg`, `photo.2023.001.jpg`; `same.jpg`, `same.png`) are each their own
    image, with one warning; a sidecar that cannot be read affects its key only."""
    names = locations.tar_members(path)
    _warn_odd_members(path, locations.tar_member_names(path))
    sidecars: dict[str, dict[str, str]] = {}
    images: dict[str, list[str]] = {}
    for name in names:
        suffix = PurePosixPath(name).suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images.setdefault(wds_key(name), []).append(name)
        elif suffix in SIDECAR_SUFFIXES:
            sidecars.setdefault(wds_key(name), {})[suffix] = name
    shared = sorted(k for k, v in images.items() if len(v) > 1)
    if shared:
        log.warning(
            "%s: %d key(s) hold more than one image (e.g. %s: %s): each image is its own row, labelled by "
            "the key's sidecar", _printable(path), len(shared), _printable(shared[0]),
            ", ".join(_printable(n) for n in sorted(images[shared[0]])[:3]),
        )
    rule = LAYOUTS.get(layout)
    stem = _stem(path)
    wanted = {k: m for k, m in sidecars.items() if k in images}
    texts = dict(zip(wanted, _sidecar_bytes(path, wanted), strict=True))
    for key in sorted(images):
        meta = texts.get(key, {})
        for image in sorted(images[key]):
            label, generator, split = rule(inside_parts(image)[:-1], stem)
            yield Source(
                locations.member(path, image),
                _parse_label(meta.get("label"), Path(path)) if meta.get("label") is not None else label,
                _str_or_none(meta.get("generator")) or generator,
                _str_or_none(meta.get("dataset")) or dataset or stem,
                _split_value(meta.get("split"), path) or split,
                _str_or_none(meta.get("caption")),
            )


def _sidecar_bytes(path: str, sidecars: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """Per key, its sidecar's fields: the JSON object, or {"label": text} from .cls / .txt."""
    chosen = [next(m[e] for e in SIDECAR_SUFFIXES if e in m) for m in sidecars.values()]
    out = []
    for name, data in zip(chosen, locations.read_many([locations.member(path, n) for n in chosen]), strict=True):
        if isinstance(data, Exception):
            out.append({})
        elif name.endswith(".json"):
            try:
                value = json.loads(data.decode("utf-8", "replace"))
            except ValueError:
                value = {}
            out.append(value if isinstance(value, dict) else {})
        else:
            out.append({"label": data.decode("utf-8", "replace").strip()})
    return out


HF_SPLITS = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}


def sources_from_image_parquet(path: str, frame, dataset: str | None = None) -> Iterator[Source]:
    """A Hugging Face style Parquet (an `image` column of struct<bytes, path> or binary): one image per
    row, with `label`/`generator`/`split`/`caption` columns if present; the split also comes from
    HF's file naming (`train-00000-of-00004.parquet`, `test-...`)."""
    name = PurePosixPath(path).name
    from_name = next((v for k, v in HF_SPLITS.items() if name.startswith(f"{k}-") or name == f"{k}.parquet"), None)
    where = Path(path)
    for row_number, row in enumerate(frame.iter_rows(named=True)):
        yield Source(
            locations.member(path if locations.is_url(path) else locations.of_file(path), str(row_number)),
            _parse_label(row.get("label"), where),
            _str_or_none(row.get("generator")),
            _str_or_none(row.get("dataset")) or dataset or _stem(path),
            _split_value(row.get("split"), path) or from_name,
            _str_or_none(row.get("caption")),
        )


def sources_from_url_folder(url: str, dataset: str | None = None, layout: str = "auto") -> Iterator[Source]:
    """Every object under an fsspec URL prefix (s3://bucket/imgs/), its key's folders giving labels."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    protocol = url.split("://", 1)[0]
    rule = LAYOUTS.get(layout)
    root = root.rstrip("/")
    root_name = PurePosixPath(root).name
    for key in sorted(fs.find(root)):
        relative = PurePosixPath(key).relative_to(root)
        if any(p.startswith(".") for p in relative.parts):
            continue
        label, generator, split = rule(relative.parts[:-1], root_name)
        yield Source(f"{protocol}://{key}", label, generator, dataset or root_name, split)


def _split_value(value: Any, where: str) -> str | None:
    """A sidecar's or a Hugging Face file's split, with HF's names (validation) mapped to ours."""
    text = _str_or_none(value)
    return None if text is None else checked_split(HF_SPLITS.get(text.lower(), text), f"{where}: split")


def checked_split(split: str | None, what: str) -> str | None:
    """`split` when it is None or one of SPLIT_DIRS; otherwise one error naming where it was given."""
    if split is not None and split not in SPLIT_DIRS:
        raise UsageError(f"{what} {split!r} is not one of {', '.join(SPLIT_DIRS)}")
    return split


def _stem(path: str) -> str:
    return PurePosixPath(path.rstrip("/")).name.split(".")[0]


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
            error=RowError("bad_file_name", "rename the file (e.g. with `convmv`) to ingest it"),
        )


def sources_from_list(path: Path | str, dataset: str | None = None) -> Iterator[Source]:
    """Rows of a CSV or Parquet list; relative paths are resolved against the list's folder. A Parquet
    with an `image` column and no `path` column holds the images themselves (Hugging Face datasets)."""
    frame = read_list(path)
    if "path" not in frame.columns:
        yield from sources_from_image_parquet(str(path), frame.drop(IMAGE_COLUMNS_TO_DROP, strict=False), dataset)
        return
    if isinstance(path, str):  # a list at a URL: its paths are URLs or relative to it
        path = _UrlPath(path)
    base = path.resolve().parent
    for number, row in enumerate(frame.iter_rows(named=True), start=2 if path.suffix == ".csv" else 1):
        if _str_or_none(row["path"]) is None:
            log.warning("%s: row %d has no path: skipped", path, number)
            continue
        text = str(row["path"])
        label = _parse_label(row.get("label"), path)
        split = checked_split(_str_or_none(row.get("split")), f"{path}: row {number}: split")
        where = _listed(text, base)
        yield _named(
            Source(
                where,
                label,
                _str_or_none(row.get("generator")),
                _str_or_none(row.get("dataset")) or dataset or path.stem,
                split,
                _str_or_none(row.get("caption")),
            )
        )


def _listed(text: str, base: Any) -> str:
    """A list row's location: a URL as given; a path, or the container of a member (`x.tar::k.jpg`),
    resolved against the list's folder when relative (a file whose own name holds `::` is named by
    its file:// URL, see locations.of_file)."""
    if locations.is_url(text):
        return text
    outer, inner = locations.split(text)
    if locations.is_url(outer) or outer.startswith(locations.FILE_URL) or Path(outer).is_absolute():
        return text
    resolved = str((base / outer).resolve())
    return locations.of_file(resolved) if inner is None else f"{locations.of_file(resolved)}{locations.SEP}{inner}"


IMAGE_COLUMNS_TO_DROP = ["image"]  # the bytes stay in the file: a location is read when needed


def read_list(path: Path | str):
    """A CSV (UTF-8) or Parquet list as a polars frame with a `path` column (or an `image` column), or
    one clear error."""
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    suffix = PurePosixPath(str(path)).suffix.lower()
    try:
        if suffix == ".csv":
            with locations.open_binary(str(path)) as f:
                frame = pl.read_csv(f.read(), infer_schema=False)
        else:
            with locations.open_binary(str(path)) as f:
                names = pq.read_schema(f).names
                f.seek(0)
                # image bytes are not read here: only the other columns
                frame = pl.from_arrow(pq.read_table(f, columns=[c for c in names if c != "image"]))
                if "image" in names and "path" not in names:
                    frame = frame.with_columns(pl.lit(None).alias("image"))
    except pl.exceptions.NoDataError:
        raise UsageError(f"{path}: the list is empty (it needs a header row with a 'path' column)") from None
    except (pl.exceptions.PolarsError, pa.ArrowException, ValueError, OSError) as e:
        what = "a UTF-8 CSV file" if path.suffix.lower() == ".csv" else "a Parquet file"
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"{path}: cannot read the list as {what} ({type(e).__name__}: {first})") from e
    if "path" not in frame.columns and "image" not in frame.columns:
        raise UsageError(
            f"{path}: a list needs a 'path' column, or an 'image' column (has: {', '.join(frame.columns)})"
        )
    return frame


class _UrlPath:
    """Just enough of a Path for a list at a URL: relative entries resolve against its folder."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.suffix = PurePosixPath(url).suffix
        self.stem = PurePosixPath(url).stem

    def resolve(self) -> _UrlPath:
        return self

    @property
    def parent(self) -> _UrlPath:
        return _UrlPath(self.url.rsplit("/", 1)[0])

    def __truediv__(self, other: Any) -> _UrlPath:
        return _UrlPath(f"{self.url}/{other}")

    def __str__(self) -> str:
        return self.url


def _str_or_none(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value)


def _parse_label(value: Any, where: Path) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    key = str(value).strip().lower()
    if key not in LABEL_WORDS:
        raise UsageError(f"{where}: label {value!r} is not one of 0, 1, real, fake")
    return LABEL_WORDS[key]


def expand(inputs: Iterable[str | Path]) -> list[str]:
    """Inputs as given, with shell-style globs (`*`, `?`, `[`) expanded in sorted order (URLs as they are)."""
    out: list[str] = []
    for item in inputs:
        text = str(item)
        if not locations.is_url(text) and any(c in text for c in "*?[") and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {text}")
            out.extend(matches)
        else:
            out.append(text)
    return out


def discover(
    inputs: Iterable[str | Path],
    dataset: str | None = None,
    layout: str = "auto",
    generator: str | None = None,
    split: str | None = None,
) -> Iterator[Source]:
    """Sources from folders, lists, archives, Parquet with images, URLs, globs and single files;
    `generator`/`split` override what the inputs say."""
    checked_split(split, "--split")
    for source in _discover(expand(inputs), dataset, layout):
        if generator is not None or split is not None:
            source = dataclasses.replace(source, generator=generator or source.generator, split=split or source.split)
        yield source


def _discover(inputs: list[str], dataset: str | None, layout: str) -> Iterator[Source]:
    for text in inputs:
        url = locations.is_url(text)
        suffix = PurePosixPath(text).suffix.lower()
        local = None if url else Path(text)
        if url and (text.endswith("/") or not suffix):
            yield from _url_folder(text, dataset, layout)
        elif local is not None and local.is_dir():  # a folder named like an archive is a folder
            yield from sources_from_folder(local, dataset, layout)
        elif suffix == ".tar" or suffix == ".zip":
            if local is not None and not local.is_file():
                raise FileNotFoundError(f"no such file or folder: {text}")
            where = text if url else locations.of_file(str(local.resolve()))
            yield from _archive(where, suffix, dataset, layout)
        elif suffix in LIST_SUFFIXES and (url or local.is_file()):
            yield from sources_from_list(text if url else local.resolve(), dataset)  # absolute from here on
        elif url:
            yield Source(text, dataset=dataset or PurePosixPath(text).parent.name)
        elif local.exists():
            if _regular(local):
                yield _named(Source(locations.of_file(str(local.resolve())), dataset=dataset or local.parent.name))
        else:
            raise FileNotFoundError(f"no such file or folder: {text}")


def _archive(path: str, suffix: str, dataset: str | None, layout: str) -> Iterator[Source]:
    try:
        if suffix == ".tar":
            yield from sources_from_tar(path, dataset, layout)
        else:
            yield from sources_from_zip(path, dataset, layout)
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as e:
        raise UsageError(f"{path}: cannot read the archive ({type(e).__name__}: {e})") from e


def _url_folder(url: str, dataset: str | None, layout: str) -> Iterator[Source]:
    try:
        yield from sources_from_url_folder(url, dataset, layout)
    except (OSError, ValueError, ImportError) as e:
        raise UsageError(f"{url}: cannot list it ({type(e).__name__}: {e}); check the bucket and credentials") from e


def derived_split(image_id: str, fractions: tuple[float, float, float]) -> str:
    """A deterministic split from the id's leading 32 bits (same id, same split, on any machine)."""
    u = int(image_id[:8], 16) / 0x1_0000_0000
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"
