"""predict: one row per input file, stages run only where the cache lacks rows, errors as rows."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from pipeline.app.api import predict, write_rows
from pipeline.engine.errors import UsageError
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
    assert csv.columns == [
        "image_id",
        "path",
        "score",
        "decision",
        "threshold",
        "head",
        "caption",
        "objects",
        "status",
        "error",
    ]
    assert csv["head"].n_unique() == 1 and csv["head"][0].startswith("mlp-") and csv["threshold"].is_not_null().all()
    assert json.loads((tmp_path / "out.json").read_text())[0]["image_id"] == rows[0]["image_id"]
    with pytest.raises(UsageError, match=r"\.csv, \.json, \.jsonl, \.parquet"):
        write_rows(rows, tmp_path / "out.txt")
    before = sorted(p.name for p in (store_copy.root / "features").rglob("part-*.parquet"))
    assert predict([image_root / "toydiff" / "0_real"], data_dir=store_copy.root) == rows
    assert sorted(p.name for p in (store_copy.root / "features").rglob("part-*.parquet")) == before


def test_every_output_form_holds_the_same_rows_even_with_an_error_row_last(store_copy, image_root, tmp_path, capsys):
    rows = predict([image_root / "toygan"], data_dir=store_copy.root)
    # 100 ok rows and an error row sorting last: a schema inferred from the first rows would break
    rows = [
        *(dict(rows[i % len(rows)], path=f"/x/{i:03d}.png") for i in range(100)),
        {
            **rows[0],
            "path": "/x/zz.png",
            "score": None,
            "decision": None,
            "caption": None,
            "objects": [],
            "status": "error",
            "error": "truncated",
        },
    ]
    for name in ("o.csv", "o.json", "o.jsonl", "o.parquet"):
        write_rows(rows, tmp_path / name)
    assert pl.read_csv(tmp_path / "o.csv")["status"].to_list()[-1] == "error"
    assert pl.read_parquet(tmp_path / "o.parquet").height == 101
    assert pl.read_parquet(tmp_path / "o.parquet").schema["objects"] == pl.List(
        pl.Struct({"phrase": pl.String, "box": pl.List(pl.Float64), "score": pl.Float64, "cosine": pl.Float64})
    )
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert len(lines) == 101 and json.loads(lines[-1])["error"] == "truncated"
    write_rows(rows, "-")
    assert capsys.readouterr().out.splitlines() == lines


def test_predicted_images_belong_to_no_split_and_no_generator(store_copy, tmp_path):
    from PIL import Image

    folder = tmp_path / "new" / "1_fake"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "x.png")
    [row] = predict([tmp_path / "new"], data_dir=store_copy.root)
    m = pl.from_arrow(store_copy.manifest.read()).filter(pl.col("image_id") == row["image_id"])
    assert m["split"].to_list() == [None] and m["generator"].to_list() == [None] and m["label"].to_list() == [None]
    assert m["dataset"].to_list() == ["predict"]


def test_predict_refuses_a_missing_model_and_an_empty_folder(store_copy, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no fitted head there"):
        predict([tmp_path / "empty"], model=tmp_path / "nope", data_dir=store_copy.root)
    with pytest.raises(UsageError, match="no files to score"):
        predict([tmp_path / "empty"], data_dir=store_copy.root)


def test_every_row_has_the_columns_in_csv_order():
    from pipeline.app.api import ROW_SCHEMA, decide

    row = {
        "image_id": "a",
        "path": "p",
        "score": 0.7,
        "decision": None,
        "caption": "c",
        "objects": [],
        "status": "ok",
        "error": None,
    }
    [out] = decide([row], 0.6, "mlp-aaa")
    assert list(out) == list(ROW_SCHEMA) and list(out)[3:6] == ["decision", "threshold", "head"]
    assert out["decision"] == "fake" and out["head"] == "mlp-aaa"
