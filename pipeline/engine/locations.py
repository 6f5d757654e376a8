"""Where an image's bytes are, and how to read them back: one string per image.

    /data/x.jpg                           a local file
    s3://bucket/imgs/x.jpg                an fsspec URL (s3://, gs://, az://, https://, ...)
    /data/shard-00001.tar::key.jpg        a member of a tar shard (webdataset, img2dataset)
    /data/genimage.zip::sd/val/ai/1.png   a member of a zip archive
    /data/train-00000.parquet::17         row 17 of a Parquet file with an image column
    s3://bucket/shard.tar::key.jpg        the container itself may be a URL

Containers are read in batches with one open per container: a tar's member offsets are indexed once
per process, a Parquet file is read one row group at a time. Credentials for object storage come from
the usual places (environment, profiles) through fsspec's clients; nothing is stored.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import zipfile
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

SEP = "::"
ARCHIVES = (".tar", ".zip")
IMAGE_COLUMN = "image"


class LocationError(OSError):
    """The bytes of a location cannot be read (missing member, bad row, unreachable storage)."""


def split(location: str) -> tuple[str, str | None]:
    """(container or file, member or row inside it, or None)."""
    if SEP in location:
        outer, inner = location.split(SEP, 1)
        return outer, inner
    return location, None


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def kind(location: str) -> str:
    """file | tar | zip | parquet | url."""
    outer, inner = split(location)
    if inner is None:
        return "url" if is_url(outer) else "file"
    suffix = os.path.splitext(outer)[1].lower()
    return {".tar": "tar", ".zip": "zip", ".parquet": "parquet"}.get(suffix, "file")


def open_binary(path: str):
    """A local file or an fsspec URL, opened for reading bytes."""
    if is_url(path):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def stat(location: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of the file or container holding `location`, or None when unknown; a member
    is as unchanged as its container (so an unchanged shard is not read again on re-ingest)."""
    outer, _ = split(location)
    try:
        if is_url(outer):
            import fsspec

            fs, path = fsspec.core.url_to_fs(outer)
            info = fs.info(path)
            stamp = info.get("LastModified") or info.get("mtime") or info.get("ETag") or 0
            # a stable number for the object's version (Python's hash() differs between processes)
            return int(info.get("size") or 0), int(hashlib.sha256(str(stamp).encode()).hexdigest()[:15], 16)
        st = os.stat(outer)
        return st.st_size, st.st_mtime_ns
    except (OSError, ValueError):
        return None


def read(location: str) -> bytes:
    """The bytes of one location."""
    return read_many([location])[0]


def read_many(locations: list[str]) -> list[bytes | OSError]:
    """The bytes of each location in order, each container opened once; a failure is its error in place."""
    out: list[bytes | LocationError | None] = [None] * len(locations)
    urls = [i for i, location in enumerate(locations) if kind(location) == "url"]
    if len(urls) > 1:  # loose objects: fetched together (concurrently, on the async stores: s3, gcs, http)
        for i, data in zip(urls, _cat_many([locations[i] for i in urls]), strict=True):
            out[i] = data
    groups: dict[tuple[str, str], list[int]] = {}
    for i, location in enumerate(locations):
        if out[i] is not None:
            continue
        outer, _ = split(location)
        groups.setdefault((kind(location), outer), []).append(i)
    for (k, outer), members in groups.items():
        try:
            for i, data in zip(members, _READERS[k](outer, [split(locations[i])[1] for i in members]), strict=True):
                out[i] = data
        except OSError as e:  # kept as it is: FileNotFoundError says "missing", not "broken"
            for i in members:
                if out[i] is None:
                    out[i] = e
        except (tarfile.TarError, zipfile.BadZipFile, ValueError) as e:
            for i in members:
                if out[i] is None:
                    out[i] = LocationError(f"{outer}: {type(e).__name__}: {e}")
    return out  # type: ignore[return-value]


def _cat_many(urls: list[str]) -> list[bytes | OSError]:
    """The bytes of each URL, by one fsspec `cat` of many paths per filesystem; a failure in its place."""
    import fsspec

    out: list[bytes | OSError | None] = [None] * len(urls)
    by_fs: dict[int, tuple[Any, list[tuple[int, str]]]] = {}
    for i, url in enumerate(urls):
        fs, path = fsspec.core.url_to_fs(url)
        by_fs.setdefault(id(fs), (fs, []))[1].append((i, path))
    for fs, members in by_fs.values():
        try:
            found = fs.cat([path for _, path in members], on_error="return")
        except Exception as e:  # the whole request failed: each member says so
            found = {path: e for _, path in members}
        for i, path in members:
            data = found.get(path, FileNotFoundError(path))
            if isinstance(data, BaseException) and not isinstance(data, OSError):
                data = OSError(f"{type(data).__name__}: {data}")
            out[i] = data
    return out  # type: ignore[return-value]


def _files(outer: str, inners: list[str | None]) -> Iterator[bytes | LocationError]:
    for _ in inners:
        with open_binary(outer) as f:
            yield f.read()


def _tar(outer: str, inners: list[str | None]) -> Iterator[bytes | LocationError]:
    index = tar_index(outer, *_stamp(outer))
    with open_binary(outer) as f:
        for name in inners:
            if name not in index:
                yield LocationError(f"no member {name!r} in {outer}")
                continue
            offset, size = index[name]
            f.seek(offset)
            yield f.read(size)


def _zip(outer: str, inners: list[str | None]) -> Iterator[bytes | LocationError]:
    with open_binary(outer) as f, zipfile.ZipFile(f) as z:
        for name in inners:
            try:
                yield z.read(name)
            except KeyError:
                yield LocationError(f"no member {name!r} in {outer}")


def _parquet(outer: str, inners: list[str | None]) -> Iterator[bytes | LocationError]:
    import pyarrow.parquet as pq

    with open_binary(outer) as f:
        pf = pq.ParquetFile(f)
        starts = [0]
        for g in range(pf.num_row_groups):
            starts.append(starts[-1] + pf.metadata.row_group(g).num_rows)
        groups: dict[int, Any] = {}
        for inner in inners:
            try:
                row = int(inner or "")
            except ValueError:
                yield LocationError(f"{outer}: {inner!r} is not a row number")
                continue
            g = next((k for k in range(pf.num_row_groups) if starts[k] <= row < starts[k + 1]), None)
            if g is None:
                yield LocationError(f"{outer} has no row {row}")
                continue
            if g not in groups:  # one row group in memory at a time for a sorted batch
                groups = {g: pf.read_row_group(g, columns=[IMAGE_COLUMN]).column(IMAGE_COLUMN)}
            yield image_bytes(groups[g][row - starts[g]].as_py(), f"{outer} row {row}")


def image_bytes(cell: Any, where: str) -> bytes | LocationError:
    """The bytes of a Parquet image cell: HF's struct<bytes, path> or plain binary."""
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not data:
        return LocationError(f"{where}: the image cell has no bytes")
    return bytes(data)


def _stamp(path: str) -> tuple[int, int]:
    return stat(path) or (0, 0)


@lru_cache(maxsize=64)
def tar_index(path: str, size: int, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """Member name -> (data offset, size) of a tar, read from its headers once per process and
    version of the file (size and mtime are part of the cache key)."""
    index: dict[str, tuple[int, int]] = {}
    with open_binary(path) as f, tarfile.open(fileobj=f, mode="r:") as t:
        try:
            for m in t:
                if m.isfile():
                    index[m.name] = (m.offset_data, m.size)
        except tarfile.TarError as e:  # a truncated shard: the members before the damage are still there
            log.warning("%s: unreadable after %d member(s) (%s): the rest of the shard is skipped", path, len(index), e)
    return index


def tar_members(path: str) -> list[str]:
    return sorted(tar_index(path, *_stamp(path)))


_READERS = {"file": _files, "url": _files, "tar": _tar, "zip": _zip, "parquet": _parquet}


def exists(location: str) -> bool:
    """Whether the file or container holding `location` is there (a member is assumed to be)."""
    return stat(location) is not None
