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

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

PART_GLOB = "part-*.parquet"
METADATA_KEY = b"item"


class StoreError(RuntimeError):
    """A problem with files in the store (unreadable part, foreign schema)."""


class PartDir:
    """A directory of Parquet part files sharing one schema, keyed by a column (`image_id`).

    Args:
        path: the directory.
        schema: the schema parts are written with (None for read-only use).
        key: the key column.
    """

    def __init__(self, path: Path, schema: pa.Schema | None = None, key: str = "image_id") -> None:
        self.path = Path(path)
        self.schema = schema
        self.key = key

    def parts(self) -> list[Path]:
        """Complete part files, oldest first (names start with a time stamp)."""
        if not self.path.is_dir():
            return []
        return sorted(self.path.glob(PART_GLOB))

    def exists(self) -> bool:
        return bool(self.parts())

    def write(self, table: pa.Table, metadata: dict[str, Any] | None = None) -> Path | None:
        """Write one part atomically (temporary name, fsync, rename). Empty tables write nothing."""
        if table.num_rows == 0:
            return None
        if self.schema is not None:
            table = table.select(self.schema.names).cast(self.schema)
        if metadata is not None:
            table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
        self.path.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns():x}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.path / f".{name}.tmp"
        final = self.path / name
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.path)
        return final

    def read_part(self, part: Path, columns: list[str] | None = None) -> pa.Table:
        try:
            return pq.read_table(part, columns=columns)
        except (pa.ArrowInvalid, OSError, KeyError) as e:
            raise StoreError(f"cannot read part file {part}: {e}") from e

    def key_table(self) -> pa.Table:
        """The key column (and status) of every part, with the part each row came from."""
        tables = []
        for i, part in enumerate(self.parts()):
            t = self.read_part(part, [self.key, "status"])
            tables.append(t.append_column("_part", pa.array([i] * t.num_rows, pa.int32())))
        if not tables:
            return pa.table(
                {
                    self.key: pa.array([], pa.string()),
                    "status": pa.array([], pa.string()),
                    "_part": pa.array([], pa.int32()),
                }
            )
        return pa.concat_tables(tables)

    def ids(self) -> set[str]:
        """Every key that has a row."""
        return set(self.key_table().column(self.key).to_pylist())

    def read(self, columns: list[str] | None = None, ids: Iterable[str] | None = None) -> pa.Table:
        """All rows (optionally only `columns` and only the keys in `ids`)."""
        wanted = None if ids is None else pa.array(sorted(set(ids)), pa.string())
        tables = []
        for part in self.parts():
            t = self.read_part(part, columns)
            if wanted is not None:
                t = t.filter(pc.is_in(t.column(self.key), value_set=wanted))
            tables.append(t)
        if not tables:
            return self.empty(columns)
        return pa.concat_tables(tables, promote_options="default")

    def iter_rows(self, columns: list[str], ids: set[str], chunk_size: int) -> Iterator[pa.Table]:
        """Stream the rows of `ids` in chunks of at most `chunk_size`, one part file in memory at a time.

        Only parts that hold a wanted key are opened. Each key is yielded once (its first row).
        """
        keys = self.key_table()
        wanted = pa.array(sorted(ids), pa.string())
        mask = pc.is_in(keys.column(self.key), value_set=wanted)
        parts = sorted(set(keys.filter(mask).column("_part").to_pylist()))
        all_parts = self.parts()
        seen: set[str] = set()
        pending: list[pa.Table] = []
        n_pending = 0
        for i in parts:
            t = self.read_part(all_parts[i], columns)
            keep = [k not in seen and k in ids for k in t.column(self.key).to_pylist()]
            t = t.filter(pa.array(keep, pa.bool_()))
            seen.update(t.column(self.key).to_pylist())
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

    def empty(self, columns: list[str] | None = None) -> pa.Table:
        if self.schema is None:
            raise StoreError(f"no parts in {self.path} and no schema to make an empty table")
        schema = self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
        return schema.empty_table()

    def write_config(self, config: dict[str, Any]) -> None:
        """Save the full configuration beside the parts (once; it never changes for a fingerprint)."""
        target = self.path / "config.json"
        if target.exists():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".config.json.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, target)


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


class Store:
    """Paths of everything under one data root."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def manifest(self) -> PartDir:
        from pipeline import schemas

        return PartDir(self.root / "manifest", schemas.MANIFEST)

    @property
    def sources(self) -> PartDir:
        from pipeline import schemas

        return PartDir(self.root / "sources", schemas.SOURCES, key="path")

    def features(self, stage: str, fingerprint: str, schema: pa.Schema | None = None) -> PartDir:
        return PartDir(self.root / "features" / stage / fingerprint, schema)

    def fingerprints(self, stage: str) -> list[str]:
        """Every fingerprint directory present for a stage (current and older configurations)."""
        base = self.root / "features" / stage
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"
