"""Bad input end to end: the odd-file corpus and extreme shapes through every stage, hangs,
retries, corrupt part files, and manifests that try to reach outside the data directory."""

from __future__ import annotations

import os
import shutil

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.app.runner import make_stage, run_stage, status
from pipeline.engine.config import resolve
from pipeline.engine.errors import UsageError
from pipeline.engine.store import Store, StoreError, check_parts
from tests.conftest import tiny

MODEL_STAGES = ("caption", "ground", "embed", "distance")


def stage_rows(store, name, config=None):
    fp = make_stage(name, config or tiny(), store).fingerprint
    return pl.from_arrow(store.features(name, fp).read(["image_id", "status", "error"]))


def test_odd_corpus_through_every_stage(tmp_path, odd_root):
    store = Store(tmp_path / "data")
    config = tiny(chunk_size=16, batch_size=8)
    run_stage("ingest", config, store, inputs=[odd_root / "odd"])
    catalog = pl.read_csv(odd_root / "CATALOG.csv").select("sha256", "label")
    manifest = pl.from_arrow(store.manifest.read(["image_id"]))
    for name in MODEL_STAGES:
        run_stage(name, config, store)
        rows = stage_rows(store, name)
        assert rows.height == manifest.height == catalog.height and rows["image_id"].n_unique() == rows.height
        joined = catalog.join(rows, left_on="sha256", right_on="image_id")
        valid = joined.filter(pl.col("label") == "odd-valid")
        assert (valid["status"] == "ok").all(), (name, valid.filter(pl.col("status") != "ok").to_dicts()[:3])
        reject = joined.filter(pl.col("label") == "odd-reject")
        assert (reject["status"] == "error").all() and (reject["error"].str.starts_with("ingest: ")).all()
    report = {s.stage: s for s in status(config, store)}
    assert report["distance"].missing == 0
    assert report["distance"].errors["ingest: not an image"] >= 5
    assert report["ingest"].errors["decompression bomb"] >= 3


def test_extreme_shapes_follow_the_documented_rules(tmp_path):
    root = tmp_path / "shapes"
    root.mkdir()
    rng = np.random.default_rng(0)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "one_pixel.png")
    Image.fromarray((rng.random((4, 20000, 3)) * 255).astype(np.uint8)).save(root / "wide.png")
    Image.fromarray((rng.random((3000, 2, 3)) * 255).astype(np.uint8)).save(root / "tall.png")
    Image.fromarray((rng.random((40, 40)) * 65535).astype(np.uint16)).save(root / "sixteen_bit.png")
    Image.new("CMYK", (50, 30), (0, 200, 200, 0)).save(root / "cmyk.jpg")
    pal = Image.new("P", (30, 30))
    pal.putpalette([255, 0, 0, 0, 255, 0] * 128)
    pal.info["transparency"] = 0
    pal.save(root / "palette_alpha.png", transparency=0)
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    store = Store(tmp_path / "data")
    config = tiny()
    run_stage("ingest", config, store, inputs=[root])
    for name in MODEL_STAGES:
        stats = run_stage(name, config, store)
        assert (stats.ok, stats.error) == (7, 0), (name, stats.errors)
    ground = pl.from_arrow(store.features("ground", make_stage("ground", config, store).fingerprint).read())
    manifest = pl.from_arrow(store.manifest.read(["image_id", "path", "width", "height"]))
    for row in ground.join(manifest, on="image_id").iter_rows(named=True):
        for obj in row["objects"]:  # boxes stay inside the real image, never in the padding
            assert 0 <= obj["box"][0] < obj["box"][2] <= row["width"]
            assert 0 <= obj["box"][1] < obj["box"][3] <= row["height"]


def test_a_file_that_hangs_gets_a_timeout_row_and_the_run_goes_on(tmp_path, caplog):
    root = tmp_path / "in"
    root.mkdir()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "good.png")
    os.mkfifo(root / "stuck.png")  # opening a FIFO blocks forever: a stalled mount, for example
    store = Store(tmp_path / "data")
    config = resolve("tiny", {"ingest": {"decode_timeout": 2}}, {"device": "cpu"})
    # Found in a folder, a FIFO is not a file to read: skipped with one line, at no cost.
    stats = run_stage("ingest", config, store, inputs=[root])
    assert (stats.ok, stats.error, stats.todo) == (1, 0, 1)
    assert any("stuck.png: not a regular file" in m for m in caplog.messages)
    # Named in a list, it is read as asked: the read that never returns costs one time-limited row.
    (tmp_path / "list.csv").write_text(f"path\n{root / 'stuck.png'}\n")
    stats = run_stage("ingest", config, store, inputs=[tmp_path / "list.csv"])
    assert (stats.ok, stats.error) == (0, 1)
    errors = pl.from_arrow(store.manifest.read()).filter(pl.col("status") == "error")["error"].to_list()
    assert errors == ["decode timed out: no result after 2s (ingest.decode_timeout)"]


def test_a_file_that_was_missing_is_computed_again_once_it_is_back(tmp_path, image_root):
    store = Store(tmp_path / "data")
    config = tiny()
    root = tmp_path / "imgs"
    shutil.copytree(image_root / "toygan", root)
    run_stage("ingest", config, store, inputs=[root])
    moved = root / "0_real" / "0000.png"
    moved.rename(tmp_path / "away.png")  # gone while captioning: an error row
    first = run_stage("caption", config, store)
    assert first.error == 1 and "cannot read file" in next(iter(first.errors))
    (tmp_path / "away.png").rename(moved)
    back = run_stage("caption", config, store)  # the file is back: a plain re-run computes it again
    assert (back.todo, back.ok, back.error) == (1, 1, 0)
    assert run_stage("caption", config, store, retry_errors=True).todo == 0  # nothing left in error
    rows = stage_rows(store, "caption")
    assert (rows["status"] == "ok").all() and rows.height == 12


def test_corrupt_or_foreign_part_is_named_and_can_be_quarantined(full_run, tmp_path):
    shutil.copytree(full_run.root, tmp_path / "data")
    store = Store(tmp_path / "data")
    out = make_stage("caption", tiny(), store).output
    (out.path / "part-0-corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    pq.write_table(pl.DataFrame({"x": [1]}).to_arrow(), out.path / "part-1-foreign.parquet")
    with pytest.raises(StoreError, match="part-0-corrupt.parquet"):
        run_stage("ground", tiny(), store)
    bad = check_parts(store.root, quarantine=True)
    assert sorted(p.name for p, _ in bad) == ["part-0-corrupt.parquet", "part-1-foreign.parquet"]
    assert (store.root / "quarantine" / out.path.relative_to(store.root) / "part-1-foreign.parquet").exists()
    assert check_parts(store.root) == []
    assert stage_rows(store, "caption").height == 24


def test_a_manifest_cannot_make_a_stage_write_outside_the_data_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(outside / "ok.png")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "evil.csv").write_text(
        "path,generator,dataset,split\n../outside/ok.png,../../escape,/tmp/evil,\n/etc/hostname,..,..,\n"
    )
    before = {p for p in tmp_path.rglob("*")}
    store = Store(tmp_path / "data")
    config = tiny()
    run_stage("ingest", config, store, inputs=[lists / "evil.csv"])
    for name in MODEL_STAGES:
        run_stage(name, config, store)
    after = {p for p in tmp_path.rglob("*") if not p.is_relative_to(store.root)}
    assert after == before  # nothing new anywhere but under the data directory
    manifest = pl.from_arrow(store.manifest.read())
    assert sorted(manifest["status"].to_list()) == ["error", "ok"]  # /etc/hostname is read, and rejected
    assert str(outside / "ok.png") in manifest["path"].to_list()  # relative to the list file
    (lists / "split.csv").write_text("path,split\n../outside/ok.png,../../split\n")
    with pytest.raises(UsageError, match="split '../../split' is not one of train, val, test"):
        run_stage("ingest", config, store, inputs=[lists / "split.csv"])


def test_ingest_from_a_script_on_stdin_decodes_in_process(tmp_path):
    """Spawned decoding workers cannot re-import a script read from standard input: ingest must notice
    (a canary task) and decode in-process, not report every file as a decoder crash."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "in" / f"{i}.png")
    script = (
        "from pipeline.engine.config import resolve\n"
        "from pipeline.app.runner import run_stage\n"
        "from pipeline.engine.store import Store\n"
        f"s = run_stage('ingest', resolve('tiny'), Store({str(tmp_path / 'd')!r}), inputs=[{str(tmp_path / 'in')!r}])\n"
        "print('RESULT', s.ok, s.error)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-"],
        input=script,
        text=True,
        capture_output=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=300,
    )
    assert "RESULT 3 0" in out.stdout, out.stderr[-2000:]
    assert "decoding in this process" in out.stderr
