"""ingest: labels and generators from folders and lists, one row per file, odd files, re-runs."""

from __future__ import annotations

import csv
import shutil

import polars as pl
from PIL import Image

from pipeline.app.runner import run_stage
from pipeline.engine.keys import image_id_of_bytes
from pipeline.engine.sources import derived_split
from pipeline.engine.store import Store
from tests.conftest import tiny


def manifest(store: Store) -> pl.DataFrame:
    return pl.from_arrow(store.manifest.read())


def test_folders_give_label_generator_and_split(tmp_path, image_root):
    store = Store(tmp_path / "data")
    stats = run_stage("ingest", tiny(), store, inputs=[image_root], dataset="demo")
    m = manifest(store)
    assert stats.ok == 24 and m.height == 24
    assert m["image_id"].n_unique() == 24
    one = m.filter(pl.col("path").str.contains("toygan/1_fake/0000.png")).row(0, named=True)
    assert (one["label"], one["generator"], one["dataset"], one["format"]) == (1, "toygan", "demo", "PNG")
    assert one["image_id"] == image_id_of_bytes((image_root / "toygan/1_fake/0000.png").read_bytes())
    assert one["split"] == derived_split(one["image_id"], (0.7, 0.1, 0.2))
    assert set(m["label"].to_list()) == {0, 1}
    assert set(m["generator"].to_list()) == {"toygan", "toydiff"}


def test_split_folder_and_duplicates_and_rerun(tmp_path):
    root = tmp_path / "set"
    for split in ("train", "val", "test"):
        (root / split / "0_real").mkdir(parents=True)
    Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "train/0_real/a.png")
    # Same bytes at a second path: one image; the first path in sorted walk order (train/) wins.
    shutil.copy(root / "train/0_real/a.png", root / "val/0_real/copy.png")
    Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "test/0_real/b.jpg", format="PNG")  # extension lies
    store = Store(tmp_path / "data")
    stats = run_stage("ingest", tiny(), store, inputs=[root])
    m = manifest(store)
    assert stats.todo == 3 and m.height == 2  # identical bytes at two paths are one image
    assert m.filter(pl.col("path").str.ends_with("b.jpg"))["format"].to_list() == ["PNG"]
    assert sorted(m["split"].to_list()) == ["test", "train"]
    assert m["generator"].to_list() == ["set", "set"]
    sources = pl.from_arrow(store.sources.read())
    assert sources.height == 3 and sources["image_id"].n_unique() == 2
    again = run_stage("ingest", tiny(), store, inputs=[root])
    assert again.todo == 0 and manifest(store).height == 2


def test_csv_list_resolves_relative_paths_and_reads_columns(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (16, 16), (200, 0, 0)).save(tmp_path / "imgs/x.png")
    Image.new("RGB", (16, 16), (0, 200, 0)).save(tmp_path / "imgs/y.png")
    listing = tmp_path / "list.csv"
    with listing.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "generator", "split", "caption"])
        w.writerow(["imgs/x.png", "fake", "sdxl", "val", "a red square"])
        w.writerow(["imgs/y.png", "0", "", "", ""])
    store = Store(tmp_path / "data")
    run_stage("ingest", tiny(), store, inputs=[listing])
    m = manifest(store).sort("label")
    assert m["label"].to_list() == [0, 1]
    assert m["generator"].to_list() == [None, "sdxl"]
    assert m["caption"].to_list() == [None, "a red square"]
    assert m["split"][1] == "val" and m["split"][0] in ("train", "val", "test")
    assert all(p.startswith(str(tmp_path)) for p in m["path"].to_list())


def test_every_odd_file_gets_exactly_one_row_matching_the_catalog(tmp_path, odd_root):
    catalog = pl.read_csv(odd_root / "CATALOG.csv")
    store = Store(tmp_path / "data")
    run_stage("ingest", tiny(chunk_size=32), store, inputs=[odd_root / "odd"])
    m = manifest(store).join(pl.from_arrow(store.sources.read(["path", "image_id"])), on="image_id")
    assert m.height == catalog.height == manifest(store).height
    joined = catalog.join(
        m.with_columns(pl.col("path_right").str.replace(r".*/data/", "")),
        left_on="path",
        right_on="path_right",
        how="left",
    )
    assert joined["status"].null_count() == 0
    assert (joined["sha256"] == joined["image_id"]).all()
    valid = joined.filter(pl.col("label") == "odd-valid")
    reject = joined.filter(pl.col("label") == "odd-reject")
    assert (valid["status"] == "ok").all(), valid.filter(pl.col("status") != "ok").select("path", "error")
    assert (reject["status"] == "error").all(), reject.filter(pl.col("status") != "error").select("path")
    assert reject["error"].str.len_chars().min() > 10


def _images(folder, n, seed=0):
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        Image.fromarray((rng.random((20, 30, 3)) * 255).astype("uint8")).save(folder / f"{k}.png")


def test_an_image_scored_first_gets_its_label_when_a_later_ingest_knows_it(tmp_path):
    _images(tmp_path / "inbox", 3)
    store = Store(tmp_path / "data")
    run_stage("ingest", tiny(), store, inputs=[tmp_path / "inbox"], unassigned=True)  # what predict does
    shutil.copytree(tmp_path / "inbox", tmp_path / "gen" / "1_fake")
    run_stage("ingest", tiny(), store, inputs=[tmp_path / "gen"])
    rows = pl.from_arrow(store.manifest.read())
    assert rows.height == 3 and rows["image_id"].n_unique() == 3
    assert rows["label"].to_list() == [1, 1, 1]
    # the split a labelled ingest gives (from the image id), written out by the rule's definition
    assert sorted(rows["split"].to_list()) == sorted(derived_split(i, (0.7, 0.1, 0.2)) for i in rows["image_id"])
    assert pl.read_parquet(store.root / "manifest").height == 3  # a plain scan: one row per image


def test_the_data_dir_is_never_an_input_and_repeated_ingests_of_its_parent_converge(tmp_path):
    _images(tmp_path / "0_real", 4)
    store = Store(tmp_path / "data")
    counts = []
    for _ in range(3):
        run_stage("ingest", tiny(), store, inputs=[tmp_path])  # the folder that holds the data dir
        run_stage("caption", tiny(), store)
        counts.append(pl.from_arrow(store.manifest.read()).height)
    assert counts == [4, 4, 4]
    paths = pl.from_arrow(store.manifest.read())["path"].to_list()
    assert not any("/data/" in p for p in paths)
