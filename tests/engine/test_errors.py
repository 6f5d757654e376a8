"""Errors are data: resume, retry, status and downstream error rows decide by the `error_kind` and
`error_stage` columns, never by the message. Rewording every message changes nothing but the text,
and parts written before the columns existed read with the same kinds (nothing is recomputed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.app.runner import make_stage, run_stage, status
from pipeline.engine import errors
from pipeline.engine.config import resolve
from pipeline.engine.store import Store
from tests.conftest import tiny

STAGES_RUN = ("caption", "ground")


def inputs(root: Path) -> dict[str, Path]:
    """Four good PNGs and one file of each bad kind we can make by hand."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {}
    for k in range(4):
        files[f"good{k}"] = root / f"good{k}.png"
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(files[f"good{k}"])
    files["empty"] = root / "empty.png"
    files["empty"].write_bytes(b"")
    files["text"] = root / "notes.png"
    files["text"].write_text("not an image at all\n" * 20)
    good = files["good0"].read_bytes()
    files["truncated"] = root / "truncated.png"
    files["truncated"].write_bytes(good[: len(good) // 2])
    return files


def run(root: Path, data: Path, retry: bool = False) -> Store:
    store = Store(data)
    config = tiny()
    # Decoded in this process (no worker pool), so a monkeypatched wording reaches ingest's rows too.
    in_process = resolve("tiny", {"ingest": {"decode_timeout": 0}}, {"device": "cpu"})
    run_stage("ingest", in_process, store, inputs=[root])
    for name in STAGES_RUN:
        run_stage(name, config, store, retry_errors=retry)
    return store


def kinds(store: Store, name: str) -> dict[str, tuple[str, str | None, str | None]]:
    """image_id -> (status, error_kind, error_stage) of a stage's rows."""
    if name == "manifest":
        part_dir = store.manifest
    else:
        part_dir = store.features(name, make_stage(name, tiny(), store).fingerprint)
    rows = pl.from_arrow(part_dir.read(["image_id", "status", "error_kind", "error_stage"]))
    # Manifest parts written before the error columns name no stage: their writer's, ingest.
    writer = "ingest" if name == "manifest" else None
    return {
        r["image_id"]: (r["status"], r["error_kind"], r["error_stage"] or (writer and r["error_kind"] and writer))
        for r in rows.iter_rows(named=True)
    }


def messages(store: Store, name: str) -> list[str]:
    fp = make_stage(name, tiny(), store).fingerprint
    return [e for e in store.features(name, fp).read(["error"]).column("error").to_pylist() if e]


def counts(store: Store) -> list[tuple[str, int, int, int, list[int]]]:
    """What `status` reports, with the error groups' names left out (their words are the messages')."""
    return [(s.stage, s.ok, s.error, s.missing, sorted(s.errors.values())) for s in status(tiny(), store)]


def scenario(tmp_path: Path, tag: str) -> dict:
    """Ingest and run; make one image's file vanish and another's bytes change; run again; then put
    the vanished file back and run; then retry errors. Everything code decides, recorded."""
    files = inputs(tmp_path / f"in-{tag}")
    store = run(files["good0"].parent, tmp_path / f"data-{tag}")
    record = {"first": {n: kinds(store, n) for n in ("manifest", *STAGES_RUN)}, "status": counts(store)}
    moved = files["good1"].with_suffix(".bak")
    shutil.move(files["good1"], moved)
    original = files["good2"].read_bytes()
    files["good2"].write_bytes(files["good3"].read_bytes())  # other bytes under the same path
    config = tiny()
    for name in STAGES_RUN:  # these images have rows already: nothing to compute, nothing misread
        assert make_stage(name, config, store).todo() == []
    # A stage that has not run yet meets the missing and changed files: error rows of those kinds.
    fresh = tiny(chunk_size=3)  # (same fingerprint: chunking is speed only)
    run_stage("embed", fresh, store)
    record["embed"] = kinds(store, "embed")
    embed = make_stage("embed", config, store)
    record["todo_broken"] = embed.todo()
    shutil.move(moved, files["good1"])  # the file is back
    files["good2"].write_bytes(original)  # ... and the other holds its image's bytes again
    record["todo_back"] = sorted(embed.todo())
    run_stage("embed", config, store)
    record["embed_after"] = kinds(store, "embed")
    record["retry"] = sorted(make_stage("caption", config, store).todo(retry_errors=True))
    record["messages"] = messages(store, "ground")
    return record


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[dict, dict]:
    tmp = tmp_path_factory.mktemp("reworded")
    plain = scenario(tmp, "plain")
    with pytest.MonkeyPatch.context() as mp:
        # Every kind's words replaced: the messages say something else entirely.
        mp.setattr(errors, "KINDS", {k: f"reworded #{i} ({k[::-1]})" for i, k in enumerate(errors.KINDS)})
        reworded = scenario(tmp, "reworded")
    return plain, reworded


def test_rewording_every_message_changes_only_the_text(both):
    plain, reworded = both
    assert reworded["messages"] and all(m.startswith("ingest: reworded #") for m in reworded["messages"])
    assert not any("reworded" in m for m in plain["messages"])
    for key in ("first", "status", "embed", "todo_broken", "todo_back", "embed_after", "retry"):
        assert plain[key] == reworded[key], key


def test_kinds_and_stages_of_origin_are_recorded(both):
    plain, _ = both
    manifest = plain["first"]["manifest"]
    assert sorted(k for s, k, _ in manifest.values() if s == "error") == ["corrupt_image", "empty_file", "not_an_image"]
    assert {st for s, _, st in manifest.values() if s == "error"} == {"ingest"}
    for name in STAGES_RUN:  # downstream rows keep the kind and the stage it arose in
        assert plain["first"][name] == {i: (s, k, st) for i, (s, k, st) in manifest.items()}
    embed = plain["embed"]
    own = sorted(k for s, k, st in embed.values() if s == "error" and st == "embed")
    assert own == ["file_changed", "file_missing"]


def test_read_failures_are_recomputed_once_the_bytes_are_back(both):
    plain, _ = both
    assert plain["todo_broken"] == []  # still missing / still other bytes: stays an error row
    failed = sorted(i for i, (s, _, st) in plain["embed"].items() if s == "error" and st == "embed")
    assert plain["todo_back"] == failed
    assert all(plain["embed_after"][i][0] == "ok" for i in failed)


def test_retry_redoes_exactly_the_error_rows(both):
    plain, _ = both
    assert plain["retry"] == sorted(i for i, (s, _, _) in plain["first"]["caption"].items() if s == "error")


def test_parts_written_before_the_error_columns_read_alike(tmp_path):
    files = inputs(tmp_path / "in")
    store = run(files["good0"].parent, tmp_path / "data")
    before = {n: kinds(store, n) for n in ("manifest", *STAGES_RUN)}
    report = counts(store), [s.errors for s in status(tiny(), store)]
    parts = [*store.manifest.parts()]
    for name in STAGES_RUN:
        parts += store.features(name, make_stage(name, tiny(), store).fingerprint).parts()
    for part in parts:  # rewrite each part as the code before error columns wrote it
        table = pq.read_table(part)
        pq.write_table(table.drop_columns(["error_kind", "error_stage"]), part)
    assert "error_kind" not in pq.read_schema(parts[0]).names
    assert {n: kinds(store, n) for n in ("manifest", *STAGES_RUN)} == before
    assert (counts(store), [s.errors for s in status(tiny(), store)]) == report
    for name in STAGES_RUN:  # nothing recomputed
        assert make_stage(name, tiny(), store).todo() == []
    run_stage("embed", tiny(), store)  # a new stage reads the old parts' errors as their kinds
    embed = kinds(store, "embed")
    assert {i: v for i, v in embed.items() if v[0] == "error"} == {
        i: v for i, v in before["ground"].items() if v[0] == "error"
    }


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("cannot read file: FileNotFoundError: No such file (moved? ingest it)", ("file_missing", None)),
        ("file changed since ingest: /a/b.png no longer holds the bytes", ("file_changed", None)),
        ("ingest: not an image: Pillow cannot identify the format from the bytes", ("not_an_image", "ingest")),
        ("model error: RuntimeError: boom", ("model_error", None)),
        ("something new", ("unknown", None)),
        (None, (None, None)),
    ],
)
def test_legacy_messages_map_to_their_kinds(message, expected):
    assert errors.legacy_kind(message) == expected


def test_a_folder_of_old_and_new_parts_scans_as_one_schema(tmp_path):
    """After a run writes, parts written before the error columns are rewritten with them: a plain
    polars scan of the folder (docs/queries.md) reads one schema."""
    files = inputs(tmp_path / "in")
    store = run(files["good0"].parent, tmp_path / "data")
    folder = store.features("caption", make_stage("caption", tiny(), store).fingerprint)
    for part in [*store.manifest.parts(), *folder.parts()]:
        pq.write_table(pq.read_table(part).drop_columns(["error_kind", "error_stage"]), part)
    before = kinds(store, "caption")
    extra = tmp_path / "more"
    extra.mkdir()
    Image.fromarray(np.full((30, 40, 3), 7, np.uint8)).save(extra / "new.png")
    run(extra, tmp_path / "data")  # ingest and caption write new parts beside the old ones
    for scanned in (folder.path, store.manifest.path):
        frame = pl.scan_parquet(scanned / "part-*.parquet").collect()
        assert {"error_kind", "error_stage"} <= set(frame.columns)
    after = kinds(store, "caption")
    assert {i: v for i, v in after.items() if i in before} == before and len(after) == len(before) + 1
