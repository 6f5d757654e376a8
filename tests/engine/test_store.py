"""The Parquet store: round trips, atomic parts, keyed reads."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.engine.store import PartDir, Store, StoreError
from stages.distance import distance_schema


def distance_rows(ids, dim=8):
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "image_id": ids,
            "d_global": pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=len(ids) * dim), pa.float32()), dim),
            "d_local": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(len(ids) * dim), pa.float32()), dim),
            "n_objects": pa.array([0] * len(ids), pa.int32()),
            "cos_global": pa.array([0.5] * len(ids), pa.float32()),
            "cos_local": pa.nulls(len(ids), pa.float32()),
            "status": ["ok"] * len(ids),
            "error": pa.nulls(len(ids), pa.string()),
        }
    )


def test_round_trip_keeps_schema_and_reads_as_polars_array(tmp_path):
    part_dir = PartDir(tmp_path / "d", distance_schema(8))
    table = distance_rows(["a", "b", "c"])
    path = part_dir.write(table, metadata={"stage": "distance", "config": {"x": 1}})
    back = pq.read_table(path)
    assert back.schema.field("d_global").type == pa.list_(pa.float32(), 8)
    assert back.column("d_global").to_pylist() == table.column("d_global").to_pylist()
    assert b"item" in back.schema.metadata
    frame = pl.scan_parquet(str(tmp_path / "d" / "*.parquet")).collect()
    assert frame.schema["d_global"] == pl.Array(pl.Float32, 8)
    assert frame["image_id"].to_list() == ["a", "b", "c"]


def test_write_is_atomic_and_temporary_files_are_not_data(tmp_path):
    part_dir = PartDir(tmp_path / "d", distance_schema(8))
    part_dir.write(distance_rows(["a"]))
    # A half-written file from a killed run has a hidden temporary name: never read as data.
    (tmp_path / "d" / ".part-dead.parquet.tmp").write_bytes(b"PAR1 truncated")
    assert part_dir.ids() == {"a"}
    assert [p.name.startswith("part-") for p in part_dir.parts()] == [True]
    assert not list((tmp_path / "d").glob("*.tmp"))[0].name.endswith(".parquet")


def test_empty_table_writes_nothing(tmp_path):
    part_dir = PartDir(tmp_path / "d", distance_schema(8))
    assert part_dir.write(distance_rows([])) is None
    assert part_dir.parts() == []


def test_iter_rows_streams_wanted_keys_once_in_chunks(tmp_path):
    part_dir = PartDir(tmp_path / "d", distance_schema(8))
    part_dir.write(distance_rows(["a", "b", "c"]))
    part_dir.write(distance_rows(["d", "e"]))
    part_dir.write(distance_rows(["x", "y"]))  # holds no wanted key: never opened
    part_dir.write(distance_rows(["a"]))  # a newer row for "a" (a retry): it replaces the old one
    chunks = list(part_dir.iter_rows(["image_id", "cos_global"], {"a", "c", "d", "e"}, chunk_size=3))
    assert [c.num_rows for c in chunks] == [3, 1]
    assert [i for c in chunks for i in c.column("image_id").to_pylist()] == ["c", "d", "e", "a"]


def test_current_row_prefers_ok_then_newest(tmp_path):
    part_dir = PartDir(tmp_path / "d", distance_schema(8))
    failed = distance_rows(["a", "b"]).set_column(6, "status", pa.array(["error", "error"]))
    part_dir.write(distance_rows(["c"]))
    part_dir.write(failed)
    retried = distance_rows(["a"])  # the retry of "a" succeeded; "b" failed again below
    part_dir.write(retried)
    part_dir.write(failed.slice(1))
    current = part_dir.read(["image_id", "status"])
    assert dict(zip(*[current.column(c).to_pylist() for c in ("image_id", "status")], strict=True)) == {
        "a": "ok",
        "b": "error",
        "c": "ok",
    }
    assert part_dir.ids(ok_only=True) == {"a", "c"} and part_dir.ids() == {"a", "b", "c"}


def test_read_filters_by_ids_and_columns(tmp_path):
    part_dir = PartDir(tmp_path / "d", distance_schema(8))
    part_dir.write(distance_rows(["a", "b"]))
    part_dir.write(distance_rows(["c"]))
    table = part_dir.read(["image_id", "n_objects"], ids=["c", "a", "zzz"])
    assert sorted(table.column("image_id").to_pylist()) == ["a", "c"]
    assert table.column_names == ["image_id", "n_objects"]


def test_corrupt_part_is_a_clear_error_naming_the_file(tmp_path):
    part_dir = PartDir(tmp_path / "d", distance_schema(8))
    part_dir.write(distance_rows(["a"]))
    bad = tmp_path / "d" / "part-0-bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(StoreError, match="part-0-bad.parquet"):
        part_dir.ids()


def test_config_json_written_once(tmp_path):
    store = Store(tmp_path)
    part_dir = store.features("caption", "abc123")
    part_dir.write_config({"a": 1})
    part_dir.write_config({"a": 2})
    assert (tmp_path / "features" / "caption" / "abc123" / "config.json").read_text().strip().endswith("}")
    assert '"a": 1' in (tmp_path / "features" / "caption" / "abc123" / "config.json").read_text()
    assert store.fingerprints("caption") == ["abc123"]
