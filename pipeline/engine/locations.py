"""Where an image's bytes are, and how to read them back: one string per image.

    /data/x.jpg                           a local file
    s3://bucket/imgs/x.jpg                an fsspec URL (s3://, gs://, az://, https://, ...)
    /data/shard-00001.tar::key.jpg        a member of a tar shard (webdataset, img2dataset)
    /data/genimage.zip::sd/val/ai/1.png   a member of a zip archive
    /data/train-00000.parquet::17         row 17 of a Parquet file with an image column
    s3://bucket/shard.tar::key.jpg        the container itself may be a URL
    file:///data/a.jpg%3A%3Ab.jpg         a local path that holds "::" itself, percent-encoded
    /data/shard.tar::%caf%FF.jpg          a member whose name is not UTF-8 (or starts with %), encoded

Local paths are absolute from ingest on. The separator is unambiguous: a local path that contains it
is written as a file:// URL with the path percent-encoded (`of_file`), so a file named `a.jpg::b.jpg`
is that file, never `b.jpg` inside `a.jpg`; a member name that is not UTF-8 (or starts with `%`) is
written percent-encoded after a `%` (`member`), so it can be stored and never collides with a real
name.

Containers are read in batches with one open per container: a tar's member offsets are indexed once
per process, a Parquet file is read one row group at a time. Credentials for object storage come from
the usual places (environment, profiles) through fsspec's clients; nothing is stored.

Every read is bounded (`ReadLimits`): a file, member or object larger than `max_bytes` is refused
before it is read or decompressed (its size from the file system, the tar header or the zip
directory, and never more than `max_bytes` + 1 bytes read whatever they claim), a device, pipe or
socket is not read at all, and HTTP and S3 connections and reads give up after `timeout` seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat as stat_mode
import tarfile
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

SEP = "::"
ARCHIVES = (".tar", ".zip")
IMAGE_COLUMN = "image"


class LocationError(OSError):
    """The bytes of a location cannot be read (missing member, bad row, unreachable storage)."""

    kind = "unreadable_file"  # the row's error kind (engine/errors.py)


class TooLargeError(LocationError):
    kind = "file_too_large"


class NotRegularError(LocationError):
    kind = "not_a_regular_file"


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on reading one image's bytes (ingest.max_file_bytes and ingest.read_timeout)."""

    max_bytes: int = 1 << 30  # a file, archive member or object; 1 GiB is ~20x the largest photo
    timeout: float = 60.0  # seconds to connect, and per read, for HTTP(S) and S3


LIMITS = ReadLimits()


def too_large(where: str, size: int, limits: ReadLimits) -> TooLargeError:
    return TooLargeError(f"{where}: {size} bytes, over the limit of {limits.max_bytes} (ingest.max_file_bytes)")


def read_bounded(f: Any, where: str, limits: ReadLimits, size: int | None = None) -> bytes:
    """At most `max_bytes` of an open file: refused before reading when its known `size` is over, and
    after `max_bytes` + 1 bytes when the size was unknown or wrong."""
    if size is not None and size > limits.max_bytes:
        raise too_large(where, size, limits)
    data = f.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise too_large(where, len(data), limits)
    return data


def read_file(path: str, limits: ReadLimits = LIMITS) -> tuple[bytes, os.stat_result]:
    """The bytes and stat of a local file: only a regular file (a device such as /dev/zero, a pipe or
    a socket would never end or never answer), at most `max_bytes`."""
    with open(os_path(path), "rb") as f:
        st = os.fstat(f.fileno())
        if not stat_mode.S_ISREG(st.st_mode):
            raise NotRegularError(f"{path}: not a regular file (a device, pipe or socket)")
        return read_bounded(f, path, limits, st.st_size), st


def storage_options(url: str, limits: ReadLimits = LIMITS) -> dict[str, Any]:
    """fsspec options bounding a client's waits: aiohttp's connect and read timeouts for HTTP(S),
    botocore's for S3 (a server that accepts but never answers must not hang a stage)."""
    protocol = url.split("://", 1)[0].lower()
    if protocol in ("http", "https"):
        import aiohttp

        t = limits.timeout
        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t)}}
    if protocol in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": limits.timeout, "read_timeout": limits.timeout}}
    return {}


def url_to_fs(url: str, limits: ReadLimits = LIMITS) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(url, **storage_options(url, limits))


FILE_URL = "file://"


def of_file(path: str) -> str:
    """The location of a local file or container: its path, unless the path itself holds the
    separator (or looks like a file URL): then a file:// URL with the path percent-encoded."""
    if SEP in path or path.startswith(FILE_URL):
        return FILE_URL + urllib.parse.quote(os.fsencode(path))
    return path


def os_path(outer: str) -> str:
    """The file system path of a local location's file or container (see `of_file`)."""
    if outer.startswith(FILE_URL):
        return os.fsdecode(urllib.parse.unquote_to_bytes(outer[len(FILE_URL) :]))
    return outer


def member(container: str, name: str) -> str:
    """The location of member `name` (a str; not UTF-8 as surrogates) of a container location."""
    try:
        name.encode("utf-8")
        plain = not name.startswith("%")
    except UnicodeEncodeError:
        plain = False
    if plain:
        return f"{container}{SEP}{name}"
    return f"{container}{SEP}%{urllib.parse.quote(name.encode('utf-8', 'surrogateescape'), safe='/')}"


def member_name(inner: str) -> str:
    """The member name a location's inner part stands for (see `member`)."""
    if inner.startswith("%"):
        return urllib.parse.unquote_to_bytes(inner[1:]).decode("utf-8", "surrogateescape")
    return inner


CONTAINERS = (".tar", ".zip", ".parquet")


def split(location: str) -> tuple[str, str | None]:
    """(container or file, member or row inside it, or None). The separator only separates after a
    container (a .tar, .zip or .parquet): `/d/a.png::b.png` is one file, read as one everywhere."""
    if SEP in location:
        outer, inner = location.split(SEP, 1)
        if os.path.splitext(outer)[1].lower() in CONTAINERS:
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


def open_binary(path: str, limits: ReadLimits = LIMITS):
    """A local file or an fsspec URL, opened for reading bytes (a container: its members are bounded
    one by one)."""
    if is_url(path):
        fs, inner = url_to_fs(path, limits)
        return fs.open(inner, "rb")
    return open(os_path(path), "rb")


def stat(location: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of the file or container holding `location`, or None when unknown; a member
    is as unchanged as its container (so an unchanged shard is not read again on re-ingest)."""
    outer, _ = split(location)
    try:
        if is_url(outer):
            fs, path = url_to_fs(outer)
            info = fs.info(path)
            stamp = info.get("LastModified") or info.get("mtime") or info.get("ETag") or 0
            # a stable number for the object's version (Python's hash() differs between processes)
            return int(info.get("size") or 0), int(hashlib.sha256(str(stamp).encode()).hexdigest()[:15], 16)
        st = os.stat(os_path(outer))
        return st.st_size, st.st_mtime_ns
    except (OSError, ValueError):
        return None


def read(location: str, limits: ReadLimits = LIMITS) -> bytes | OSError:
    """The bytes of one location (or its error)."""
    return read_many([location], limits)[0]


def read_many(locations: list[str], limits: ReadLimits = LIMITS) -> list[bytes | OSError]:
    """The bytes of each location in order, each container opened once; a failure is its error in place."""
    out: list[bytes | LocationError | None] = [None] * len(locations)
    urls = [i for i, location in enumerate(locations) if kind(location) == "url"]
    if len(urls) > 1:  # loose objects: fetched together (concurrently, on the async stores: s3, gcs, http)
        for i, data in zip(urls, _cat_many([locations[i] for i in urls], limits), strict=True):
            out[i] = data
    groups: dict[tuple[str, str], list[int]] = {}
    for i, location in enumerate(locations):
        if out[i] is not None:
            continue
        outer, _ = split(location)
        groups.setdefault((kind(location), outer), []).append(i)
    for (k, outer), members in groups.items():
        try:
            inners = [split(locations[i])[1] for i in members]
            for i, data in zip(members, _READERS[k](outer, inners, limits), strict=True):
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


def _cat_many(urls: list[str], limits: ReadLimits = LIMITS) -> list[bytes | OSError]:
    """The bytes of each URL, by one fsspec `cat` of many paths per filesystem (a ranged read of at most
    max_bytes + 1 bytes each); a failure in its place."""
    out: list[bytes | OSError | None] = [None] * len(urls)
    by_fs: dict[int, tuple[Any, list[tuple[int, str]]]] = {}
    for i, url in enumerate(urls):
        fs, path = url_to_fs(url, limits)
        by_fs.setdefault(id(fs), (fs, []))[1].append((i, path))
    for fs, members in by_fs.values():
        paths = [path for _, path in members]
        try:
            found = fs.cat(paths, on_error="return", start=0, end=limits.max_bytes + 1)
        except Exception as e:  # the whole request failed: each member says so
            found = {path: e for path in paths}
        if not isinstance(found, dict):  # one path: fsspec gives its bytes, not a mapping
            found = {paths[0]: found}
        for i, path in members:
            out[i] = _checked_object(found.get(path, FileNotFoundError(path)), urls[i], limits)
    return out  # type: ignore[return-value]


def _checked_object(data: Any, url: str, limits: ReadLimits) -> bytes | OSError:
    if isinstance(data, BaseException):
        if isinstance(data, OSError):
            return data
        if "timeout" in type(data).__name__.lower():  # botocore's ReadTimeoutError and kin
            return TimeoutError(f"{url}: {type(data).__name__}: {data}")
        return OSError(f"{type(data).__name__}: {data}")
    if len(data) > limits.max_bytes:
        return too_large(url, len(data), limits)
    return data


def _files(outer: str, inners: list[str | None], limits: ReadLimits) -> Iterator[bytes | OSError]:
    for _ in inners:
        if is_url(outer):
            yield _cat_many([outer], limits)[0]
        else:
            try:
                yield read_file(outer, limits)[0]
            except LocationError as e:
                yield e


def _tar(outer: str, inners: list[str | None], limits: ReadLimits) -> Iterator[bytes | LocationError]:
    index = tar_index(outer, *_stamp(outer))
    with open_binary(outer, limits) as f:
        for inner in inners:
            name = member_name(inner or "")
            if name not in index:
                yield LocationError(f"no member {inner!r} in {outer}")
                continue
            offset, size = index[name]
            if size > limits.max_bytes:
                yield too_large(f"{outer}{SEP}{name}", size, limits)
                continue
            f.seek(offset)
            yield f.read(size)


def _zip(outer: str, inners: list[str | None], limits: ReadLimits) -> Iterator[bytes | LocationError]:
    with open_binary(outer, limits) as f, zipfile.ZipFile(f) as z:
        for inner in inners:
            where = f"{outer}{SEP}{inner}"
            try:
                info = z.getinfo(member_name(inner or ""))
            except KeyError:
                yield LocationError(f"no member {inner!r} in {outer}")
                continue
            try:  # the size the directory claims, before decompressing; then never more than the limit
                with z.open(info) as member:
                    yield read_bounded(member, where, limits, info.file_size)
            except TooLargeError as e:
                yield e


def _parquet(outer: str, inners: list[str | None], limits: ReadLimits) -> Iterator[bytes | LocationError]:
    import pyarrow.parquet as pq

    with open_binary(outer, limits) as f:
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
            data = image_bytes(groups[g][row - starts[g]].as_py(), f"{outer} row {row}")
            if isinstance(data, bytes) and len(data) > limits.max_bytes:
                data = too_large(f"{outer} row {row}", len(data), limits)
            yield data


def image_bytes(cell: Any, where: str) -> bytes | LocationError:
    """The bytes of a Parquet image cell: HF's struct<bytes, path> or plain binary."""
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not data:
        return LocationError(f"{where}: the image cell has no bytes")
    return bytes(data)


def _stamp(path: str) -> tuple[int, int]:
    return stat(path) or (0, 0)


def tar_index(path: str, size: int, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """Member name -> (data offset, size) of a tar (the last of a repeated name), read from its headers
    once per process and version of the file (size and mtime are part of the cache key)."""
    return _tar_scan(path, size, mtime_ns)[0]


@lru_cache(maxsize=64)
def _tar_scan(path: str, size: int, mtime_ns: int) -> tuple[dict[str, tuple[int, int]], tuple[str, ...]]:
    index: dict[str, tuple[int, int]] = {}
    names: list[str] = []
    with open_binary(path) as f, tarfile.open(fileobj=f, mode="r:") as t:
        try:
            for m in t:
                if m.isfile():
                    index[m.name] = (m.offset_data, m.size)
                    names.append(m.name)
        except tarfile.TarError as e:  # a truncated shard: the members before the damage are still there
            log.warning("%s: unreadable after %d member(s) (%s): the rest of the shard is skipped", path, len(index), e)
    return index, tuple(names)


def tar_members(path: str) -> list[str]:
    return sorted(tar_index(path, *_stamp(path)))


def tar_member_names(path: str) -> list[str]:
    """Every file member's name in the order of the tar, repeats included."""
    return list(_tar_scan(path, *_stamp(path))[1])


_READERS = {"file": _files, "url": _files, "tar": _tar, "zip": _zip, "parquet": _parquet}


def exists(location: str) -> bool:
    """Whether the file or container holding `location` is there (a member is assumed to be)."""
    return stat(location) is not None
