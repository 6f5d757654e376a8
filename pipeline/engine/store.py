"""The content-addressed Parquet store.

Layout under the data root:
    manifest/part-*.parquet                     one row per image (ingest)
    sources/part-*.parquet                      one row per file path seen by ingest
    features/<stage>/<fingerprint>/part-*.parquet + config.json
    models/<name>/                              fitted heads
    reports/                                    tables and metrics

A part file is written under a hidden temporary name and renamed when complete, so readers (and a
re-run after a kill) only ever see whole files. Resume is by keys: a stage computes the ids that
have no row yet in its directory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.engine import errors, keyindex, schemas
from pipeline.engine.keyindex import KeyIndex, KeySet

log = logging.getLogger(__name__)

PART_GLOB = "part-*.parquet"
METADATA_KEY = b"item"
# The stage that writes each table folder (its parts carry {"stage": ...} in their metadata).
TABLE_WRITERS = {"manifest": "ingest", "sources": "ingest"}


TMP_GLOB = ".part-*.tmp"
READ_ATTEMPTS = 20  # a reader racing a compaction (parts replaced or removed) reads the folder again
# Fault injection for the kill tests: seconds to sleep between writing a part's temporary file and
# renaming it, which widens the window in which a SIGKILL lands mid-write. Unset in normal use.
WRITE_DELAY_ENV = "ITEM_FAULT_WRITE_DELAY"


# Key indexes of folders already read in this process, by (folder, key column): the parts' signatures
# (path, mtime, size) each was built from, and the index.
_INDEX_CACHE: dict[tuple[str, str], tuple[tuple, KeyIndex]] = {}


class StoreError(RuntimeError):
    """A problem with files in the store (unreadable part, foreign schema)."""


class LockedError(RuntimeError):
    """Another live process is writing the same stage output."""


WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EDQUOT: "disk quota exceeded",
}


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a full disk, a read-only or a forbidden data directory into one StoreError naming the path."""
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise StoreError(
            f"cannot write {path}: {WRITE_ERRNOS[e.errno]} ({e.strerror}); free space or pick "
            "another --data-dir, then run again: finished parts are kept"
        ) from e


def _written_by(schema: pa.Schema) -> str | None:
    """The stage named in a part's metadata (feature parts carry their stage's identity)."""
    try:
        return json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}")).get("stage")
    except (ValueError, AttributeError):
        return None


class PartDir:
    """A directory of Parquet part files sharing one schema, keyed by a column (`image_id`).

    Args:
        path: the directory.
        schema: the schema parts are written with (None for read-only use).
        key: the key column.
    """

    def __init__(
        self,
        path: Path,
        schema: pa.Schema | None = None,
        key: str = "image_id",
        owner: tuple[str, str | None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.schema = schema
        self.key = key
        # Who may write here, as a part's metadata says: (stage, fingerprint) for a feature folder,
        # (writer, None) for a table (manifest, sources); None: not checked (a folder outside a store).
        self.owner = owner

    def parts(self) -> list[Path]:
        """Complete part files, oldest first (names start with a time stamp)."""
        if not self.path.is_dir():
            return []
        return sorted(self.path.glob(PART_GLOB))

    def signature(self) -> tuple[tuple[str, int, int], ...]:
        """(path, mtime, size) of each complete part, oldest first: changes whenever a part is written,
        replaced or removed."""
        out = []
        for part in self.parts():
            try:
                out.append(self._signature(part))
            except FileNotFoundError:  # removed since it was listed (a compaction): not part of the folder
                continue
        return tuple(out)

    def exists(self) -> bool:
        return bool(self.parts())

    def write(self, table: pa.Table, metadata: dict[str, Any] | None = None, name: str | None = None) -> Path | None:
        """Write one part atomically (temporary name, fsync, rename). Empty tables write nothing.

        `name` (from `part_name`) makes the write idempotent: a chunk computed twice (a retried task
        whose first worker died after writing) replaces its own file instead of duplicating rows.
        """
        if table.num_rows == 0:
            return None
        if self.schema is not None:
            for field in self.schema:  # columns added to a schema later are null in older writers' tables
                if field.name not in table.column_names and field.nullable:
                    table = table.append_column(field, pa.nulls(table.num_rows, field.type))
            table = table.select(self.schema.names).cast(self.schema)
        if metadata is not None:
            table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
        name = name or part_name()
        tmp = self.path / f".{name}.{uuid.uuid4().hex[:6]}.tmp"
        final = self.path / name
        try:
            with writing(self.path):
                self.path.mkdir(parents=True, exist_ok=True)
                pq.write_table(table, tmp, compression="zstd")
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)  # a half-written temporary file is worth nothing
            raise
        if os.environ.get(WRITE_DELAY_ENV):
            time.sleep(float(os.environ[WRITE_DELAY_ENV]))
        os.replace(tmp, final)
        _fsync_dir(self.path)
        return final

    def read_part(self, part: Path, columns: list[str] | None = None) -> pa.Table:
        """One part's rows; nullable columns added to the schema after the part was written read as null."""
        try:
            return pq.read_table(part, columns=columns)
        except (pa.ArrowInvalid, OSError, KeyError) as e:
            added = self._read_older_part(part, columns)
            if added is not None:
                return added
            raise StoreError(
                f"cannot read part file {part}: {e} (move it away, or run `item check --quarantine`)"
            ) from e

    def _read_older_part(self, part: Path, columns: list[str] | None) -> pa.Table | None:
        return read_with_added_columns(part, columns, self.schema)

    def index(self) -> KeyIndex:
        """Key code, status and part of every row, in part order (see keyindex).

        Part files never change once renamed into place (compaction replaces one under its name, with
        a new mtime), so each part's keys are read once per process; a folder's index is rebuilt from
        the cached parts only when its list of parts changed.
        """
        for _ in range(READ_ATTEMPTS):
            signature = self.signature()
            try:
                index = self._index(signature)
                self._indexed = signature  # the parts the index's positions refer to
                return index
            except StoreError:
                if self.signature() == signature:
                    raise  # nothing moved: the part itself is bad
                # a writer replaced or removed a part meanwhile (ingest compacting the manifest): read again
        signature = self.signature()
        index, self._indexed = self._index(signature), signature
        return index

    def _index(self, signature: tuple[tuple[str, int, int], ...]) -> KeyIndex:
        cached = _INDEX_CACHE.get((str(self.path), self.key))
        if cached is not None and cached[0] == signature:
            return cached[1]
        # Parts already indexed keep their keys (views of the previous index); only new parts are read.
        old = {sig: cached[1].part(i) for i, sig in enumerate(cached[0])} if cached is not None else {}
        has_status = self.schema is None or "status" in self.schema.names
        # Sizes first (a part's footer), so the index is filled in place: building it never holds the
        # keys twice (at a million images that is the difference between flat and doubled memory).
        sizes = [len(old[sig][1]) if sig in old else self._check_columns(Path(sig[0])) for sig in signature]
        index = KeyIndex.allocate(sizes)
        for i, sig in enumerate(signature):
            try:
                index.fill(i, *(old[sig] if sig in old else self._part_keys(Path(sig[0]), has_status)))
            except ValueError:
                raise StoreError(f"part file {sig[0]} changed while it was read; run again") from None
        _INDEX_CACHE[(str(self.path), self.key)] = (signature, index)
        return index

    @staticmethod
    def _signature(part: Path) -> tuple[str, int, int]:
        st = part.stat()
        return (str(part), st.st_mtime_ns, st.st_size)

    def _part_keys(self, part: Path, has_status: bool) -> tuple[np.ndarray, np.ndarray, pa.Array | None]:
        t = self.read_part(part, [self.key, "status"] if has_status else [self.key])
        codes, all_ids = keyindex.encode(t.column(self.key))
        if has_status:
            ok = (
                pc.equal(t.column("status"), schemas.STATUS_OK)
                .fill_null(False)
                .combine_chunks()
                .to_numpy(zero_copy_only=False)
            )
        else:  # e.g. sources/: every row counts
            ok = np.ones(t.num_rows, bool)
        return codes, ok, None if all_ids else t.column(self.key).combine_chunks()

    def _check_columns(self, part: Path) -> int:
        """The part's number of rows, once its columns are checked. A part with columns this folder's
        schema does not have was written elsewhere (a part of another stage copied in): reading it as
        this stage's rows would serve wrong data."""
        try:
            meta = pq.read_metadata(part)
            names = meta.schema.to_arrow_schema().names
        except (pa.ArrowInvalid, OSError) as e:
            raise StoreError(f"cannot read part file {part}: {e} (run `item check --quarantine`)") from e
        foreign = [n for n in names if self.schema is not None and n not in self.schema.names]
        if foreign:
            raise StoreError(
                f"part file {part} has columns {', '.join(foreign)} that {self.path.name} rows do not: it belongs to "
                "another stage (run `item check --quarantine` to move it aside)"
            )
        problem = self._foreign_part(meta.schema.to_arrow_schema())
        if problem:
            raise StoreError(
                f"part file {part}: {problem}; it does not belong in this folder (run `item check --quarantine`)"
            )
        return meta.num_rows

    def _foreign_part(self, schema: pa.Schema) -> str | None:
        """Why a part's own metadata says it was not written for this folder: a feature part must carry
        the identity that hashes to its folder's fingerprint, of its folder's stage; a manifest or
        sources part may only name the stage that writes them (parts written before they were
        stamped name none)."""
        if self.owner is None:
            return None
        stage, fingerprint = self.owner
        if fingerprint is not None:
            return _foreign(schema, stage=stage, fingerprint=fingerprint)
        stamped = _written_by(schema)
        if stamped is not None and stamped != stage:
            return f"written by stage {stamped!r}, not by {stage}"
        return None

    def current_keys(self) -> pa.Table:
        """Key and status of the current row of every key (no part read beyond the key columns)."""
        index = self.index()
        current = index.current()
        status = np.where(index.ok[current], schemas.STATUS_OK, schemas.STATUS_ERROR)
        return pa.table({self.key: index.ids(current), "status": pa.array(status, pa.string())})

    def compact(self, errors_only_for: KeySet | None = None, drop: set[str] | None = None) -> int:
        """Make the folder hold exactly one row per key: the current one (ok over error, then newest).

        Parts holding superseded rows (a retried error, a chunk written twice) are rewritten without
        them, each atomically under its own name (or removed when nothing is left), so a plain
        `pl.scan_parquet` of the folder counts each key once. With `errors_only_for` (the manifest's
        ids), error rows of other keys go too (a failed file that was fixed and re-ingested is a new
        image); ok rows stay, so no computed work is lost. Keys in `drop` go whatever their status.
        Call only while holding the folder's lock.
        Returns the number of rows removed.
        """
        index = self.index()
        if len(index) == 0:
            return 0
        chosen = index.current()  # the usual case: every row, decided by one sort of the keys
        keep = np.ones(len(chosen), bool)
        errors = np.nonzero(~index.ok[chosen])[0]
        if errors_only_for is not None and len(errors):
            keep[errors] = errors_only_for.contains(index.codes[chosen[errors]])
        if drop:
            keep &= ~KeySet.of(sorted(drop)).contains(index.codes[chosen])
        chosen = chosen[keep]
        if len(chosen) == len(index):
            return 0
        kept = dict(index.rows_by_part(chosen))
        removed = 0
        for i, part in enumerate(self.parts()):
            n = int(index.starts[i + 1] - index.starts[i])
            rows = kept.get(i, np.empty(0, np.int64))
            if len(rows) == n:
                continue
            removed += n - len(rows)
            if not len(rows):
                part.unlink()
                continue
            self.replace_part(part, pq.read_table(part).take(pa.array(rows, pa.int64())))  # metadata kept
        _fsync_dir(self.path)
        log.debug("compacted %s: %d superseded row(s) removed", self.path, removed)
        return removed

    def upgrade(self) -> int:
        """Rewrite parts written before columns of the schema existed (see `upgrade_parts`)."""
        return upgrade_parts(self)

    def replace_part(self, part: Path, table: pa.Table) -> None:
        """Write `table` in place of `part`, atomically under its name (a temporary file, renamed).
        Call only while holding the folder's lock."""
        tmp = self.path / f".{part.name}.{uuid.uuid4().hex[:6]}.tmp"
        with writing(self.path):
            pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, part)

    def ids(self, ok_only: bool = False) -> set[str]:
        """Every key that has a row (with `ok_only`, a row with status ok)."""
        index = self.index()
        return set(index.ids(np.nonzero(index.ok)[0] if ok_only else None).to_pylist())

    def _chosen(self, ids: Iterable[str] | None) -> tuple[KeyIndex, np.ndarray]:
        """The index, and the positions of the current rows of `ids` (of every key when None)."""
        index = self.index()
        if ids is None:
            return index, index.current()
        wanted = KeySet.of(pa.array(list(set(ids)), pa.string()))
        return index, index.current(np.nonzero(wanted.contains(index.codes))[0])

    def read(self, columns: list[str] | None = None, ids: Iterable[str] | None = None) -> pa.Table:
        """The current row of every key (optionally only `columns` and only the keys in `ids`)."""
        if columns is None and self.schema is not None:
            columns = self.schema.names  # so parts written before a column was added read alike
        tables: list[pa.Table] | None = None
        for _ in range(READ_ATTEMPTS):
            tables = None
            index, chosen = self._chosen(ids)
            indexed = self._indexed
            parts = [Path(sig[0]) for sig in indexed]
            try:
                tables = [
                    self.read_part(parts[part], columns).take(pa.array(rows, pa.int64()))
                    for part, rows in index.rows_by_part(chosen)
                ]
            except StoreError:
                if self.signature() == indexed:
                    raise
                time.sleep(0.01)
                continue  # a part removed while read: read the folder again
            if self.signature() == indexed:
                break  # no part replaced while read: the positions were theirs
            tables = None
            time.sleep(0.01)  # let the writer finish its rewrite
        if tables is None:
            raise StoreError(f"{self.path} kept changing while it was read ({READ_ATTEMPTS} times); run again")
        if not tables:
            return self.empty(columns)
        return pa.concat_tables(tables, promote_options="default")

    def iter_rows(self, columns: list[str], ids: set[str], chunk_size: int) -> Iterator[pa.Table]:
        """Stream the current rows of `ids` in chunks of at most `chunk_size`, one part file in memory at a time.

        Only parts that hold a wanted row are opened.
        """
        index, chosen = self._chosen(ids)
        all_parts = [Path(sig[0]) for sig in self._indexed]  # the parts the index's positions refer to
        pending: list[pa.Table] = []
        n_pending = 0
        for part, rows in index.rows_by_part(chosen):
            t = self.read_part(all_parts[part], columns).take(pa.array(rows, pa.int64()))
            while t.num_rows:
                take = min(chunk_size - n_pending, t.num_rows)
                pending.append(t.slice(0, take))
                n_pending += take
                t = t.slice(take)
                if n_pending == chunk_size:
                    yield pa.concat_tables(pending)
                    pending, n_pending = [], 0
        if pending:
            yield pa.concat_tables(pending)

    def remove_temporary(self) -> int:
        """Delete temporary files left by killed writers (call only while holding the lock)."""
        n = 0
        for tmp in self.path.glob(TMP_GLOB) if self.path.is_dir() else []:
            tmp.unlink(missing_ok=True)
            n += 1
        return n

    @contextmanager
    def lock(self, what: str) -> Iterator[None]:
        """Hold this directory's writer lock (an OS lock: a killed holder releases it at once).

        Raises:
            LockedError: naming the live holder (pid, host, start time).
        """
        with self._flock(what) as fd:
            os.ftruncate(fd, 0)
            os.pwrite(
                fd,
                f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(),
                0,
            )
            try:
                removed = self.remove_temporary()
                if removed:
                    log.info("removed %d temporary file(s) left by an interrupted run in %s", removed, self.path)
                yield
            finally:
                os.ftruncate(fd, 0)

    @contextmanager
    def _flock(self, what: str) -> Iterator[int]:
        """The folder's OS lock, held (its file descriptor), or LockedError naming the live holder."""
        path = self.path / ".lock"
        with writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockedError(
                f"{what} is already being computed into {self.path} by {holder}; "
                "wait for it to finish (the lock goes away when that process ends)"
            ) from None
        try:
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """The folder with no live writer, held so while files are moved (`check --quarantine`): its
        lock taken without touching what a writer left (LockedError while one writes)."""
        with self._flock("a check"):
            yield

    def empty(self, columns: list[str] | None = None) -> pa.Table:
        """No rows, with the columns' types (from the schema given, else from a part's schema)."""
        schema = self.schema
        if schema is None and self.parts():
            schema = pq.read_schema(self.parts()[0]).remove_metadata()
        if schema is None:
            raise StoreError(f"no parts in {self.path} and no schema to make an empty table")
        schema = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        return schema.empty_table()

    def write_config(self, config: dict[str, Any]) -> None:
        """Save the full configuration beside the parts (once; it never changes for a fingerprint)."""
        target = self.path / "config.json"
        if target.exists():
            return
        write_json(target, config)


def write_json(target: Path, obj: Any) -> Path:
    """Write JSON complete-or-absent: a temporary file, fsync, rename (a full disk leaves the old file)."""
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with writing(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                f.write(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def read_json(path: Path) -> Any | None:
    """A JSON file's content, or None when it is absent or not whole JSON (a cache to recompute)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def part_name(keys: list[str] | None = None) -> str:
    """A part file name that sorts by creation time; with `keys`, it also names exactly that chunk."""
    tag = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:12] if keys else uuid.uuid4().hex[:12]
    return f"part-{time.time_ns():016x}-{tag}.parquet"


def check_parts(root: str | Path, quarantine: bool = False) -> list[tuple[Path, str]]:
    """Every file under `root` that a reader must not see: part files that are not readable Parquet
    keyed by image_id (or path) with a status, parts written for another stage or configuration than
    their folder's, and temporary files left by a killed writer. A folder is looked at under its
    writers' lock: while a writer holds it, its temporary files are that writer's (not reported) and
    nothing in it is moved.

    With `quarantine`, such files move to `root/quarantine/<same relative path>`, out of every reader's
    way (a name quarantined before is kept: the newcomer gets a suffix).
    """
    root = Path(root)
    bad = []
    found = sorted({*root.rglob(PART_GLOB), *root.rglob(TMP_GLOB), *root.rglob(".*.tmp")})
    by_folder: dict[Path, list[tuple[Path, str]]] = {}
    for part in found:
        if "quarantine" in part.relative_to(root).parts:
            continue
        reason = _part_problem(root, part)
        if reason:
            by_folder.setdefault(part.parent, []).append((part, reason))
    for folder, problems in by_folder.items():
        try:  # only while no writer holds the folder: a live writer's temporary file is its own
            with PartDir(folder).quiet():
                for part, reason in problems:
                    bad.append((part, reason))
                    if quarantine:
                        target = root / "quarantine" / part.relative_to(root)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        if target.exists():  # a same-named file quarantined before keeps its place
                            target = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}")
                        os.replace(part, target)
        except StoreError:  # the lock cannot even be made (a read-only data dir): report, move nothing
            bad += [(p, r) for p, r in problems]
        except LockedError:
            note = " (left in place: a writer holds this folder now; check again after it)" if quarantine else ""
            bad += [(p, r + note) for p, r in problems if not p.name.startswith(".")]  # its temporaries are live
    return bad


def _part_problem(root: Path, part: Path) -> str | None:
    if part.name.startswith("."):
        return "temporary file left by an interrupted writer"
    try:
        schema = pq.read_schema(part)
        names = schema.names
        key = "path" if part.parent.name == "sources" else "image_id"
        missing = [c for c in (key, "status") if c not in names and not (c == "status" and key == "path")]
        if missing:
            return f"not a part of this store: no column {', '.join(missing)}"
        pq.read_table(part, columns=[key])
    except (pa.ArrowInvalid, OSError) as e:
        return f"unreadable Parquet: {e}"
    rel = part.relative_to(root).parts
    if len(rel) == 4 and rel[0] == "features":
        owner: tuple[str, str | None] | None = (rel[1], rel[2])
    elif len(rel) == 2 and rel[0] in TABLE_WRITERS:
        owner = (TABLE_WRITERS[rel[0]], None)
    else:
        owner = None
    return PartDir(part.parent, owner=owner)._foreign_part(schema)


def _foreign(schema: pa.Schema, stage: str, fingerprint: str) -> str | None:
    """Why a feature part does not belong in features/<stage>/<fingerprint>/ (its metadata says which
    stage and configuration wrote it), or None."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return "no ITEM metadata: not written by a stage of this pipeline"
    try:
        identity = json.loads(raw)
    except ValueError:
        return "unreadable ITEM metadata"
    written = hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    if identity.get("stage") != stage or written != fingerprint:
        return f"written by stage {identity.get('stage')!r} for configuration {written}, not {stage} [{fingerprint}]"
    return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- parts written before a column existed ---------------------------------------------------------


def read_with_added_columns(part: Path, columns: list[str] | None, schema_: pa.Schema | None) -> pa.Table | None:
    """A part written before some columns existed: the error columns are derived from its messages
    (errors.legacy_kind), other nullable columns of the schema read as null."""
    if columns is None:
        return None
    try:
        schema = pq.read_schema(part)
    except (pa.ArrowInvalid, OSError):
        return None
    present = set(schema.names)
    missing = [c for c in columns if c not in present]
    derived = {"error_kind", "error_stage"} if "error" in present else set()
    nullable = {f.name for f in schema_ if f.nullable} if schema_ is not None else set()
    if not missing or not all(c in derived or c in nullable for c in missing):
        return None
    read = [c for c in columns if c in present]
    if derived & set(missing) and "error" not in read:
        read.append("error")
    table = pq.read_table(part, columns=read)
    if derived & set(missing):
        # An error with no stage in its message arose in the stage that wrote the part (its metadata
        # names it; the manifest's parts carried none: None, which readers take as the manifest's writer).
        own = _written_by(schema)
        pairs = [errors.legacy_kind(e) for e in table.column("error").to_pylist()]
        table = table.append_column("error_kind", pa.array([k for k, _ in pairs], pa.string()))
        stages = [st or (own if k is not None else None) for k, st in pairs]
        table = table.append_column("error_stage", pa.array(stages, pa.string()))
    for name in missing:
        if name not in table.column_names:
            field = schema_.field(name)
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(columns)


def upgrade_parts(part_dir: PartDir) -> int:
    """Rewrite parts written before columns of the schema existed (the error columns, derived from
    their messages; nullable columns added later, as null), each atomically under its own name with
    its metadata, so every part holds one schema. Call only while holding the folder's lock; the
    parts' keys do not change. Returns the number of parts rewritten."""
    if part_dir.schema is None:
        return 0
    rewritten = 0
    for part in part_dir.parts():
        schema = pq.read_schema(part)
        if all(name in schema.names for name in part_dir.schema.names):
            continue
        table = part_dir.read_part(part, part_dir.schema.names).cast(part_dir.schema)
        part_dir.replace_part(part, table.replace_schema_metadata(schema.metadata))
        rewritten += 1
    if rewritten:
        _fsync_dir(part_dir.path)
        log.info("%s: %d part(s) rewritten with the current columns", part_dir.path, rewritten)
    return rewritten


class Store:
    """Paths of everything under one data root."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"the data dir {self.root} is a file, not a folder: give --data-dir a folder")

    @property
    def manifest(self) -> PartDir:
        return PartDir(self.root / "manifest", schemas.MANIFEST, owner=(TABLE_WRITERS["manifest"], None))

    @property
    def sources(self) -> PartDir:
        return PartDir(self.root / "sources", schemas.SOURCES, key="path", owner=(TABLE_WRITERS["sources"], None))

    def features(self, stage: str, fingerprint: str, schema: pa.Schema | None = None) -> PartDir:
        return PartDir(self.root / "features" / stage / fingerprint, schema, owner=(stage, fingerprint))

    def fingerprints(self, stage: str) -> list[str]:
        """Every fingerprint directory present for a stage (current and older configurations)."""
        base = self.root / "features" / stage
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    @property
    def models(self) -> Path:
        return self.root / "models"

    def own_folders(self) -> list[Path]:
        """The folders the store writes its tables, heads, reports and quarantine into: never inputs
        (images kept elsewhere under the root, like the demo's raw/, are inputs like any)."""
        return [self.root / name for name in ("manifest", "sources", "features", "models", "reports", "quarantine")]

    @property
    def reports(self) -> Path:
        return self.root / "reports"
