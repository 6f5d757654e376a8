"""Locations cannot be misread (issue 21, class 1) and inputs never drop or mislabel silently
(class 3): each reproduction as it was reported, ending in one row per image, each row's bytes its own."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine import locations
from pipeline.engine.store import Store
from tests.conftest import tiny


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def add(t: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


def every_row_holds_its_own_bytes(store: Store) -> pl.DataFrame:
    """Caption every image: an ok row for each (a row read from other bytes would be `file changed`)."""
    run_stage("caption", tiny(), store)
    rows = pl.from_arrow(make_stage("caption", tiny(), store).output.read())
    assert rows.filter(pl.col("status") != "ok").height == 0, rows.filter(pl.col("status") != "ok")["error"]
    manifest = pl.from_arrow(store.manifest.read())
    for location, image_id in zip(manifest["path"], manifest["image_id"], strict=True):  # by the bytes
        assert hashlib.sha256(locations.read(location)).hexdigest() == image_id, location
    return manifest


def test_a_file_named_with_the_separator_is_that_file(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for k, name in enumerate(("a.jpg", "b.jpg", "a.jpg::b.jpg")):
        (folder / name).write_bytes(png(k))
    store = Store(tmp_path / "data")
    run_stage("ingest", tiny(), store, inputs=[folder])
    manifest = every_row_holds_its_own_bytes(store)
    assert manifest.height == 3
    assert {os.path.basename(locations.os_path(p)) for p in manifest["path"]} == {"a.jpg", "b.jpg", "a.jpg::b.jpg"}
    assert run_stage("ingest", tiny(), store, inputs=[folder]).todo == 0  # nothing changed


def test_relative_inputs_are_stored_absolute_and_read_from_anywhere(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "P").mkdir()
    table = pa.table({"image": [{"bytes": png(k), "path": None} for k in range(3)], "label": [0, 1, 0]})
    pq.write_table(table, tmp_path / "P" / "train-00000.parquet")
    with tarfile.open(tmp_path / "P" / "shard.tar", "w") as t:
        add(t, "k1.png", png(10))
    (tmp_path / "P" / "list.csv").write_text("path,label\nshard.tar::k1.png,1\n")  # a member, relative to the list
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "data")
    run_stage("ingest", tiny(), store, inputs=["P/train-00000.parquet", "P/list.csv"])
    monkeypatch.chdir("/")
    manifest = every_row_holds_its_own_bytes(store)
    assert manifest.height == 4 and all(locations.split(p)[0].startswith(str(tmp_path)) for p in manifest["path"])
    monkeypatch.chdir(tmp_path / "P")  # the same files named from another folder: the same locations
    again = run_stage("ingest", tiny(), store, inputs=["train-00000.parquet", "list.csv"])
    assert again.todo == 0 and pl.from_arrow(store.manifest.read()).height == 4  # no phantom row


def test_a_tar_member_whose_name_is_not_utf8_is_ingested_and_so_are_the_loose_images_beside_it(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        (folder / f"{k}.png").write_bytes(png(k))
    with tarfile.open(folder / "shard-00000.tar", "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as t:
        add(t, "caf\udce9.png", png(20))  # the byte 0xE9 alone: not UTF-8
        add(t, "%literal.png", png(21))  # a real name that looks encoded
    store = Store(tmp_path / "data")
    run_stage("ingest", tiny(), store, inputs=[folder])
    manifest = every_row_holds_its_own_bytes(store)
    assert manifest.height == 5
    members = sorted(locations.member_name(locations.split(p)[1]) for p in manifest["path"] if "::" in p)
    assert members == ["%literal.png", "caf\udce9.png"]


def test_every_image_member_of_a_shard_is_a_row_even_when_keys_repeat(tmp_path, caplog):
    with tarfile.open(tmp_path / "shard.tar", "w") as t:
        for k in range(6):
            add(t, f"photo.2023.00{k}.jpg", png(k))
        add(t, "same.jpg", png(10))
        add(t, "same.png", png(11))
        add(t, "same.json", b'{"label": 1}')
        add(t, "broken.png", png(12))
        add(t, "broken.json", b"{not json")  # a bad sidecar: its key only
    store = Store(tmp_path / "data")
    with caplog.at_level(logging.WARNING):
        run_stage("ingest", tiny(), store, inputs=[tmp_path / "shard.tar"])
    manifest = every_row_holds_its_own_bytes(store)
    assert manifest.height == 9
    labels = dict(zip((locations.split(p)[1] for p in manifest["path"]), manifest["label"], strict=True))
    assert labels["same.jpg"] == labels["same.png"] == 1 and labels["broken.png"] is None
    assert "key(s) hold more than one image" in caplog.text


def test_symlinked_class_folders_are_followed_once_and_a_folder_named_like_an_archive_is_a_folder(tmp_path):
    (tmp_path / "real").mkdir()
    for k in range(4):
        (tmp_path / "real" / f"{k}.png").write_bytes(png(k))
    gen = tmp_path / "gen"
    (gen / "1_fake").mkdir(parents=True)
    (gen / "1_fake" / "f.png").write_bytes(png(9))
    (gen / "0_real").symlink_to(tmp_path / "real", target_is_directory=True)
    (gen / "1_fake" / "loop").symlink_to(gen, target_is_directory=True)  # a link back up the tree
    odd = tmp_path / "looks.zip"
    odd.mkdir()
    (odd / "z.png").write_bytes(png(30))
    store = Store(tmp_path / "data")
    run_stage("ingest", tiny(), store, inputs=[gen, odd])
    manifest = every_row_holds_its_own_bytes(store)
    assert manifest.height == 6
    assert sorted(manifest["label"].drop_nulls().to_list()) == [0, 0, 0, 0, 1]


def test_members_named_outside_the_archive_are_members_and_repeated_names_are_warned(tmp_path, caplog):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("../x.png", png(1))
        z.writestr("gen/1_fake/y.png", png(2))
    with tarfile.open(tmp_path / "t.tar", "w") as t:
        add(t, "../up.png", png(3))
        add(t, "/abs.png", png(4))
        add(t, "dup.png", png(5))
        add(t, "dup.png", png(6))
    store = Store(tmp_path / "data")
    with caplog.at_level(logging.WARNING):
        run_stage("ingest", tiny(), store, inputs=[tmp_path / "a.zip", tmp_path / "t.tar"])
    manifest = every_row_holds_its_own_bytes(store)
    assert manifest.height == 5
    assert not set(manifest["generator"].drop_nulls()) & {"..", "/"}
    assert "named outside the archive" in caplog.text and "appear more than once" in caplog.text
    dup = manifest.filter(pl.col("path").str.ends_with("::dup.png"))
    assert dup["image_id"].to_list() == [hashlib.sha256(png(6)).hexdigest()]  # the last copy, as said
    assert not (tmp_path.parent / "up.png").exists() and not Path("/abs.png").exists()
