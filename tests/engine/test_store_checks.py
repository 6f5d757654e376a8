"""The store checks itself: every reader refuses a part its folder's stage and configuration did not
write; `check --quarantine` never moves what a live writer holds; ingest hashes again a file a stage
found changed, whatever its size and mtime say."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.config import resolve
from pipeline.engine.store import Store, StoreError, check_parts
from tests.conftest import tiny

ROOT = Path(__file__).resolve().parents[2]


def small_store(tmp_path: Path, n: int = 4) -> Store:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(folder / f"{k}.png")
    store = Store(tmp_path / "data")
    run_stage("ingest", tiny(), store, inputs=[folder])
    return store


def test_a_part_of_another_configuration_copied_into_a_feature_folder_is_refused_by_readers(tmp_path):
    store = small_store(tmp_path)
    other = resolve("tiny", {"caption": {"max_new_tokens": 5}}, {"device": "cpu"})
    run_stage("caption", tiny(), store)
    run_stage("caption", other, store)
    mine, theirs = make_stage("caption", tiny(), store).output, make_stage("caption", other, store).output
    assert mine.path != theirs.path
    shutil.copy(theirs.parts()[0], mine.path / theirs.parts()[0].name.replace("part-", "part-f"))  # same schema
    with pytest.raises(StoreError, match="written by stage 'caption' for configuration .* it does not belong"):
        mine.read()
    bad = check_parts(store.root)  # check names the same one file
    assert len(bad) == 1 and bad[0][0].parent == mine.path and "configuration" in bad[0][1]


def test_a_manifest_part_stamped_by_another_stage_is_refused_unstamped_older_parts_are_read(tmp_path):
    store = small_store(tmp_path)
    part = store.manifest.parts()[0]
    assert pq.read_schema(part).metadata[b"item"] == b'{"stage": "ingest"}'
    table = pq.read_table(part)
    pq.write_table(table.replace_schema_metadata(None), part)  # as written before parts were stamped
    assert store.manifest.read().num_rows == 4
    pq.write_table(table.replace_schema_metadata({b"item": b'{"stage": "predict"}'}), part)
    with pytest.raises(StoreError, match="written by stage 'predict', not by ingest"):
        store.manifest.read()


HOLDER = """
import sys, time
import time
from pathlib import Path
from pipeline.engine.store import PartDir
folder = PartDir(Path(sys.argv[1]))
with folder.lock("a test writer"):
    (folder.path / ".part-live.abc123.tmp").write_bytes(b"half written")
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_check_quarantine_leaves_a_live_writer_s_folder_alone_and_keeps_earlier_quarantined_files(tmp_path):
    store = small_store(tmp_path)
    run_stage("caption", tiny(), store)
    folder = make_stage("caption", tiny(), store).output.path
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(folder), "30"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "holding"
        assert check_parts(store.root, quarantine=True) == []  # its temporary file is live: not reported
        assert (folder / ".part-live.abc123.tmp").exists()
    finally:
        writer.kill()
        writer.wait()
    # the writer is gone (SIGKILL releases its lock): now the file is a leftover, quarantined twice over
    bad = check_parts(store.root, quarantine=True)
    assert [(p.name, r) for p, r in bad] == [(".part-live.abc123.tmp", "temporary file left by an interrupted writer")]
    (folder / ".part-live.abc123.tmp").write_bytes(b"another")
    check_parts(store.root, quarantine=True)
    kept = sorted(p.read_bytes() for p in (store.root / "quarantine").rglob(".part-live*"))
    assert kept == [b"another", b"half written"]


def test_bytes_replaced_with_size_and_mtime_kept_are_ingested_again_after_a_stage_finds_them_changed(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    path = folder / "a.bmp"  # a BMP's size depends only on its dimensions
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(path)
    store = Store(tmp_path / "data")
    run_stage("ingest", tiny(), store, inputs=[folder])
    stat = path.stat()
    Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    first = run_stage("caption", tiny(), store)
    assert first.error == 1
    rows = pl.from_arrow(make_stage("caption", tiny(), store).output.read())
    assert rows["error_kind"].to_list() == ["file_changed"]
    again = run_stage("ingest", tiny(), store, inputs=[folder])
    assert again.ok == 1  # hashed again: the new bytes are a new image
    assert run_stage("caption", tiny(), store).ok == 1
    new_id = hashlib.sha256(path.read_bytes()).hexdigest()  # the expectation from the bytes themselves
    manifest = pl.from_arrow(store.manifest.read())
    assert new_id in manifest.filter(pl.col("path") == str(path))["image_id"].to_list()
    captions = pl.from_arrow(make_stage("caption", tiny(), store).output.read())
    assert captions.filter(pl.col("image_id") == new_id)["status"].to_list() == ["ok"]


def test_a_data_dir_that_is_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        Store(tmp_path / "afile")


def test_a_reader_racing_compaction_never_fails_and_never_loses_or_doubles_a_key(tmp_path):
    """What `item caption` saw while `item ingest` compacted the manifest: `cannot read part file`."""
    import threading

    import pyarrow as pa

    from pipeline.engine import schemas
    from pipeline.engine.store import PartDir

    schema = schemas.rows_schema(pa.field("n", pa.int64()))
    folder = PartDir(tmp_path / "rows", schema)
    keys = [f"{k:064x}" for k in range(40)]

    def rows(value: int, some: list[str]) -> pa.Table:
        return pa.table({"image_id": some, "n": [value] * len(some), "status": ["ok"] * len(some),
                         "error": [None] * len(some)})

    for k in range(0, 40, 10):
        folder.write(rows(0, keys[k : k + 10]), metadata={"stage": "ingest"})
    stop, problems = threading.Event(), []

    def writer() -> None:
        value = 1
        while not stop.is_set():  # newer rows for some keys, then compaction removes the superseded ones
            folder.write(rows(value, keys[value % 4 * 10 : value % 4 * 10 + 10]), metadata={"stage": "ingest"})
            folder.compact()
            value += 1
            time.sleep(0.02)  # ingest compacts once per run, not in a tight loop

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 4
        reads = 0
        while time.monotonic() < deadline:
            try:
                table = PartDir(tmp_path / "rows", schema).read()
            except StoreError as e:
                problems.append(str(e))
                continue
            reads += 1
            ids = table.column("image_id").to_pylist()
            if sorted(ids) != keys:
                problems.append(f"{len(ids)} rows, {len(set(ids))} keys")
    finally:
        stop.set()
        thread.join()
    assert reads > 10 and problems == []


def test_a_data_dir_under_a_folder_named_features_is_an_ordinary_data_dir(tmp_path):
    """The feature-folder check goes by the store's own layout, not by folder names on the way to it."""
    (tmp_path / "proj" / "features" / "exp1").mkdir(parents=True)
    store = small_store(tmp_path / "proj" / "features" / "exp1")
    assert store.manifest.read().num_rows == 4
    run_stage("caption", tiny(), store)
    assert check_parts(store.root) == []
