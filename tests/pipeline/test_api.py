"""predict: one row per input file, stages run only where the cache lacks rows, errors as rows."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from pipeline.app.api import predict, write_rows
from pipeline.engine.store import Store


@pytest.fixture
def store_copy(full_run, tmp_path):
    """A private copy of the session's fitted store (predict adds images to it)."""
    shutil.copytree(full_run.root, tmp_path / "data")
    return Store(tmp_path / "data")


def test_predict_mixed_folder_gives_one_row_per_file(store_copy, image_root, odd_root, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(odd_root / "odd", mixed)
    shutil.copy(image_root / "toygan/1_fake/0000.png", mixed / "known.png")  # already cached: reused
    catalog = pl.read_csv(odd_root / "CATALOG.csv")
    rows = predict([mixed], data_dir=store_copy.root)
    assert len(rows) == catalog.height + 1
    by_name = {r["path"].split("/mixed/", 1)[1]: r for r in rows}
    for path, label in catalog.select("path", "label").iter_rows():
        row = by_name[path.removeprefix("odd/")]
        if label == "odd-valid":
            assert row["status"] == "ok" and 0 <= row["score"] <= 1 and row["decision"] in ("fake", "real"), row
            assert isinstance(row["caption"], str)
        elif label == "odd-reject":
            assert row["status"] == "error" and row["score"] is None and len(row["error"]) > 10, row
    known = by_name["known.png"]
    assert (
        known["status"] == "ok"
        and known["objects"]
        and {"phrase", "box", "score", "cosine"} <= set(known["objects"][0])
    )
    assert all(-1 <= o["cosine"] <= 1 for o in known["objects"])


def test_predict_writes_csv_and_json_and_reuses_the_cache(store_copy, image_root, tmp_path):
    rows = predict([image_root / "toydiff" / "0_real"], data_dir=store_copy.root)
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    write_rows(rows, tmp_path / "out.csv")
    write_rows(rows, tmp_path / "out.json")
    csv = pl.read_csv(tmp_path / "out.csv")
    assert csv.columns == ["image_id", "path", "score", "decision", "caption", "objects", "status", "error"]
    assert json.loads((tmp_path / "out.json").read_text())[0]["image_id"] == rows[0]["image_id"]
    with pytest.raises(ValueError, match=".csv or .json"):
        write_rows(rows, tmp_path / "out.txt")
    before = sorted(p.name for p in (store_copy.root / "features").rglob("part-*.parquet"))
    assert predict([image_root / "toydiff" / "0_real"], data_dir=store_copy.root) == rows
    assert sorted(p.name for p in (store_copy.root / "features").rglob("part-*.parquet")) == before
